"""The input audio buffer of one session: 16 kHz int16 addressed by absolute position.

Positions count every sample appended in the session, so the VAD's frame numbers, the
``audio_start_ms`` / ``audio_end_ms`` the client is told, and the slices committed all
use one clock. The buffer holds only what may still be committed: audio before the
last commit, and silence long before any speech, is dropped as it goes.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from models.base import SAMPLE_RATE

PCM16 = npt.NDArray[np.int16]


class AudioBuffer:
    def __init__(self) -> None:
        self._chunks: deque[tuple[int, PCM16]] = deque()  # (absolute start, samples)
        self._start = 0
        self._end = 0

    @property
    def start(self) -> int:
        """The first sample still held."""
        return self._start

    @property
    def end(self) -> int:
        """One past the last sample appended: the session's audio so far."""
        return self._end

    @property
    def seconds(self) -> float:
        """Audio held, in seconds."""
        return (self._end - self._start) / SAMPLE_RATE

    def append(self, samples: PCM16) -> None:
        if len(samples):
            self._chunks.append((self._end, samples))
            self._end += len(samples)

    def slice(self, first: int, last: int) -> PCM16:
        """Samples ``[first, last)``, clipped to what is held (a copy)."""
        first, last = max(first, self._start), min(last, self._end)
        parts = [
            samples[max(first - at, 0) : last - at]
            for at, samples in self._chunks
            if at < last and at + len(samples) > first
        ]
        if not parts:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(parts)

    def drop_before(self, position: int) -> None:
        """Forget samples before ``position`` (kept: the chunk that straddles it, in part)."""
        position = min(position, self._end)
        while self._chunks:
            at, samples = self._chunks[0]
            if at + len(samples) <= position:
                self._chunks.popleft()
            elif at < position:
                self._chunks[0] = (position, samples[position - at :])
                break
            else:
                break
        self._start = max(self._start, position)

    def clear(self) -> None:
        self.drop_before(self._end)
