"""From an uploaded file to a transcript: decode, cut into windows, batch, join.

The service sits between a route and a model's scheduler. Decoding and voice
activity detection run in a thread off the event loop; every window then goes
through the scheduler, where it may share a batch with other requests' windows;
the results are put back together in file order.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from faster_whisper.tokenizer import _LANGUAGE_CODES

from models.base import (
    SAMPLE_RATE,
    AudioArray,
    DecodingOptions,
    Segment,
    SpeechToTextBackend,
    TranscriptionItem,
    WindowTranscript,
)
from models.windowing import Window, plan_windows
from server.audio import decode_audio
from server.errors import InvalidRequest
from server.scheduler import ModelScheduler

SUPPORTED_LANGUAGES = frozenset(_LANGUAGE_CODES)


@dataclass(frozen=True, slots=True)
class Transcript:
    """A whole file's transcript: segments in order, times absolute in the file."""

    language: str
    duration: float
    segments: list[Segment]

    @property
    def text(self) -> str:
        return " ".join(s.text.strip() for s in self.segments if s.text.strip())

    @property
    def billed_seconds(self) -> int:
        """OpenAI bills and reports whole seconds of input audio."""
        return math.ceil(self.duration)


class TranscriptionService:
    """Transcribes files on one model, through that model's scheduler."""

    def __init__(
        self,
        model_id: str,
        backend: SpeechToTextBackend,
        scheduler: ModelScheduler[TranscriptionItem, WindowTranscript],
        *,
        max_audio_seconds: float,
    ) -> None:
        self.model_id = model_id
        self.backend = backend
        self.scheduler = scheduler
        self.max_audio_seconds = max_audio_seconds

    def check(self, options: DecodingOptions) -> None:
        """Refuse options the model cannot honour, before any work is done."""
        language = options.language
        if language is None:
            return
        if language not in SUPPORTED_LANGUAGES:
            raise InvalidRequest(
                f"Language '{language}' is not a supported ISO-639-1 code.", param="language"
            )
        if language != "en" and not self.backend.multilingual:
            raise InvalidRequest(
                f"Model '{self.model_id}' is English-only; language '{language}' "
                "is not supported (use 'en' or omit it).",
                param="language",
            )

    async def transcribe(self, upload: bytes, options: DecodingOptions) -> Transcript:
        audio, windows = await asyncio.to_thread(self._prepare, upload)
        tasks = [
            asyncio.ensure_future(self._transcribe_window(audio, window, options))
            for window in windows
        ]
        try:
            results = await asyncio.gather(*tasks)
        finally:  # one window failed, or the request went away: withdraw the others
            for task in tasks:
                task.cancel()
        language = results[0][0].language if results else (options.language or "en")
        return Transcript(
            language=language,
            duration=len(audio) / SAMPLE_RATE,
            segments=[s for passes in results for result in passes for s in result.segments],
        )

    async def _transcribe_window(
        self, audio: AudioArray, window: Window, options: DecodingOptions
    ) -> list[WindowTranscript]:
        """One window, and the rest of it again each time the model asks to resume.

        Every pass goes through the scheduler on its own, so a window that needs
        another pass never holds back the batch it came from.
        """
        passes: list[WindowTranscript] = []
        start = window.start
        while True:
            item = TranscriptionItem(audio[start : window.end], start / SAMPLE_RATE, options)
            (result,) = await self.scheduler.run([item])
            passes.append(result)
            if result.resume_at is None:
                return passes
            start = max(start + 1, round(result.resume_at * SAMPLE_RATE))

    def _prepare(self, upload: bytes) -> tuple[AudioArray, list[Window]]:
        audio = decode_audio(upload, max_seconds=self.max_audio_seconds)
        return audio, plan_windows(audio, self.backend.window_seconds)
