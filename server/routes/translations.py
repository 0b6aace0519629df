"""``POST /v1/audio/translations``: speech in any language, English text out."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post

from models.base import DecodingOptions
from server import openapi
from server.formats import RenderOptions
from server.forms import read_fields
from server.protocol import TranslationForm
from server.routes.stt import run_job
from server.runtime import runtime
from server.transcription import TranscriptionJob


@post(
    "/v1/audio/translations",
    status_code=200,
    operation_class=openapi.TRANSLATION,
    opt={"queue": "transcription"},
)
async def create_translation(request: Request[Any, Any, Any]) -> Response[bytes]:
    upload, form = await read_fields(request, TranslationForm)
    service = runtime(request).transcriber(form.model)
    options = DecodingOptions(prompt=form.prompt, temperature=form.temperature, task="translate")
    service.check(options)
    job = TranscriptionJob(options, fallback=form.temperature == 0)
    return await run_job(request, service, upload, job, form.response_format, RenderOptions())
