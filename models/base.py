"""The backend protocols and the item and result types that cross the scheduler.

A backend computes on *items*: for speech-to-text an item is one window of at most
30 seconds of 16 kHz mono audio, the unit Whisper's encoder takes. The server cuts
requests into items, the scheduler groups items from many requests into batches,
and a backend turns one batch into one result per item, in order.

Backends are synchronous and not thread-safe: the scheduler guarantees that one
thread at a time enters a loaded backend.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
"""Sample rate, in Hz, of the audio every speech-to-text item carries."""

Task = Literal["transcribe", "translate"]
AudioArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class DecodingOptions:
    """How a request wants its audio decoded; every window of the request shares them."""

    language: str | None = None
    """ISO-639-1 code; ``None`` lets a multilingual model detect it."""
    prompt: str | None = None
    temperature: float = 0.0
    task: Task = "transcribe"


@dataclass(frozen=True, slots=True)
class TranscriptionItem:
    """One window of audio to transcribe."""

    audio: AudioArray
    """Mono float32 samples at ``SAMPLE_RATE``, at most one window long."""
    offset: float = 0.0
    """Where this window starts in the request's file, in seconds."""
    options: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of speech with Whisper's own timestamps, absolute in the file."""

    start: float
    end: float
    text: str
    tokens: tuple[int, ...]
    seek: int
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


@dataclass(frozen=True, slots=True)
class WindowTranscript:
    """What a backend returns for one item."""

    language: str
    segments: list[Segment] = field(default_factory=list)
    resume_at: float | None = None
    """Set when the model stopped early, asking (as Whisper does) to be fed the audio
    again from this time, absolute in the file; the caller submits the rest."""

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())


class SpeechToTextBackend(Protocol):
    """A speech-to-text model that transcribes a batch of windows in one call."""

    window_seconds: float
    """The longest item the backend takes, in seconds."""

    @property
    def multilingual(self) -> bool:
        """Whether the model knows languages other than English."""
        ...

    def load(self) -> None:
        """Load the weights. Called once, before any batch, in the worker thread."""
        ...

    def batch_key(self, item: TranscriptionItem) -> Hashable:
        """Items with equal keys may share one batch; the scheduler never mixes keys."""
        ...

    def transcribe_batch(self, items: Sequence[TranscriptionItem]) -> list[WindowTranscript]:
        """Transcribe every item, returning one result per item in the same order."""
        ...
