"""How long the work already admitted will take: the basis of ``Retry-After``.

Counting the items *queued* says little about when a place frees: a transcription
request is admitted before its upload is decoded, and queues its windows only
then; a speech request keeps a few sentences queued out of many. So the estimate
counts the work each admitted request carries, in the model's own units (audio
seconds, characters), and divides it by the rate the model has been measured to
work at:

- each admitted request's :class:`~server.scheduler.queue.Ticket` declares its
  ``work`` once it is known (speech: at admission; transcription: once decoded);
  until then the average of recent requests' work stands in for it;
- what a ticket still owes is its declared work less the work of its items done,
  and never less than the work of its items queued or running;
- :class:`Throughput` measures work done per second of *busy* time (time while
  work was waiting or running), so a model that runs many items at once (a batch,
  the rows of a step engine) is credited with its throughput, not its latency.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

RETRY_AFTER_CAP = 300.0
"""The longest ``Retry-After`` given: past a few minutes a client is better told to
look elsewhere than to wait, and a bad estimate stays bounded."""

RETRY_AFTER_MARGIN = 1.25
"""The work's expected time is stretched by this much: a client that comes back a
little early is refused again and waits a whole ``Retry-After`` more, one that comes
back a little late loses only the margin; and on a shared machine the rate drifts by
a fifth from one request to the next."""

THROUGHPUT_HORIZON = 30.0
"""Seconds of busy time after which a measurement weighs ``1/e`` of a new one."""

WORK_AVERAGE_WEIGHT = 0.2
"""Weight of the newest request in the moving average of requests' work."""


class Throughput:
    """Work units done per second of busy time, a moving average over recent work.

    Each measurement (units done, seconds they took) decays what came before by
    ``exp(-seconds / horizon)``, on the units and the seconds alike: the rate is
    that of the last ``horizon`` seconds of work or so, however the work was cut
    into batches or steps, and one long batch outweighs many short ones as it should.
    """

    def __init__(self, horizon: float = THROUGHPUT_HORIZON) -> None:
        self._horizon = horizon
        self._units = 0.0
        self._seconds = 0.0

    def add(self, units: float, seconds: float) -> None:
        if seconds <= 0 and units <= 0:
            return
        keep = math.exp(-max(seconds, 0.0) / self._horizon)
        self._units = self._units * keep + units
        self._seconds = self._seconds * keep + max(seconds, 0.0)

    @property
    def rate(self) -> float | None:
        """Units per second; ``None`` until some work has been measured."""
        if self._units <= 0 or self._seconds <= 0:
            return None
        return self._units / self._seconds


class WorkAverage:
    """The moving average of the work requests declared, standing in for unknown work."""

    def __init__(self) -> None:
        self.value: float | None = None

    def add(self, work: float) -> None:
        previous = self.value
        self.value = (
            work
            if previous is None
            else (1 - WORK_AVERAGE_WEIGHT) * previous + WORK_AVERAGE_WEIGHT * work
        )


def owed(declared: float | None, done: float, outstanding: float, stand_in: float) -> float:
    """What one admitted request still owes: its work (or ``stand_in`` while unknown)
    less the work done, but never less than its items queued or running."""
    expected = stand_in if declared is None else declared
    return max(expected - done, outstanding, 0.0)


def stand_in(average: float | None, known: Iterable[float]) -> float:
    """The work assumed for a request whose work is not known yet: the recent
    average, or before any request finished, the mean of those admitted that
    declared theirs (0 when none did: only what it queued counts)."""
    if average is not None:
        return average
    works = list(known)
    return sum(works) / len(works) if works else 0.0


def drain_seconds(remaining: float, rate: float | None, floor: float) -> float:
    """Seconds until ``remaining`` units are done at ``rate``, with
    :data:`RETRY_AFTER_MARGIN`; at least ``floor`` (the queue's own estimate: one batch
    at least) and at most :data:`RETRY_AFTER_CAP`."""
    estimate = floor if rate is None else max(remaining / rate * RETRY_AFTER_MARGIN, floor)
    return min(estimate, RETRY_AFTER_CAP)
