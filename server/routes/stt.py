"""What the transcription and translation routes share: the upload, the run, the body.

Both routes take a multipart form with a ``file``, turn its other fields into a
:class:`~server.transcription.TranscriptionJob`, and answer in one of the five
response formats; transcription alone can also stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

from litestar import Request, Response
from litestar.datastructures import UploadFile

from models.base import SAMPLE_RATE, WindowTranscript
from models.windowing import VadSettings
from server.errors import InternalError, PayloadTooLarge, VoxserveError, sse_error
from server.formats import RenderOptions, logprobs_json, render, usage_of
from server.protocol import (
    ServerVad,
    TranscriptTextDelta,
    TranscriptTextDone,
    sse_event,
)
from server.runtime import runtime
from server.transcription import TranscriptionJob, TranscriptionService

logger = logging.getLogger("voxserve.transcription")


async def read_upload(request: Request[Any, Any, Any], upload: UploadFile) -> bytes:
    """The file's bytes, or 413 once more than the limit has been read."""
    limit = runtime(request).settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"The file is larger than the {limit} bytes this server accepts.", param="file"
        )
    return data


def vad_settings(strategy: str | ServerVad | None) -> VadSettings | None:
    """``chunking_strategy`` onto the VAD: ``auto`` is ``server_vad`` with its defaults."""
    if strategy is None:
        return None
    vad = strategy if isinstance(strategy, ServerVad) else ServerVad(type="server_vad")
    return VadSettings(
        threshold=vad.threshold,
        min_silence_ms=vad.silence_duration_ms,
        speech_pad_ms=vad.prefix_padding_ms,
    )


async def run_job(
    request: Request[Any, Any, Any],
    service: TranscriptionService,
    upload: UploadFile,
    job: TranscriptionJob,
    response_format: str,
    render_options: RenderOptions,
) -> Response[bytes]:
    """Decode, transcribe and render, holding one place in the model's queue throughout."""
    data = await read_upload(request, upload)
    with service.scheduler.admit() as ticket:
        prepared = await service.prepare(data, upload.filename, job.chunking)
        ticket.work = sum(w.end - w.start for w in prepared.windows) / SAMPLE_RATE
        transcript = await service.transcribe(prepared, job, ticket)
    body, media_type = render(transcript, response_format, render_options)
    return Response(body, media_type=media_type)


async def stream_events(
    service: TranscriptionService,
    data: bytes,
    filename: str | None,
    job: TranscriptionJob,
    logprobs: bool,
) -> AsyncGenerator[bytes, None]:
    """SSE: ``transcript.text.delta`` per window as it completes, in order, then ``done``.

    The first value is an empty chunk, yielded once the request is admitted and
    its file decoded, so the route can still answer 429 or 400 with a status
    line; the queue place is held until the stream ends, however it ends. The
    deltas join to exactly the ``done`` text, the text the same request gets
    without streaming. A failure after the status line is an ``error`` event.
    """
    with service.scheduler.admit() as ticket:
        prepared = await service.prepare(data, filename, job.chunking)
        ticket.work = sum(w.end - w.start for w in prepared.windows) / SAMPLE_RATE
        yield b""
        windows: list[WindowTranscript] = []
        said = False
        try:
            async for window in service.windows(prepared, job, ticket):
                windows.append(window)
                text = window.text
                if not text:
                    continue
                tokens = [t for s in window.segments for t in s.logprobs]
                delta = TranscriptTextDelta(
                    " " + text if said else text, logprobs_json(tokens) if logprobs else None
                )
                said = True
                yield sse_event(delta)
        except VoxserveError as exc:  # the status line is gone: say it in the stream
            yield sse_error(exc)
            return
        except Exception:
            logger.exception("transcription stream failed")
            yield sse_error(InternalError("Transcription failed."))
            return
        transcript = service.transcript(prepared, job, windows)
        done = TranscriptTextDone(
            transcript.text,
            usage_of(transcript),
            logprobs_json(transcript.logprobs) if logprobs else None,
        )
        yield sse_event(done)
