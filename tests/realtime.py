"""Realtime transcription (``GET /v1/realtime``) for tests: audio on the wire, and a client.

The client is the official SDK's (``AsyncOpenAI().realtime.connect``), as a user's
program would open it; :class:`Realtime` adds what a test needs on top: every server
event kept in order as a plain dict (and read by the SDK's parser too, so an event the
SDK cannot read fails the test), bounded waits for the next event of a type, the close
code the server sent, and audio sent in 40 ms chunks at real-time pace or at once.

Audio: Piper speaks at 22,050 Hz; the session's default input is 24 kHz pcm16, so test
speech goes through PyAV's resampler (the same swr the server uses) to 24 kHz, and to
8 kHz for G.711, which the old ``audioop`` encodes (present in Python 3.11; tests only).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import time
import warnings
import wave
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import cycle
from types import TracebackType
from typing import Any, Literal, TypeVar, cast

import av
import numpy as np
import numpy.typing as npt
import openai
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from openai.types.realtime import (
    RealtimeTranscriptionSessionCreateRequestParam as TranscriptionSession,
)
from websockets.exceptions import ConnectionClosed

from tests.patience import PATIENCE_S, POLL_S
from tests.speech import speak, timed_speech, wav_bytes


def _audioop() -> Any:
    """The old ``audioop`` (Python 3.11, 3.12; gone in 3.13), imported where G.711 is
    needed, so that the other realtime tests import this module on any Python."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop

    return audioop


PCM_RATE = 24_000
"""The session's default input: 16-bit mono at 24 kHz (``audio/pcm``)."""
G711_RATE = 8_000
CHUNK_MS = 40
"""What a browser's audio worklet or a telephony bridge typically sends per message."""
Event = dict[str, Any]
Samples = npt.NDArray[np.int16]


def resample(samples: Samples, rate: int, to: int) -> Samples:
    """``samples`` at ``rate`` as int16 mono at ``to``, by PyAV's resampler (swr)."""
    if rate == to:
        return samples
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to)
    parts = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(parts).astype(np.int16)


def read_wav(data: bytes) -> tuple[Samples, int]:
    with wave.open(io.BytesIO(data), "rb") as reader:
        frames = reader.readframes(reader.getnframes())
        return np.frombuffer(frames, dtype=np.int16).copy(), reader.getframerate()


def speech_pcm(
    *texts: str,
    pause_seconds: float = 1.2,
    lead_seconds: float = 0.5,
    trail_seconds: float = 1.0,
    rate: int = PCM_RATE,
) -> tuple[Samples, list[tuple[float, float]]]:
    """``texts`` spoken with pauses, after ``lead_seconds`` and before ``trail_seconds`` of
    silence, at ``rate``; and the (start, end) seconds at which each text is spoken."""
    wav, times = timed_speech(*texts, pause_seconds=pause_seconds, lead_seconds=lead_seconds)
    samples, native = read_wav(wav)
    tail = np.zeros(int(trail_seconds * native), dtype=np.int16)
    return resample(np.concatenate([samples, tail]), native, rate), times


def sentence_pcm(text: str, rate: int = PCM_RATE) -> Samples:
    """One text, as Piper speaks it (no padding), at ``rate``."""
    samples, native = speak(text)
    return resample(samples, native, rate)


def g711(samples_8k: Samples, law: Literal["pcmu", "pcma"]) -> bytes:
    """8 kHz samples as G.711 mu-law (``pcmu``) or A-law (``pcma``) bytes."""
    audioop = _audioop()
    encode = audioop.lin2ulaw if law == "pcmu" else audioop.lin2alaw
    encoded: bytes = encode(samples_8k.tobytes(), 2)
    return encoded


def slice_ms(samples: Samples, start_ms: int, end_ms: int, rate: int = PCM_RATE) -> Samples:
    """The samples from ``start_ms`` to ``end_ms`` (positions the server reports)."""
    return samples[start_ms * rate // 1000 : end_ms * rate // 1000]


def as_wav(samples: Samples, rate: int = PCM_RATE) -> bytes:
    return wav_bytes(samples, rate)


Piece = TypeVar("Piece", bytes, Samples)


def pieces(data: Piece, sizes: Sequence[int]) -> Iterator[Piece]:
    """``data`` cut into consecutive pieces of ``sizes``, cycled: how a client splits a stream."""
    position = 0
    for size in cycle(sizes):
        if position >= len(data):
            return
        yield data[position : position + size]
        position += size


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sdk(base_url: str, api_key: str = "unused") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=PATIENCE_S
    )


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` without blocking the event loop (socket readers go on)."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: still not so after {PATIENCE_S:g} s"
        await asyncio.sleep(POLL_S)


class Realtime:
    """One transcription session through the openai SDK, with every server event kept.

    ``events`` holds the events as the server sent them (dicts, in order); ``close_code``
    is the code of the server's close frame once the socket is closed (1006 if none).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str = "unused",
        query: Mapping[str, str] | None = None,
    ) -> None:
        self._manager = sdk(base_url, api_key).realtime.connect(
            extra_query={"intent": "transcription", **(query or {})}
        )
        self.events: list[Event] = []
        self.close_code: int | None = None
        self._seen = 0  # events before this index were returned by ``next``
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._connection: AsyncRealtimeConnection | None = None

    @property
    def connection(self) -> AsyncRealtimeConnection:
        assert self._connection is not None, "not connected"
        return self._connection

    async def __aenter__(self) -> Realtime:
        self._connection = await self._manager.enter()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._connection is not None and self.close_code is None:
            await self._connection.close()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, PATIENCE_S)

    async def _read(self) -> None:
        try:
            while True:
                raw = await self.connection.recv_bytes()
                event = json.loads(raw)
                parsed = self.connection.parse_event(raw)  # the SDK must be able to read it
                assert parsed.type == event["type"], (parsed, event)
                self.events.append(event)
                self._arrived.set()
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd is not None else 1006
        finally:
            if self.close_code is None:
                self.close_code = 1006
            self._arrived.set()

    async def _wait(self, found: Callable[[], Event | None], what: str) -> Event:
        deadline = time.monotonic() + PATIENCE_S
        while (event := found()) is None:
            assert self._reader is not None
            if self._reader.done() and self._reader.exception() is not None:
                raise AssertionError(f"reading events failed before {what}") from (
                    self._reader.exception()
                )
            assert not self._reader.done(), (
                f"socket closed ({self.close_code}) before {what}; events: {self.types()}"
            )
            left = deadline - time.monotonic()
            assert left > 0, f"no {what} after {PATIENCE_S:g} s; events: {self.types()}"
            self._arrived.clear()
            if found() is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), left)
        return event

    async def next(self, kind: str, **fields: Any) -> Event:
        """The next event of type ``kind`` (with ``fields``) after the last one returned."""

        def found() -> Event | None:
            for n in range(self._seen, len(self.events)):
                event = self.events[n]
                if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                    self._seen = n + 1
                    return event
            return None

        return await self._wait(found, f"{kind} {fields or ''}")

    async def first(self, kind: str, **fields: Any) -> Event:
        """The first event ever received of type ``kind`` (with ``fields``)."""

        def found() -> Event | None:
            for event in self.events:
                if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                    return event
            return None

        return await self._wait(found, f"{kind} {fields or ''}")

    async def closed(self) -> int:
        """Until the server closes the socket; its close code."""
        assert self._reader is not None
        await asyncio.wait_for(asyncio.shield(self._reader), PATIENCE_S)
        assert self.close_code is not None
        return self.close_code

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]

    def of_item(self, item_id: str) -> list[Event]:
        return [e for e in self.events if e.get("item_id") == item_id]

    async def update(self, **session: Any) -> Event:
        """``session.update`` with ``session`` (``type`` added) and its ``session.updated``."""
        typed = cast(TranscriptionSession, {"type": "transcription", **session})
        await self.connection.session.update(session=typed)
        return await self.next("session.updated")

    async def send_audio(self, data: bytes, *, chunk_bytes: int, real_time: bool = False) -> None:
        """``data`` in appends of ``chunk_bytes``; at one chunk per ``CHUNK_MS`` when
        ``real_time`` (a schedule from the start, so a late send is not made up by
        waiting longer), else as fast as the socket takes them."""
        started = time.monotonic()
        for n, offset in enumerate(range(0, len(data), chunk_bytes)):
            if real_time:
                await asyncio.sleep(max(0.0, started + n * CHUNK_MS / 1000 - time.monotonic()))
            await self.connection.input_audio_buffer.append(
                audio=b64(data[offset : offset + chunk_bytes])
            )

    async def send_pcm(self, samples: Samples, *, real_time: bool = False) -> None:
        """24 kHz pcm16 in 40 ms chunks."""
        chunk = PCM_RATE * CHUNK_MS // 1000 * 2
        await self.send_audio(samples.tobytes(), chunk_bytes=chunk, real_time=real_time)

    async def send_raw(self, data: str | bytes) -> None:
        """A frame as is (text, or binary for bytes): what no typed method would send."""
        await self.connection.send_raw(data)

    async def send_event(self, event: Event) -> None:
        """A client event as JSON, unchecked by the SDK's types."""
        await self.connection.send_raw(json.dumps(event))

    async def transcribe(self, samples: Samples) -> Event:
        """Manual mode: append ``samples`` (24 kHz pcm16), commit; the ``completed`` (or
        ``failed``) event of the committed item."""
        await self.send_pcm(samples)
        await self.connection.input_audio_buffer.commit()
        committed = await self.next(COMMITTED)
        return await self.outcome(committed["item_id"])

    async def outcome(self, item_id: str) -> Event:
        """The ``completed`` or ``failed`` event of ``item_id``."""

        def found() -> Event | None:
            for event in self.events:
                if event.get("item_id") == item_id and event["type"] in OUTCOMES:
                    return event
            return None

        return await self._wait(found, f"the outcome of {item_id}")


STARTED = "input_audio_buffer.speech_started"
STOPPED = "input_audio_buffer.speech_stopped"
COMMITTED = "input_audio_buffer.committed"
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
FAILED = "conversation.item.input_audio_transcription.failed"
OUTCOMES = (COMPLETED, FAILED)
MANUAL: dict[str, Any] = {"audio": {"input": {"turn_detection": None}}}
"""The session update to manual commits (no turn detection)."""
