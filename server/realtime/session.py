"""One realtime transcription session: client events in, server events out, utterances
to the model's scheduler.

The session knows nothing of sockets: the route hands it each text frame
(:meth:`TranscriptionSession.handle`) and gives it a function that queues a server
event for sending. Its parts:

- the input audio (any of the three wire formats) becomes 16 kHz int16 as it arrives
  (:class:`~server.realtime.audio_in.InputAudio`) and goes into the
  :class:`~server.realtime.buffer.AudioBuffer`;
- in ``server_vad`` mode a task per session runs Silero over the new audio in a worker
  thread (never on the event loop), a whole backlog per call, and turns its
  probabilities into speech started / stopped (:class:`~models.vad_stream.TurnDetector`);
  the end of a turn commits it;
- each committed utterance is a request of its own to the model: it takes a place in
  the model's queue (``admit``; a full queue fails that utterance with
  ``queue_full`` and the session goes on), is cut into windows exactly as an uploaded
  file is, and its windows join whatever batch is forming, with other sessions'
  utterances and with file requests. Results go out in commit order, so a client that
  appends the deltas gets the session's text in the order it was spoken.

A session that ends (the client left, a limit, the drain) cancels what it has in the
queue: those windows are withdrawn and never computed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import anyio.to_thread
import msgspec
import numpy as np

from models.base import SAMPLE_RATE, DecodingOptions
from models.vad_stream import SileroStream, SpeechStarted, SpeechStopped, TurnDetector
from models.windowing import plan_windows
from server.errors import InvalidRequest, ModelNotFound, VoxserveError, WrongEndpoint
from server.formats import logprobs_json
from server.realtime.audio_in import InputAudio
from server.realtime.buffer import PCM16, AudioBuffer
from server.realtime.events import (
    CLIENT_EVENTS,
    CONVERSATION_EVENTS,
    EventError,
    SessionConfig,
    Transcription,
    apply_update,
    error_event,
    expires_at,
    new_id,
    read_session_update,
    server_event,
    session_object,
)
from server.realtime.interim import Interim
from server.runtime import Runtime
from server.transcription import PreparedAudio, Transcript, TranscriptionJob

logger = logging.getLogger("voxserve.realtime")

MS = SAMPLE_RATE // 1000
"""16 kHz samples per millisecond: positions on the wire are milliseconds."""
MIN_COMMIT_SAMPLES = SAMPLE_RATE // 10
"""OpenAI refuses to commit less than 100 ms of audio."""
LARGE_APPEND_CHARS = 256 << 10
"""An append this large (about 4 s of 24 kHz audio) is decoded in a thread, not on the loop."""
FRAME = 512
"""Silero's frame at 16 kHz."""
INTERIM_MAX_SAMPLES = 30 * SAMPLE_RATE
"""Interim decodes stop once a turn is longer than one Whisper window."""

Emit = Callable[[dict[str, Any]], None]


def default_model(runtime: Runtime, requested: str | None) -> str | None:
    """The session's transcription model: the ``model`` query parameter when it names a
    transcription model, else ``whisper-1``, else the catalog's first; None if there is none."""
    for name in (requested, "whisper-1"):
        if name is not None and name in runtime.names:
            entry = runtime.names[name]
            if entry.kind == "transcription":
                return name
    models = runtime.settings.models
    return models[0].id if models else None


class TranscriptionSession:
    def __init__(
        self, runtime: Runtime, emit: Emit, *, model: str | None = None, beta: bool = False
    ) -> None:
        self.id = new_id("sess")
        self.runtime = runtime
        self.beta = beta
        self._emit = emit
        settings = runtime.settings
        self.expires_at = expires_at(settings.realtime_max_session_seconds)
        chosen = default_model(runtime, model)
        self.config = SessionConfig(
            transcription=Transcription(model=chosen) if chosen is not None else None
        )
        self._max_buffer = int(settings.realtime_max_buffer_seconds * SAMPLE_RATE)
        self._input = InputAudio(self.config.format)
        self._buffer = AudioBuffer()
        self._committed_until = 0
        """Audio before this position has been committed (or cleared)."""
        self._previous_item: str | None = None
        # server_vad
        self._vad: SileroStream | None = None
        self._turns: TurnDetector | None = None
        self._vad_origin = 0
        """Absolute position of the VAD stream's first sample."""
        self._vad_pending: list[PCM16] = []
        self._vad_wakeup = asyncio.Event()
        self._vad_task: asyncio.Task[None] | None = None
        self._speech_item: str | None = None
        self._speech_start = 0
        self._interim_samples = int(settings.realtime_interim_seconds * SAMPLE_RATE)
        """0: no interim text (:mod:`server.realtime.interim`)."""
        self._interim: Interim | None = None
        # utterances
        self._utterances: set[asyncio.Task[None]] = set()
        self._last_utterance: asyncio.Task[None] | None = None
        self.utterances = 0
        self._start_vad()

    # -- events in -----------------------------------------------------------------

    def created(self) -> None:
        kind = "transcription_session.created" if self.beta else "session.created"
        self._emit(server_event(kind, session=self._session_object()))

    async def handle(self, text: str) -> None:
        """One client text frame; anything wrong with it is an ``error`` event."""
        client_event_id: str | None = None
        try:
            event = _parse(text)
            raw_id = event.get("event_id")
            client_event_id = raw_id if isinstance(raw_id, str) else None
            await self._dispatch(event)
        except EventError as exc:
            self._emit(error_event(exc, client_event_id))
        except Exception:  # a fault of ours: said, logged, and the session goes on
            logger.exception("realtime event failed")
            fault = EventError(
                "The server had an error processing this event.",
                code="internal_error",
                error_type="server_error",
            )
            self._emit(error_event(fault, client_event_id))

    def refuse_binary(self) -> None:
        self._emit(
            error_event(
                EventError(
                    "Binary frames are not accepted: send JSON events as text frames, "
                    "with audio base64-encoded in input_audio_buffer.append.",
                    code="invalid_value",
                ),
                None,
            )
        )

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if not isinstance(kind, str):
            raise EventError(
                "The event has no 'type'.", code="missing_required_parameter", param="type"
            )
        if kind == "input_audio_buffer.append":
            await self._append(event)
        elif kind == "input_audio_buffer.commit":
            self._commit_buffer()
        elif kind == "input_audio_buffer.clear":
            self._clear()
        elif kind in ("session.update", "transcription_session.update"):
            self._update(event, beta=kind == "transcription_session.update")
        elif kind in CONVERSATION_EVENTS:
            raise EventError(
                f"'{kind}' belongs to conversation sessions; this is a transcription session.",
                code="unsupported_event",
                param="type",
            )
        else:
            supported = ", ".join(f"'{name}'" for name in CLIENT_EVENTS)
            raise EventError(
                f"Invalid value: '{kind[:100]}'. Supported values are: {supported}.",
                code="invalid_value",
                param="type",
            )

    def _update(self, event: dict[str, Any], *, beta: bool) -> None:
        update = read_session_update(event, beta)
        config = apply_update(self.config, update)
        if config.transcription is not None:
            config = replace(config, transcription=self._checked(config.transcription))
        if config.format != self.config.format:
            self._input = InputAudio(config.format)
        turns_changed = config.turn_detection != self.config.turn_detection
        self.config = config
        if turns_changed:
            self._restart_vad()
        kind = "transcription_session.updated" if beta else "session.updated"
        self._emit(server_event(kind, session=self._session_object()))

    def _checked(self, transcription: Transcription) -> Transcription:
        """The model resolved (404 and wrong-kind names refused) and the language checked."""
        param = "session.audio.input.transcription"
        name = transcription.model or default_model(self.runtime, None) or ""
        try:
            model_id = self.runtime.resolve(name, "transcription")
        except ModelNotFound as exc:
            raise EventError(exc.message, code="model_not_found", param=f"{param}.model") from exc
        except WrongEndpoint as exc:
            raise EventError(
                f"Model '{name}' is a text-to-speech model; a transcription session needs a "
                "speech-to-text model.",
                code="invalid_value",
                param=f"{param}.model",
            ) from exc
        service = self.runtime.transcription.get(model_id)  # absent while loading
        if service is not None:
            try:
                service.check(DecodingOptions(language=transcription.language))
            except InvalidRequest as exc:
                raise EventError(
                    exc.message, code="unsupported_language", param=f"{param}.language"
                ) from exc
        return replace(transcription, model=name)

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise EventError(
                "input_audio_buffer.append needs 'audio': base64-encoded audio in the "
                "session's format.",
                code="missing_required_parameter",
                param="audio",
            )
        decoder = self._input
        if len(audio) > LARGE_APPEND_CHARS:
            samples = await anyio.to_thread.run_sync(_decode, decoder, audio)
        else:
            samples = _decode(decoder, audio)
        if self.config.turn_detection is None:
            held = self._buffer.end - max(self._buffer.start, self._committed_until)
            if held + len(samples) > self._max_buffer:
                raise EventError(
                    "The input audio buffer would hold more than "
                    f"{self._max_buffer / SAMPLE_RATE:g} seconds; commit or clear it. "
                    "This chunk was dropped.",
                    code="input_audio_buffer_too_large",
                    param="audio",
                )
        self._buffer.append(samples)
        if self._vad is not None and len(samples):
            self._vad_pending.append(samples)
            self._vad_wakeup.set()

    def _commit_buffer(self) -> None:
        """``input_audio_buffer.commit``: whatever is buffered since the last commit."""
        first = max(self._buffer.start, self._committed_until)
        if self._speech_item is not None:
            first = self._speech_start
        last = self._buffer.end
        if last - first < MIN_COMMIT_SAMPLES:
            raise EventError(
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {(last - first) / MS:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
            )
        item = self._speech_item or new_id("item")
        interim = self._end_turn()
        self._commit(first, last, item, interim)

    def _clear(self) -> None:
        self._buffer.clear()
        self._committed_until = self._buffer.end
        self._end_turn()
        self._emit(server_event("input_audio_buffer.cleared"))

    # -- server_vad ----------------------------------------------------------------

    def _start_vad(self) -> None:
        if self.config.turn_detection is None:
            return
        self._vad = SileroStream()
        self._turns = TurnDetector(self.config.turn_detection)
        self._vad_origin = self._buffer.end
        self._vad_pending = []
        if self._vad_task is None:
            self._vad_task = asyncio.create_task(self._run_vad(), name=f"vad-{self.id}")

    def _restart_vad(self) -> None:
        self._end_turn()
        self._vad = None
        self._turns = None
        self._vad_pending = []
        self._start_vad()

    def _end_turn(self, *, reset: bool = True) -> Interim | None:
        """Speech in progress is no longer a turn of its own (committed or cleared); its
        interim state, if any, is handed back (its decode in flight cancelled)."""
        self._speech_item = None
        interim, self._interim = self._interim, None
        if interim is not None:
            interim.stop()
        if reset and self._turns is not None:
            self._turns.reset()
        return interim

    async def _run_vad(self) -> None:
        """Score new audio as it comes, a backlog at a time, in a worker thread."""
        while True:
            await self._vad_wakeup.wait()
            self._vad_wakeup.clear()
            stream, turns, origin = self._vad, self._turns, self._vad_origin
            if stream is None or turns is None or not self._vad_pending:
                continue
            samples = np.concatenate(self._vad_pending)
            self._vad_pending = []
            first_frame = stream.frames
            probabilities = await anyio.to_thread.run_sync(stream.feed, samples)
            if stream is not self._vad:
                continue  # turn detection changed meanwhile: these frames are stale
            for change in turns.push(probabilities, first_frame):
                if isinstance(change, SpeechStarted):
                    self._speech_began(origin + change.sample)
                else:
                    assert isinstance(change, SpeechStopped)
                    self._speech_ended(origin + change.sample)
            scored = origin + stream.frames * FRAME
            self._bound_turn(scored)
            self._maybe_interim(scored)
            if self._speech_item is None:
                padding = self._padding()
                self._buffer.drop_before(max(scored - padding - FRAME, self._committed_until))

    def _padding(self) -> int:
        turns = self.config.turn_detection
        return 0 if turns is None else turns.prefix_padding_ms * MS

    def _speech_began(self, position: int) -> None:
        start = max(position - self._padding(), self._committed_until, self._buffer.start)
        self._speech_item = new_id("item")
        self._speech_start = start
        if self._interim_samples and self.config.transcription is not None:
            self._interim = Interim(next_at=position + self._interim_samples)
        self._emit(
            server_event(
                "input_audio_buffer.speech_started",
                audio_start_ms=start // MS,
                item_id=self._speech_item,
            )
        )

    def _speech_ended(self, position: int, *, reset: bool = True) -> None:
        item = self._speech_item
        if item is None:
            return  # committed by the client meanwhile
        interim = self._end_turn(reset=reset)
        self._emit(
            server_event(
                "input_audio_buffer.speech_stopped", audio_end_ms=position // MS, item_id=item
            )
        )
        self._commit(self._speech_start, position, item, interim)

    def _bound_turn(self, scored: int) -> None:
        """A turn that reaches ``realtime_max_buffer_seconds`` is committed there, and the
        speech goes on as a new turn."""
        if self._speech_item is None or scored - self._speech_start < self._max_buffer:
            return
        end = self._speech_start + self._max_buffer
        self._speech_ended(end, reset=False)  # the detector still hears speech
        self._speech_began(end + self._padding())

    def finish_speech(self) -> None:
        """The drain: speech in progress is committed as it stands."""
        if self._speech_item is not None:
            self._speech_ended(self._buffer.end)

    # -- utterances ----------------------------------------------------------------

    def _maybe_interim(self, scored: int) -> None:
        """Decode the turn so far again, if interim text is on and a decode is due."""
        interim, item = self._interim, self._speech_item
        if interim is None or item is None or scored < interim.next_at:
            return
        if interim.task is not None and not interim.task.done():
            return  # one decode at a time; the next is due once it is back
        if scored - self._speech_start > INTERIM_MAX_SAMPLES:
            return  # beyond one window every decode would cost more: wait for the end
        interim.next_at = scored + self._interim_samples
        audio = self._buffer.slice(self._speech_start, scored)
        interim.task = asyncio.create_task(
            self._interim_decode(item, interim, audio, self.config), name=f"interim-{item}"
        )

    async def _interim_decode(
        self, item: str, interim: Interim, audio: PCM16, config: SessionConfig
    ) -> None:
        try:
            transcript = await self._transcribe(audio, config, fallback=False)
        except VoxserveError:
            return  # a full queue or a model not ready: the final decode will say so
        if interim is not self._interim:
            return  # the turn ended meanwhile
        previous = self._last_utterance
        delta = interim.agree(transcript.text, may_send=previous is None or previous.done())
        if delta:
            self._emit(
                server_event(
                    "conversation.item.input_audio_transcription.delta",
                    item_id=item,
                    content_index=0,
                    delta=delta,
                )
            )

    def _commit(self, first: int, last: int, item: str, interim: Interim | None = None) -> None:
        audio = self._buffer.slice(first, last)
        self._buffer.drop_before(last)
        self._committed_until = max(self._committed_until, last)
        self._emit(
            server_event(
                "input_audio_buffer.committed", previous_item_id=self._previous_item, item_id=item
            )
        )
        self._previous_item = item
        if self.config.transcription is None:
            return
        before = self._last_utterance
        task = asyncio.create_task(
            self._utterance(item, audio, self.config, before, interim), name=f"utterance-{item}"
        )
        self._last_utterance = task
        self._utterances.add(task)
        task.add_done_callback(self._utterances.discard)
        self.utterances += 1

    async def _utterance(
        self,
        item: str,
        audio: PCM16,
        config: SessionConfig,
        before: asyncio.Task[None] | None,
        interim: Interim | None,
    ) -> None:
        """Transcribe one committed utterance and send its result, after the one before."""
        committed_at = time.monotonic()
        assert config.transcription is not None
        model, outcome = config.transcription.model, "cancelled"
        metrics = self.runtime.metrics
        try:
            try:
                transcript = await self._transcribe(audio, config)
            except VoxserveError as exc:
                await _after(before)
                self._emit(_failed(item, exc))
                outcome = "failed"
                return
            await _after(before)
            logprobs = (
                msgspec.to_builtins(logprobs_json(transcript.logprobs)) if config.logprobs else None
            )
            text, last_delta = transcript.text, transcript.text
            if interim is not None:
                text, last_delta = interim.final(text)
            if last_delta:
                delta: dict[str, Any] = {"item_id": item, "content_index": 0, "delta": last_delta}
                if logprobs is not None:
                    delta["logprobs"] = logprobs
                self._emit(
                    server_event("conversation.item.input_audio_transcription.delta", **delta)
                )
            completed: dict[str, Any] = {
                "item_id": item,
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": round(len(audio) / SAMPLE_RATE, 3)},
            }
            if logprobs is not None:
                completed["logprobs"] = logprobs
            self._emit(
                server_event("conversation.item.input_audio_transcription.completed", **completed)
            )
            outcome = "completed"
            metrics.realtime_latency(model, time.monotonic() - committed_at)
        except Exception:
            logger.exception("realtime utterance failed")
            self._emit(_failed(item, VoxserveError("Transcription failed.", code="internal_error")))
            outcome = "failed"
        finally:
            metrics.realtime_utterance(model, outcome)

    async def _transcribe(
        self, audio: PCM16, config: SessionConfig, *, fallback: bool = True
    ) -> Transcript:
        """The utterance through the model's queue, as one request: the file endpoint's path."""
        assert config.transcription is not None
        setting = config.transcription
        service = self.runtime.transcriber(setting.model)
        options = DecodingOptions(
            language=setting.language, prompt=setting.prompt, token_logprobs=config.logprobs
        )
        job = TranscriptionJob(options, fallback=fallback)
        with service.scheduler.admit(work=len(audio) / SAMPLE_RATE) as ticket:
            window_seconds = service.backend.window_seconds
            windows = await anyio.to_thread.run_sync(plan_windows, audio, window_seconds)
            return await service.transcribe(PreparedAudio(audio, windows), job, ticket)

    async def settle(self) -> None:
        """Until every committed utterance has been answered."""
        while self._utterances:
            await asyncio.wait(set(self._utterances))

    async def close(self) -> None:
        """Stop the VAD and withdraw every utterance not yet answered."""
        tasks = [*self._utterances]
        if self._vad_task is not None:
            tasks.append(self._vad_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _session_object(self) -> dict[str, Any]:
        return session_object(self.id, self.config, self.expires_at, self.beta)


def _parse(text: str) -> dict[str, Any]:
    try:
        event = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise EventError(
            f"The event is not valid JSON: {exc}.", code="invalid_json", param=None
        ) from exc
    if not isinstance(event, dict):
        raise EventError("The event must be a JSON object.", code="invalid_json")
    return event


def _decode(decoder: InputAudio, audio: str) -> PCM16:
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EventError(
            "Invalid 'audio': it is not valid base64.", code="invalid_base64", param="audio"
        ) from exc
    return decoder.decode(data)


async def _after(before: asyncio.Task[None] | None) -> None:
    """Wait for the previous utterance's events to go out (however it ended)."""
    if before is not None and not before.done():
        await asyncio.wait({before})


def _failed(item: str, error: VoxserveError) -> dict[str, Any]:
    return server_event(
        "conversation.item.input_audio_transcription.failed",
        item_id=item,
        content_index=0,
        error={
            "type": error.error_type,
            "code": error.code,
            "message": error.message,
            "param": error.param,
        },
    )
