"""Continuous batching: items join and leave a running batch of rows one step at a time.

For step engines (the torch Whisper engine). The engine holds ``rows`` windows
decoding at once; this scheduler decides what runs in them:

- queued items enter free rows in arrival order, the lowest free row first (so
  the running rows stay packed at the front and a step computes few idle rows);
- an idle engine admits what is queued at once; a busy one admits at the next
  step once the engine's ``admission_batch`` items (as many as one batched
  encoder pass is worth) or as many as there are free rows are queued, or when
  the oldest has waited ``max_queue_delay_ms``: newcomers share an encoder pass
  without delaying anyone by more than that;
- the worker thread steps the engine until a row finishes, an item arrives for
  a free row, or a running item's client goes away; then the loop answers the
  finished items, frees their rows and admits the next;
- a running item whose future was cancelled is released at the next step
  boundary, uncomputed from then on, and its row reused;
- an item that fails on admission or when it finishes fails alone; a step that
  fails (the engine itself broke) fails the items running in it.

Every guarantee of :class:`~server.scheduler.queue.ModelScheduler` (admission,
queue timeout, one worker thread) holds as for whole batches.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from collections.abc import Callable

from models.base import StepEngine
from server.errors import NotReady
from server.scheduler.queue import BatchObserver, Entry, ItemT, ModelScheduler, ResultT
from server.settings import SchedulerConfig

logger = logging.getLogger("voxserve.scheduler")

Outcome = tuple[int, ResultT | BaseException]


class StepScheduler(ModelScheduler[ItemT, ResultT]):
    """Runs queued items in the rows of a step engine, one step at a time."""

    def __init__(
        self,
        name: str,
        engine: StepEngine[ItemT, ResultT],
        config: SchedulerConfig,
        *,
        setup: Callable[[], None] | None = None,
        observer: BatchObserver | None = None,
        work_of: Callable[[ItemT], float] | None = None,
    ) -> None:
        super().__init__(name, lambda _: 0, config, setup=setup, observer=observer, work_of=work_of)
        self._engine = engine
        self._running: dict[int, Entry[ItemT, ResultT]] = {}
        self._started: dict[int, float] = {}
        self._free = list(range(engine.rows))  # a heap: the lowest free row first
        self._attention = threading.Event()
        """Set when the worker should end its run of steps early: an item arrived
        while a row is free, or a running item's client went away."""
        self._item_seconds = 0.0  # moving average of admission to result: least Retry-After

    # -- what the queue asks of a runner -------------------------------------------

    def _in_worker(self) -> list[Entry[ItemT, ResultT]]:
        return list(self._running.values())

    def _submitted(self) -> None:
        super()._submitted()
        # the worker re-plans when an item can be admitted now, or starts a wait
        # for company that its current run of steps does not know about
        if self._free and (not self._running or self._depth == 1 or self._admit_now()):
            self._attention.set()

    def _queue_wait(self) -> float:
        """The rounds of ``rows`` items that the queued and running items make, at the
        moving average of one item's time (at least 0.1 s); never less than one."""
        rounds = math.ceil((self._depth + len(self._running)) / self._engine.rows)
        return max(rounds, 1) * max(self._item_seconds, 0.1)

    async def stop(self) -> None:
        self._attention.set()  # the worker's run of steps ends at the next step
        await super().stop()

    # -- the loop --------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            admitted = await self._next_admissions()
            try:
                await self._cycle(admitted)
            except Exception as exc:  # the engine broke: fail what ran, keep serving
                logger.exception("scheduler %s: step failed unexpectedly", self.name)
                await self._abandon_all(exc)

    async def _next_admissions(self) -> list[tuple[int, Entry[ItemT, ResultT]]]:
        """The queued entries to admit now, each with its row; [] to just step on."""
        while True:
            self._sweep()
            if not self._running and not self._queue:
                await self._until_woken()
                continue
            if self._admit_now():
                return self._assign(self._take(len(self._free)))
            return []

    def _admit_now(self) -> bool:
        if not self._queue or not self._free:
            return False
        if not self._running:
            return True
        enough = min(self._engine.admission_batch, len(self._free))
        return self._depth >= enough or time.monotonic() >= self._admission_deadline()

    def _admission_deadline(self) -> float:
        """When the oldest queued item stops waiting for company (infinite if none)."""
        if not self._queue or not self._free:
            return math.inf
        return self._queue[0].enqueued_at + self.config.max_queue_delay_ms / 1000

    def _assign(
        self, entries: list[Entry[ItemT, ResultT]]
    ) -> list[tuple[int, Entry[ItemT, ResultT]]]:
        now = time.monotonic()
        assigned = []
        for entry in entries:
            row = heapq.heappop(self._free)
            self._running[row] = entry
            self._started[row] = now
            entry.future.add_done_callback(lambda _: self._attention.set())
            assigned.append((row, entry))
        return assigned

    async def _cycle(self, admitted: list[tuple[int, Entry[ItemT, ResultT]]]) -> None:
        """One trip to the worker: release, admit, step until there is news; answer."""
        started = time.monotonic()
        gone = [row for row, entry in self._running.items() if entry.future.done()]
        self._attention.clear()
        loop = asyncio.get_running_loop()
        outcomes, rows = await loop.run_in_executor(
            self._executor,
            self._work,
            [(row, e.item) for row, e in admitted],
            gone,
            self._admission_deadline(),
        )
        for row in gone:
            self._free_row(row, measured=False)
        finished = 0.0  # the work of the items done, for the throughput
        for row, outcome in outcomes:
            entry = self._free_row(row)
            if entry is None:
                continue
            if not isinstance(outcome, BaseException):
                finished += self._progress(entry)
            if entry.future.done():
                continue
            if isinstance(outcome, BaseException):
                entry.future.set_exception(outcome)
            else:
                self._answer(entry, outcome)
        self._worked(finished, min([started, *(e.enqueued_at for _, e in admitted)]))
        if self._observer is not None and rows:
            waits = [started - entry.enqueued_at for _, entry in admitted]
            self._observer.batch_done(self.name, rows, waits, time.monotonic() - started)

    def _work(
        self, admitted: list[tuple[int, ItemT]], gone: list[int], deadline: float
    ) -> tuple[list[Outcome[ResultT]], int]:
        """In the worker thread: the outcomes, and the rows that ran. Steps until one
        finishes, the loop has news, or a queued item's wait for company ends."""
        engine = self._engine
        if gone:
            engine.release(gone)
        outcomes: list[Outcome[ResultT]] = list(engine.admit(admitted)) if admitted else []
        rows = engine.running
        while engine.running:  # at least one step, so the running rows always progress
            outcomes += engine.step()
            if outcomes or self._attention.is_set() or time.monotonic() >= deadline:
                break
        return outcomes, rows

    def _free_row(self, row: int, *, measured: bool = True) -> Entry[ItemT, ResultT] | None:
        """Give ``row`` back; ``measured``: its item's time counts for Retry-After (not
        for an item whose client went away)."""
        entry = self._running.pop(row, None)
        started = self._started.pop(row, None)
        if entry is None:
            return None
        heapq.heappush(self._free, row)
        if measured and started is not None:
            seconds = time.monotonic() - started
            average = self._item_seconds
            self._item_seconds = seconds if not average else 0.8 * average + 0.2 * seconds
        return entry

    async def _abandon_all(self, error: BaseException) -> None:
        rows = list(self._running)
        for row in rows:
            entry = self._free_row(row, measured=False)
            if entry is not None and not entry.future.done():
                entry.future.set_exception(NotReady("The model failed on this batch."))
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._engine.release, rows)
        except Exception:
            logger.exception("scheduler %s: releasing rows failed after %r", self.name, error)
