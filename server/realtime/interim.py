"""Interim text while a person is still speaking: the stable-prefix rule.

OpenAI's ``whisper-1`` sends an utterance's text once it is committed. With
``realtime_interim_seconds`` set, the utterance being spoken is decoded again every
that many seconds of new audio, and the words two successive decodes agree on (their
common prefix, "local agreement") go out as ``delta`` events as soon as they are
agreed. A word sent is never taken back: a later decode that disagrees with it sends
nothing new until decodes agree past it again.

The final decode, once the turn is committed, is authoritative for what follows the
words already sent: the ``completed`` transcript is those words, then the final
decode's words after as many words as were sent, so that the deltas always join to
exactly the transcript. Without interim text sent (the default), the transcript is the
final decode unchanged, the same text the file endpoint gives for the audio.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


def _agreed(a: list[str], b: list[str]) -> list[str]:
    """The longest common prefix of two word lists."""
    n = 0
    for left, right in zip(a, b, strict=False):
        if left != right:
            break
        n += 1
    return a[:n]


@dataclass(slots=True)
class Interim:
    """The interim state of one turn being spoken."""

    next_at: int
    """The absolute audio position (16 kHz samples) at which the next decode is due."""
    sent: list[str] = field(default_factory=list)
    """Words sent as deltas so far, in order."""
    last: list[str] | None = None
    """The previous decode's words."""
    task: asyncio.Task[None] | None = None
    """The decode in flight, if any (one at a time per turn)."""

    def agree(self, text: str, *, may_send: bool) -> str | None:
        """Take a decode's text; the delta to send for the newly agreed words, or None.

        ``may_send`` is False while an earlier utterance's result is still to go out:
        the agreement is kept, and its words are sent with a later decode.
        """
        words = text.split()
        previous, self.last = self.last, words
        if previous is None or not may_send:
            return None
        agreed = _agreed(previous, words)
        if len(agreed) <= len(self.sent) or agreed[: len(self.sent)] != self.sent:
            return None
        new = agreed[len(self.sent) :]
        delta = (" " if self.sent else "") + " ".join(new)
        self.sent = agreed
        return delta

    def final(self, text: str) -> tuple[str, str]:
        """The turn's transcript and its last delta, from the final decode's ``text``."""
        if not self.sent:
            return text, text
        rest = text.split()[len(self.sent) :]
        transcript = " ".join(self.sent + rest)
        return transcript, (" " + " ".join(rest)) if rest else ""

    def stop(self) -> None:
        """The turn ended: a decode in flight is of no use any more."""
        if self.task is not None:
            self.task.cancel()
