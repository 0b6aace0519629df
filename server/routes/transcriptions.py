"""``POST /v1/audio/transcriptions``: every field of OpenAI's form, streaming included."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from models.base import DecodingOptions
from server import openapi
from server.errors import InvalidRequest
from server.formats import RenderOptions
from server.forms import read_fields
from server.protocol import TranscriptionForm
from server.routes.stt import read_upload, run_job, stream_events, vad_settings
from server.runtime import runtime
from server.transcription import TranscriptionJob


@post(
    "/v1/audio/transcriptions",
    status_code=200,
    operation_class=openapi.TRANSCRIPTION,
    opt={"queue": "transcription"},
)
async def create_transcription(request: Request[Any, Any, Any]) -> Response[bytes] | Stream:
    upload, form = await read_fields(request, TranscriptionForm)
    service = runtime(request).transcriber(form.model)
    _check_combinations(form)
    granularities = set(form.timestamp_granularities)
    logprobs = "logprobs" in form.include
    options = DecodingOptions(
        language=form.language,
        prompt=form.prompt,
        temperature=form.temperature,
        word_timestamps="word" in granularities,
        token_logprobs=logprobs,
    )
    service.check(options)
    job = TranscriptionJob(
        options, fallback=form.temperature == 0, chunking=vad_settings(form.chunking_strategy)
    )
    if form.stream:
        data = await read_upload(request, upload)
        events = stream_events(service, data, upload.filename, job, logprobs)
        await anext(events)  # admitted and decoded: a 429 or a bad file is still a status
        return Stream(events, media_type="text/event-stream")
    render_options = RenderOptions(
        segments=not granularities or "segment" in granularities,
        words="word" in granularities,
        logprobs=logprobs,
    )
    return await run_job(request, service, upload, job, form.response_format, render_options)


def _check_combinations(form: TranscriptionForm) -> None:
    """Fields that only mean something together with another, as OpenAI's API has them."""
    if form.timestamp_granularities and form.response_format != "verbose_json":
        raise InvalidRequest(
            "timestamp_granularities requires response_format 'verbose_json'.",
            param="timestamp_granularities",
        )
    if form.include and form.response_format != "json":
        raise InvalidRequest("include[]=logprobs requires response_format 'json'.", param="include")
    if form.stream and form.response_format not in ("json", "text"):
        raise InvalidRequest(
            "stream=true streams text events; use response_format 'json' or 'text' with it.",
            param="stream",
        )
