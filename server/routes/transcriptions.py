"""``POST /v1/audio/transcriptions``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from models.base import DecodingOptions
from server.errors import InvalidRequest
from server.formats import check_format, render
from server.forms import parse_form
from server.protocol import TranscriptionForm
from server.runtime import runtime


@post("/v1/audio/transcriptions", status_code=200)
async def create_transcription(request: Request[Any, Any, Any]) -> Response[bytes]:
    upload, form = parse_form(await request.form(), TranscriptionForm)
    service = runtime(request).transcriber(form.model)
    _refuse_unimplemented(form)
    check_format(form.response_format)
    options = DecodingOptions(
        language=form.language, prompt=form.prompt, temperature=form.temperature
    )
    service.check(options)
    data = await upload.read()
    with service.scheduler.admit():
        transcript = await service.transcribe(data, options)
    body, media_type = render(transcript, form.response_format)
    return Response(body, media_type=media_type)


def _refuse_unimplemented(form: TranscriptionForm) -> None:
    """Parameters of OpenAI's API this server does not honour yet: a 400, not a silent no."""
    if form.stream:
        raise InvalidRequest("stream=true is not supported by this server yet.", param="stream")
    if form.timestamp_granularities:
        raise InvalidRequest(
            "timestamp_granularities is not supported by this server yet.",
            param="timestamp_granularities",
        )
    if form.include:
        raise InvalidRequest("include is not supported by this server yet.", param="include")
    if form.chunking_strategy not in (None, "auto"):
        raise InvalidRequest(
            "Only chunking_strategy 'auto' is supported by this server yet.",
            param="chunking_strategy",
        )
