"""``POST /v1/audio/speech`` and ``GET /v1/audio/voices``.

The body always streams (chunked transfer), sentence by sentence, as OpenAI's does:
raw bytes of the requested format with ``stream_format=audio``, or server-sent
``speech.audio.delta`` events and one ``speech.audio.done`` with ``sse``. The
first sentence that gives audio is synthesized (and stretched to ``speed``) before
the status line goes out, so a refusal (429), a failure of the first sentence, or an
input the voice cannot pronounce at all (400 on ``input``, not a 200 with an empty
file) is an ordinary error response; a failure later breaks the body off (audio:
the client sees an incomplete transfer rather than a short file that looks whole)
or sends an ``error`` event (sse).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromQuery
from litestar.response import Stream

from models.base import AudioArray
from models.voices import VoiceSpec
from server import openapi
from server.encoding import CONTENT_TYPES, OUTPUT_SAMPLE_RATE, StreamEncoder
from server.errors import InternalError, VoxserveError, sse_error
from server.forms import read_json
from server.protocol import (
    ModelVoices,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechFormat,
    SpeechRequest,
    SpeechUsage,
    VoiceInfo,
    VoiceList,
    VoiceName,
    sse_event,
)
from server.runtime import runtime

logger = logging.getLogger("voxserve.speech")

OUTPUT_TOKENS_PER_SECOND = 50
"""Usage counts audio in 20 ms frames; there is no audio tokenizer to count with."""


@post(
    "/v1/audio/speech",
    status_code=200,
    operation_class=openapi.SPEECH,
    opt={"queue": "speech"},
)
async def create_speech(request: Request[Any, Any, Any]) -> Stream:
    body = await read_json(request, SpeechRequest)
    state = runtime(request)
    service = state.speech
    voice = state.voice(body.model, body.voice_name)
    # Normalizing 4096 pathological characters takes tens of ms: not on the event loop.
    sentences = await asyncio.to_thread(service.sentences, body.input)
    audio = service.speak(voice, sentences, body.speed)
    # The first audible sentence: errors, 429 and silent input still get a proper status line.
    first = await anext(audio)
    encoded = _encode(first, audio, body.response_format, voice.sample_rate)
    if body.stream_format == "sse":
        usage = _Usage(characters=len(body.input), sample_rate=voice.sample_rate)
        return Stream(_sse(encoded, usage), media_type="text/event-stream")
    return Stream(_bytes_only(encoded), media_type=CONTENT_TYPES[body.response_format])


async def _encode(
    first: AudioArray, rest: AsyncGenerator[AudioArray, None], fmt: SpeechFormat, rate: int
) -> AsyncIterator[tuple[bytes, int]]:
    """Encoded bytes as each sentence arrives, with the samples each one carried."""
    encoder = StreamEncoder(fmt, rate)
    try:
        yield await asyncio.to_thread(encoder.encode, first), len(first)
        async for audio in rest:
            yield await asyncio.to_thread(encoder.encode, audio), len(audio)
        yield await asyncio.to_thread(encoder.finish), 0
    finally:  # stop synthesis of the rest when the client has gone
        await rest.aclose()


async def _bytes_only(encoded: AsyncIterator[tuple[bytes, int]]) -> AsyncIterator[bytes]:
    try:
        async for chunk, _ in encoded:
            if chunk:
                yield chunk
    except Exception as exc:
        # The status line is gone. Re-raising breaks the chunked body off without its
        # last chunk, so the client sees a failed transfer, not a short "complete" file.
        logger.warning("speech stream broken off: %r", exc)
        raise


@dataclass
class _Usage:
    """What ``speech.audio.done`` reports: input characters and 20 ms audio frames."""

    characters: int
    sample_rate: int
    samples: int = 0

    def report(self) -> SpeechUsage:
        frames = math.ceil(self.samples / self.sample_rate * OUTPUT_TOKENS_PER_SECOND)
        return SpeechUsage(
            input_tokens=self.characters,
            output_tokens=frames,
            total_tokens=self.characters + frames,
        )


async def _sse(encoded: AsyncIterator[tuple[bytes, int]], usage: _Usage) -> AsyncIterator[bytes]:
    try:
        async for chunk, samples in encoded:
            usage.samples += samples
            if chunk:
                yield sse_event(SpeechAudioDelta(base64.b64encode(chunk).decode()))
    except Exception as exc:  # the status line is gone; say what happened in the stream
        error = exc if isinstance(exc, VoxserveError) else InternalError("Synthesis failed.")
        logger.warning("speech stream failed: %s", error.message)
        yield sse_error(error)
        return
    yield sse_event(SpeechAudioDone(usage.report()))


@get("/v1/audio/voices", operation_class=openapi.VOICES)
async def list_voices(
    request: Request[Any, Any, Any], model: FromQuery[str | None] = None
) -> Response[bytes]:
    """The catalog's voices, flat (``voices``: what Open WebUI reads, asking without a
    model) and by model (``data``); ``model`` may be an alias, and narrows both.

    Read from the catalog, as ``/v1/models`` is, so the list is whole while models load.
    """
    state = runtime(request)
    chosen = None if model is None else state.resolve(model, "speech")
    groups = [
        ModelVoices(model=entry.id, voices=[_voice_info(n, v) for n, v in entry.voices.items()])
        for entry in state.settings.speech_models
        if chosen is None or entry.id == chosen
    ]
    names = dict.fromkeys(v.id for group in groups for v in group.voices)  # once, in order
    body = VoiceList(voices=[VoiceName(id=name, name=name) for name in names], data=groups)
    return Response(msgspec.json.encode(body), media_type="application/json")


def _voice_info(name: str, spec: VoiceSpec) -> VoiceInfo:
    return VoiceInfo(
        id=name,
        name=name,
        backend=spec.backend,
        speaker=spec.speaker,
        sample_rate=OUTPUT_SAMPLE_RATE,  # every response is resampled to it
    )
