"""``create_app(settings)``: the Litestar app, whose lifespan loads the models.

Start-up builds one backend, one scheduler (with its worker thread) and one
service per catalog entry, loading each model inside its own worker thread; shut-
down stops the schedulers. Everything a route needs hangs off ``app.state.runtime``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from litestar import Litestar
from litestar.datastructures import State

from models.registry import build_backend
from server.errors import exception_handlers
from server.routes import ROUTES
from server.runtime import Runtime
from server.scheduler import ModelScheduler
from server.settings import Settings
from server.transcription import TranscriptionService

logger = logging.getLogger("voxserve")

FORM_OVERHEAD_BYTES = 1 << 20
"""Room for the form's other fields and multipart framing beside a maximal file."""


async def _start_models(state: Runtime) -> None:
    settings = state.settings
    for entry in settings.models:
        spec = settings.model_spec(entry)
        backend = await anyio.to_thread.run_sync(build_backend, spec, settings.model_cache_dir)
        scheduler = ModelScheduler(
            entry.id,
            backend.transcribe_batch,
            backend.batch_key,
            settings.scheduler_config(entry),
            setup=backend.load,
            observer=state.metrics,
        )
        await scheduler.start()
        state.metrics.watch_queue(entry.id, _depth_of(scheduler))
        state.transcription[entry.id] = TranscriptionService(
            entry.id, backend, scheduler, max_audio_seconds=settings.max_audio_seconds
        )
        logger.info("model %s loaded (%s, %s)", entry.id, spec.weights, scheduler.config)


def _depth_of(scheduler: ModelScheduler[Any, Any]) -> Callable[[], float]:
    return lambda: scheduler.queue_depth


def create_app(settings: Settings) -> Litestar:
    state = Runtime(settings=settings)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            await _start_models(state)
            yield
        finally:
            for service in state.transcription.values():
                await service.scheduler.stop()

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        state=State({"runtime": state}),
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        logging_config=None,  # the process configures logging once (voxserve serve)
    )
