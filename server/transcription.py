"""From an uploaded file to a transcript: decode, find the speech, batch, retry, join.

The service sits between a route and a model's scheduler. Decoding and voice
activity detection run in a thread off the event loop; every window then goes
through the scheduler, where it may share a batch with other requests' windows;
the results come back in file order, as a whole or window by window (streaming).

Temperature fallback is decided here, per window, after the batch: a window
whose text looks like a repetition loop (compression ratio over 2.4) or that the
model was unsure of (average log-probability under -1) is submitted again, on
its own, at the next temperature of Whisper's ladder (0.0, 0.2, ... 1.0). It
joins whatever batch forms at that temperature and never holds back the batch it
came from. When every temperature fails, Whisper's rule picks the best try; one
that still looks like a loop while the model says there is probably no speech is
dropped (the repetition guard), since that is how Whisper hallucinates on noise.

A client that hangs up while its file is decoded cancels the request's task, but
not the thread: Python cannot stop a thread. ``anyio.to_thread.run_sync`` shields
the thread from anyio's own cancel scopes only; the ``Task.cancel()`` the
disconnect middleware uses cancels the future it awaits, so the ``async with
limiter`` around it gave the decode slot back at once while the thread decoded
and ran the VAD on, for minutes, uncounted. Here the thread runs in a task of its
own that holds the slot until the thread returns, and the request's cancellation
sets a token the thread checks between packets and VAD blocks (it then stops in
well under a second); the request waits for that before it unwinds, so neither
the decode gauge nor the requests in flight ever miss work still running.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import anyio.to_thread
from faster_whisper.tokenizer import _LANGUAGE_CODES

from models.base import (
    SAMPLE_RATE,
    DecodingOptions,
    Segment,
    SpeechToTextModel,
    Task,
    TokenLogprob,
    TranscriptionItem,
    WindowTranscript,
    Word,
    join_text,
)
from models.windowing import VadSettings, Window, as_float, has_speech, plan_windows
from server.audio import PCM16, AudioLimits, decode_pcm16
from server.errors import InvalidRequest
from server.scheduler import ModelScheduler, Ticket

SUPPORTED_LANGUAGES = frozenset(_LANGUAGE_CODES)
TEMPERATURE_LADDER = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
COMPRESSION_RATIO_THRESHOLD = 2.4
LOG_PROB_THRESHOLD = -1.0
NO_SPEECH_THRESHOLD = 0.6
TRUSTED_NO_SPEECH_BELOW = 0.2
"""A first pass with text and a no-speech probability under this needs no VAD (:func:`trusted`)."""
WINDOWS_AHEAD = 16
"""Windows of one request queued at once, at least (twice the model's batch size when
that is more). Each is made float32 when queued (1.9 MB for 30 s), so four hours
queued at once would double the decoded audio's memory; 16 cost 31 MB."""


class TranscriptionObserver(Protocol):
    """Told what the service did beyond the scheduler's batches, for metrics."""

    def fallback(self, model: str) -> None: ...

    def transcribed(self, model: str, seconds: float) -> None: ...

    def speech_check(self, model: str, outcome: str) -> None:
        """A deferred silence gate: ``trusted``, ``speech`` or ``no_speech``."""


@dataclass(frozen=True, slots=True)
class TranscriptionJob:
    """What one request asks for, besides its audio."""

    options: DecodingOptions
    fallback: bool = True
    """Climb the temperature ladder on failure (the request's temperature was 0)."""
    chunking: VadSettings | None = None
    """Cut at the VAD's speech regions even in short audio (``chunking_strategy``)."""

    def __post_init__(self) -> None:
        language = self.options.language
        if language is not None and language != language_code(language):
            options = dataclasses.replace(self.options, language=language_code(language))
            object.__setattr__(self, "options", options)  # frozen: set once, here


def language_code(language: str) -> str:
    """``language`` as Whisper's tables spell ISO-639-1 codes: "EN" and " en" are "en"."""
    return language.strip().lower()


@dataclass(frozen=True, slots=True)
class PreparedAudio:
    """A decoded upload and the windows of it that hold speech."""

    audio: PCM16
    """16-bit, half the memory of float; each window is made float when it is queued."""
    windows: list[Window]

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


@dataclass(frozen=True, slots=True)
class Transcript:
    """A whole file's transcript: segments in order, times absolute in the file."""

    task: Task
    language: str
    duration: float
    segments: list[Segment]

    @property
    def text(self) -> str:
        return join_text(self.segments)

    @property
    def words(self) -> list[Word]:
        return [word for segment in self.segments for word in segment.words]

    @property
    def logprobs(self) -> list[TokenLogprob]:
        return [token for segment in self.segments for token in segment.logprobs]

    @property
    def billed_seconds(self) -> int:
        """OpenAI bills and reports whole seconds of input audio."""
        return math.ceil(self.duration)


class TranscriptionService:
    """Transcribes files on one model, through that model's scheduler."""

    def __init__(
        self,
        model_id: str,
        backend: SpeechToTextModel,
        scheduler: ModelScheduler[TranscriptionItem, WindowTranscript],
        *,
        limits: AudioLimits,
        decodes: anyio.CapacityLimiter | None = None,
        observer: TranscriptionObserver | None = None,
    ) -> None:
        self.model_id = model_id
        self.backend = backend
        self.scheduler = scheduler
        self.limits = limits
        self.decodes = decodes
        """Shared by every model's service: how many uploads may be decoded at once."""
        self.observer = observer

    def check(self, options: DecodingOptions) -> None:
        """Refuse options the model cannot honour, before any work is done."""
        if options.task == "translate" and not self.backend.multilingual:
            raise InvalidRequest(
                f"Model '{self.model_id}' is English-only and cannot translate; "
                "use a multilingual model.",
                param="model",
            )
        if options.language is None:
            return
        language = language_code(options.language)
        if language not in SUPPORTED_LANGUAGES:
            raise InvalidRequest(
                f"Language '{options.language}' is not a supported ISO-639-1 code.",
                param="language",
            )
        if language != "en" and not self.backend.multilingual:
            raise InvalidRequest(
                f"Model '{self.model_id}' is English-only; language '{language}' "
                "is not supported (use 'en' or omit it).",
                param="language",
            )

    async def prepare(
        self, upload: bytes, filename: str | None, chunking: VadSettings | None = None
    ) -> PreparedAudio:
        """Decode and find the speech, in a worker thread: every 400 about the file is here.

        At most ``decodes`` uploads are decoded at once; the rest wait here, holding
        their queue place but no decoder memory. Cancelled, this stops the thread
        (between packets or VAD blocks) and returns only once it has, slot and all.
        """
        cancel = threading.Event()
        started = False

        async def in_thread() -> PreparedAudio:
            nonlocal started
            slot: AbstractAsyncContextManager[object] = self.decodes or nullcontext()
            async with slot:
                started = True  # from here on this task must not be cancelled
                return await anyio.to_thread.run_sync(
                    self._prepare, upload, filename, chunking, cancel
                )

        work = asyncio.ensure_future(in_thread())
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()
            if not started:
                work.cancel()  # still waiting for a slot: withdraw from the line
            await _outlast(work)
            raise

    def _prepare(
        self,
        upload: bytes,
        filename: str | None,
        chunking: VadSettings | None,
        cancel: threading.Event,
    ) -> PreparedAudio:
        audio = decode_pcm16(upload, self.limits, filename, cancel=cancel)
        windows = plan_windows(
            audio, self.backend.window_seconds, chunking, defer_short=True, cancel=cancel
        )
        return PreparedAudio(audio, windows)

    async def transcribe(
        self, prepared: PreparedAudio, job: TranscriptionJob, ticket: Ticket | None = None
    ) -> Transcript:
        windows = [window async for window in self.windows(prepared, job, ticket)]
        return self.transcript(prepared, job, windows)

    def transcript(
        self, prepared: PreparedAudio, job: TranscriptionJob, windows: Sequence[WindowTranscript]
    ) -> Transcript:
        """The file's transcript from its windows' results, in order."""
        spoken = [w for w in windows if w.segments]
        language = spoken[0].language if spoken else (job.options.language or "en")
        segments = in_order([s for w in windows for s in w.segments], prepared.duration)
        return Transcript(job.options.task, language, prepared.duration, segments)

    async def windows(
        self, prepared: PreparedAudio, job: TranscriptionJob, ticket: Ticket | None = None
    ) -> AsyncIterator[WindowTranscript]:
        """Every window's result in file order, each as soon as it and those before are done.

        Up to :data:`WINDOWS_AHEAD` windows are queued at once (they batch with each
        other and with other requests), the next as each result is taken; leaving
        early, or failing, withdraws the ones not yet computed. ``ticket`` is the
        request's place in the queue (``scheduler.admit()``).
        """
        upcoming = iter(prepared.windows)
        ahead = max(WINDOWS_AHEAD, 2 * self.scheduler.config.max_batch_size)
        tasks: deque[asyncio.Future[WindowTranscript]] = deque()

        def queue_more() -> None:
            while len(tasks) < ahead:
                window = next(upcoming, None)
                if window is None:
                    return
                work = self._transcribe_window(prepared.audio, window, job, ticket)
                tasks.append(asyncio.ensure_future(work))

        try:
            queue_more()
            while tasks:
                result = await tasks[0]
                tasks.popleft()
                queue_more()
                yield result
        finally:
            for task in tasks:
                task.cancel()
        if self.observer is not None:
            self.observer.transcribed(self.model_id, prepared.duration)

    async def _transcribe_window(
        self, audio: PCM16, window: Window, job: TranscriptionJob, ticket: Ticket | None
    ) -> WindowTranscript:
        """One window, and the rest of it again each time the model asks to resume.

        Every pass goes through the scheduler on its own, so a window that needs
        another pass never holds back the batch it came from.
        """
        passes: list[WindowTranscript] = []
        start = window.start
        while True:
            samples = as_float(audio[start : window.end])
            item = TranscriptionItem(samples, start / SAMPLE_RATE, job.options)
            if passes or window.checked:
                result = await self._decode(item, job.fallback, ticket)
            else:
                result = await self._decode_unchecked(item, job.fallback, ticket)
            passes.append(result)
            if result.resume_at is None:
                break
            start = max(start + 1, round(result.resume_at * SAMPLE_RATE))
        return dataclasses.replace(
            passes[0], segments=[s for p in passes for s in p.segments], resume_at=None
        )

    async def _decode_unchecked(
        self, item: TranscriptionItem, fallback: bool, ticket: Ticket | None
    ) -> WindowTranscript:
        """A window the VAD has not checked: the model first, the VAD only on doubt.

        A first pass the model is sure of (:func:`trusted`) stands. Otherwise the VAD
        decides: no speech gives an empty window (what checking first would have
        given, one pass later), speech carries on up the ladder as usual.
        """
        (first,) = await self.scheduler.run([item], ticket)
        if trusted(first):
            self._checked("trusted")
            return first
        if not await anyio.to_thread.run_sync(has_speech, item.audio):
            self._checked("no_speech")
            return dataclasses.replace(first, segments=[], silent=True, resume_at=None)
        self._checked("speech")
        if not fallback or not needs_fallback(first):
            return first
        return await self._decode(item, fallback, ticket, first=first)

    def _checked(self, outcome: str) -> None:
        if self.observer is not None:
            self.observer.speech_check(self.model_id, outcome)

    async def _decode(
        self,
        item: TranscriptionItem,
        fallback: bool,
        ticket: Ticket | None,
        *,
        first: WindowTranscript | None = None,
    ) -> WindowTranscript:
        """One pass at the item's temperature, or up Whisper's ladder until one is good.

        ``first``: the pass at temperature 0, already made and failed.
        """
        if not fallback:
            (result,) = await self.scheduler.run([item], ticket)
            return result
        tries: list[WindowTranscript] = []
        for temperature in TEMPERATURE_LADDER:
            if first is not None and temperature == TEMPERATURE_LADDER[0]:
                result = first
            else:
                options = dataclasses.replace(item.options, temperature=temperature)
                retry = dataclasses.replace(item, options=options)
                (result,) = await self.scheduler.run([retry], ticket)
            if not needs_fallback(result):
                return result
            tries.append(result)
            if self.observer and temperature != TEMPERATURE_LADDER[-1]:
                self.observer.fallback(self.model_id)
        return best_of_failed(tries)


async def _outlast(work: asyncio.Future[PreparedAudio]) -> None:
    """Wait for ``work`` to end, whatever else cancels the waiter meanwhile; drop its outcome.

    The wait is short (the thread checks its token often); not waiting would let the
    request's cleanup, and the metrics it updates, run ahead of a thread still busy.
    """
    while not work.done():
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.wait({work})
        except asyncio.CancelledError:
            continue
    if not work.cancelled():
        work.exception()  # retrieved: Abandoned, or whatever the file caused


def needs_fallback(result: WindowTranscript) -> bool:
    """Whisper's rule: a loop or an unsure decode is tried again, hotter; silence is not."""
    if result.silent or not result.segments:
        return False
    return (
        result.compression_ratio > COMPRESSION_RATIO_THRESHOLD
        or result.avg_logprob < LOG_PROB_THRESHOLD
    )


def trusted(result: WindowTranscript) -> bool:
    """Whether a first pass needs no VAD to back it: the model said silence itself, said
    nothing, or said something it is sure of and that is not a loop.

    On tiny.en, real speech (recorded and synthetic, clean and noisy) gave a
    no-speech probability of at most 0.11; noise, hum, tones and clicks gave 0.40
    or more, or loops (compression ratio over 2.4), or low confidence.
    """
    if result.silent or not result.segments:
        return True
    return not needs_fallback(result) and result.no_speech_prob < TRUSTED_NO_SPEECH_BELOW


def best_of_failed(tries: Sequence[WindowTranscript]) -> WindowTranscript:
    """faster-whisper's pick among failed tries, then the repetition guard."""
    not_looping = [t for t in tries if t.compression_ratio <= COMPRESSION_RATIO_THRESHOLD]
    best = max(not_looping or tries, key=lambda t: t.avg_logprob)
    looping = best.compression_ratio > COMPRESSION_RATIO_THRESHOLD
    if looping and best.no_speech_prob > NO_SPEECH_THRESHOLD:
        return dataclasses.replace(best, segments=[], silent=True, resume_at=None)
    return best


def in_order(segments: Sequence[Segment], duration: float) -> list[Segment]:
    """Segments with times that never go back and stay inside the file.

    Whisper's timestamps are nearly always in order already; this makes it a
    guarantee (a clamp, never a reorder), words included.
    """
    ordered: list[Segment] = []
    previous_end = 0.0
    for segment in segments:
        start = min(max(segment.start, previous_end), duration)
        end = min(max(segment.end, start), duration)
        words = _words_in(segment.words, start, end)
        if (start, end, words) != (segment.start, segment.end, segment.words):
            segment = dataclasses.replace(segment, start=start, end=end, words=words)
        ordered.append(segment)
        previous_end = end
    return ordered


def _words_in(words: Sequence[Word], start: float, end: float) -> tuple[Word, ...]:
    out: list[Word] = []
    previous = start
    for word in words:
        w_start = min(max(word.start, previous), end)
        w_end = min(max(word.end, w_start), end)
        if (w_start, w_end) != (word.start, word.end):
            word = dataclasses.replace(word, start=w_start, end=w_end)
        out.append(word)
        previous = w_end
    return tuple(out)
