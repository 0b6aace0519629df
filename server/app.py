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
import msgspec
from litestar import Litestar
from litestar.datastructures import State

from models.base import AudioArray, SpeechItem
from models.registry import ModelLoadError, build_backend
from models.voices import EngineSpec, build_speech_backend
from server.audio import AudioLimits
from server.errors import exception_handlers
from server.routes import ROUTES
from server.runtime import Runtime
from server.scheduler import ModelScheduler
from server.settings import Settings
from server.speech import SpeechEngine, Voice
from server.transcription import TranscriptionService

logger = logging.getLogger("voxserve")

FORM_OVERHEAD_BYTES = 256 << 10
"""Room for the form's other fields (a long prompt) and multipart framing beside a
maximal file; the file itself is held to ``max_upload_bytes`` on its own."""


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
            entry.id,
            backend,
            scheduler,
            limits=AudioLimits(settings.max_audio_seconds, settings.max_decoded_bytes),
            observer=state.metrics,
        )
        logger.info("model %s loaded (%s, %s)", entry.id, spec.weights, scheduler.config)


async def _start_speech(state: Runtime) -> None:
    """One engine per distinct voice weights; every voice of every model points at one."""
    engines: dict[EngineSpec, SpeechEngine] = {}
    try:
        await _start_voices(state, engines)
    except BaseException:  # engines not yet reachable from the runtime: stop them here
        for engine in engines.values():
            await engine.scheduler.stop()
        raise


async def _start_voices(state: Runtime, engines: dict[EngineSpec, SpeechEngine]) -> None:
    settings = state.settings
    for model in settings.speech_models:
        voices: dict[str, Voice] = {}
        for name, spec in model.voices.items():
            engine_spec = settings.engine_spec(spec)
            if engine_spec not in engines:
                label = engine_spec.name
                if label in {e.name for e in engines.values()}:  # same file, other settings
                    label = f"{label}#{len(engines) + 1}"
                engines[engine_spec] = await _start_engine(state, engine_spec, label)
            engine = engines[engine_spec]
            try:
                engine.backend.check_speaker(spec.speaker)
            except ValueError as exc:
                raise ModelLoadError(f"speech model {model.id!r}, voice {name!r}: {exc}") from exc
            voices[name] = Voice(model.id, name, engine, spec.speaker, spec.speed)
        state.speech.voices[model.id] = voices


async def _start_engine(state: Runtime, spec: EngineSpec, name: str) -> SpeechEngine:
    backend = await anyio.to_thread.run_sync(build_speech_backend, spec)
    config = state.settings.speech_config()
    config = msgspec.structs.replace(
        config, max_batch_size=min(config.max_batch_size, backend.max_batch_size)
    )
    scheduler: ModelScheduler[SpeechItem, AudioArray] = ModelScheduler(
        name,
        backend.synthesize_batch,
        backend.batch_key,
        config,
        setup=backend.load,
        observer=state.metrics,
    )
    await scheduler.start()
    state.metrics.watch_queue(name, _depth_of(scheduler))
    logger.info("speech engine %s loaded (%s)", name, scheduler.config)
    return SpeechEngine(name, spec.backend, backend, scheduler)


def _depth_of(scheduler: ModelScheduler[Any, Any]) -> Callable[[], float]:
    return lambda: scheduler.queue_depth


def create_app(settings: Settings) -> Litestar:
    state = Runtime(settings=settings)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        try:
            try:
                await _start_models(state)
                await _start_speech(state)
            except ModelLoadError as exc:  # one clear line above the framework's traceback
                logger.error("voxserve cannot start: %s", exc)
                raise
            yield
        finally:
            for service in state.transcription.values():
                await service.scheduler.stop()
            for engine in state.speech.engines:
                await engine.scheduler.stop()

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        state=State({"runtime": state}),
        exception_handlers=exception_handlers(),
        request_max_body_size=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        logging_config=None,  # the process configures logging once (voxserve serve)
    )
