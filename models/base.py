"""The backend protocols and the item and result types that cross the scheduler.

A backend computes on *items*: for speech-to-text an item is one window of at most
30 seconds of 16 kHz mono audio, the unit Whisper's encoder takes; for text-to-
speech an item is one sentence. The server cuts requests into items, the scheduler
groups items from many requests into batches, and a backend turns one batch into
one result per item, in order.

Backends are synchronous and not thread-safe: the scheduler guarantees that one
thread at a time enters a loaded backend.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

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
    """The sampling temperature of this pass (0 is beam search); the caller owns any
    fallback ladder and re-submits a window at the next temperature."""
    task: Task = "transcribe"
    word_timestamps: bool = False
    """Align every word to the audio (``Segment.words``)."""
    token_logprobs: bool = False
    """Report each text token's log-probability (``Segment.logprobs``)."""


@dataclass(frozen=True, slots=True)
class TranscriptionItem:
    """One window of audio to transcribe."""

    audio: AudioArray
    """Mono float32 samples at ``SAMPLE_RATE``, at most one window long."""
    offset: float = 0.0
    """Where this window starts in the request's file, in seconds."""
    options: DecodingOptions = field(default_factory=DecodingOptions)


@dataclass(frozen=True, slots=True)
class Word:
    """One word and where it is spoken, absolute in the file, by cross-attention alignment."""

    word: str
    """As Whisper spelt it, with its leading space and attached punctuation."""
    start: float
    end: float
    probability: float


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One text token and the log-probability the model gave it."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    """The token's UTF-8 bytes: a token may hold part of a character."""


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
    words: tuple[Word, ...] = ()
    """Filled when the item asked for ``word_timestamps``."""
    logprobs: tuple[TokenLogprob, ...] = ()
    """Filled when the item asked for ``token_logprobs``."""


@dataclass(frozen=True, slots=True)
class WindowTranscript:
    """What a backend returns for one item, with the measures a fallback policy reads.

    ``avg_logprob`` and ``compression_ratio`` describe the whole decoded pass, as
    Whisper's own fallback rule judges it; ``silent`` means the model judged the
    window to hold no speech (and returned no segments), which no retry changes.
    """

    language: str
    segments: list[Segment] = field(default_factory=list)
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    silent: bool = False
    resume_at: float | None = None
    """Set when the model stopped early, asking (as Whisper does) to be fed the audio
    again from this time, absolute in the file; the caller submits the rest."""

    @property
    def text(self) -> str:
        return join_text(self.segments)


def join_text(segments: Sequence[Segment]) -> str:
    """Segment texts joined by single spaces: the one rule for window, file and stream text."""
    return " ".join(s.text.strip() for s in segments if s.text.strip())


class SpeechToTextModel(Protocol):
    """What the transcription service asks of any speech-to-text engine, whole-batch or step."""

    window_seconds: float
    """The longest item the backend takes, in seconds."""

    @property
    def multilingual(self) -> bool:
        """Whether the model knows languages other than English."""
        ...


class SpeechToTextBackend(SpeechToTextModel, Protocol):
    """A speech-to-text model that transcribes a batch of windows in one call."""

    def load(self) -> None:
        """Load the weights. Called once, before any batch, in the worker thread."""
        ...

    def batch_key(self, item: TranscriptionItem) -> Hashable:
        """Items with equal keys may share one batch; the scheduler never mixes keys."""
        ...

    def transcribe_batch(self, items: Sequence[TranscriptionItem]) -> list[WindowTranscript]:
        """Transcribe every item, returning one result per item in the same order."""
        ...


# -- the step contract (continuous batching) -------------------------------------------

StepItemT = TypeVar("StepItemT", contravariant=True)
StepResultT = TypeVar("StepResultT", covariant=True)


class StepEngine(Protocol[StepItemT, StepResultT]):
    """An engine that keeps a running batch of rows and advances it one step at a time.

    The caller (the scheduler) owns the policy: it decides which items enter which
    free rows and when, and which rows to drop; the engine only computes. Rows are
    ``0 .. rows - 1``; an item's row is free again as soon as its result (or error)
    has been returned, or once it was released.
    """

    @property
    def rows(self) -> int:
        """How many items can run at once."""
        ...

    @property
    def running(self) -> int:
        """Rows in use now."""
        ...

    @property
    def admission_batch(self) -> int:
        """How many items are worth admitting together (1: no gain in waiting for more)."""
        ...

    def load(self) -> None:
        """Load the weights. Called once, before any step, in the worker thread."""
        ...

    def admit(
        self, assignments: Sequence[tuple[int, StepItemT]]
    ) -> Sequence[tuple[int, BaseException]]:
        """Start each item in its (free) row; those that cannot start come back with
        their error, and their rows stay free."""
        ...

    def step(self) -> Sequence[tuple[int, StepResultT | BaseException]]:
        """Advance every running row by one step; the items that finished, by row."""
        ...

    def release(self, rows: Sequence[int]) -> None:
        """Stop ``rows`` now, uncomputed; they are free at once."""
        ...


# -- text to speech ------------------------------------------------------------------

Speaker = str | int
"""A voice inside a multi-voice model: a Kokoro voice name, a Piper speaker id or name."""


@dataclass(frozen=True, slots=True)
class SpeechItem:
    """One sentence to speak, already split and normalized by the caller."""

    text: str
    speaker: Speaker | None = None
    """``None`` is the model's only (or default) voice."""
    speed: float = 1.0
    """1.0 is the voice's natural pace; 2.0 takes half the time."""
    seed: int = 0
    """Seeds whatever noise the model draws, so equal items give equal audio."""


class TextToSpeechBackend(Protocol):
    """A text-to-speech model that speaks a batch of sentences in one call.

    A backend that cannot batch reports ``max_batch_size`` 1; the scheduler still
    drives it from one worker thread.
    """

    @property
    def sample_rate(self) -> int:
        """The rate, in Hz, of the audio ``synthesize_batch`` returns."""
        ...

    @property
    def max_batch_size(self) -> int:
        """The most items one call takes (1 when the model has no batch axis)."""
        ...

    def load(self) -> None:
        """Load the weights. Called once, before any batch, in the worker thread."""
        ...

    def check_speaker(self, speaker: Speaker | None) -> None:
        """Raise ``ValueError`` naming the choices if the loaded model lacks ``speaker``."""
        ...

    def batch_key(self, item: SpeechItem) -> Hashable:
        """Items with equal keys may share one batch (one speaker, one set of scales)."""
        ...

    def synthesize_batch(self, items: Sequence[SpeechItem]) -> list[AudioArray]:
        """Speak every item: mono float32 in [-1, 1] at ``sample_rate``, one per item.

        Any text must come back as audio or as an exception for that item, never as
        a hang; text with nothing to speak gives an empty array.
        """
        ...
