"""``POST /v1/audio/speech`` and ``GET /v1/audio/voices``.

The body always streams (chunked transfer), sentence by sentence, as OpenAI's does:
raw bytes of the requested format with ``stream_format=audio``, or server-sent
``speech.audio.delta`` events and one ``speech.audio.done`` with ``sse``. The
first sentence is synthesized before the status line goes out, so a refusal (429)
or a failure of the first sentence is an ordinary error response; a failure
later breaks the body off (audio: the client sees an incomplete transfer rather
than a short file that looks whole) or sends an ``error`` event (sse).
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
from server import openapi
from server.encoding import CONTENT_TYPES, StreamEncoder
from server.errors import InternalError, ModelNotFound, VoxserveError, sse_error
from server.forms import decode_json
from server.protocol import (
    ModelVoices,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechFormat,
    SpeechRequest,
    SpeechUsage,
    VoiceInfo,
    VoiceList,
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
    body = decode_json(await request.body(), SpeechRequest)
    state = runtime(request)
    service = state.speech
    voice = state.voice(body.model, body.voice_name)
    # Normalizing 4096 pathological characters takes tens of ms: not on the event loop.
    sentences = await asyncio.to_thread(service.sentences, body.input)
    audio = service.speak(voice, sentences, body.speed)
    first = await anext(audio)  # errors and 429 here still get a proper status line
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


@get("/v1/audio/voices")
async def list_voices(
    request: Request[Any, Any, Any], model: FromQuery[str | None] = None
) -> Response[bytes]:
    catalog = runtime(request).speech.voices
    if model is not None and model not in catalog:
        raise ModelNotFound(model)
    body = VoiceList(
        data=[
            ModelVoices(
                model=model_id,
                voices=[
                    VoiceInfo(
                        id=name,
                        backend=voice.engine.backend_name,
                        speaker=voice.speaker,
                        sample_rate=voice.sample_rate,
                    )
                    for name, voice in voices.items()
                ],
            )
            for model_id, voices in catalog.items()
            if model is None or model_id == model
        ]
    )
    return Response(msgspec.json.encode(body), media_type="application/json")
