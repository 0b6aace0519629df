"""``create_app(settings)``: the Litestar app, whose lifespan loads the models.

Start-up begins loading, in the background, one backend, one scheduler (with its
worker thread) and one service per catalog entry, each model inside its own worker
thread; shutdown stops the schedulers. Everything a route needs hangs off
``app.state.runtime``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version
from typing import Any

import anyio.to_thread
import msgspec
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from models.base import SAMPLE_RATE, AudioArray, SpeechItem, TranscriptionItem, WindowTranscript
from models.registry import ModelLoadError, TranscriptionEngine, build_engine
from models.voices import EngineSpec, build_speech_backend
from server.audio import AudioLimits
from server.catalog import CatalogModel, SpeechModel
from server.errors import exception_handlers
from server.forms import IGNORED_FIELDS_HEADER, report_ignored_fields
from server.middleware import MIDDLEWARE
from server.routes import ROUTES
from server.routes.docs import ROUTES as DOCS_ROUTES
from server.routes.docs import SwaggerPage
from server.routes.playground import ROUTES as PLAYGROUND_ROUTES
from server.runtime import ModelState, Runtime
from server.scheduler import BatchScheduler, ModelScheduler, StepScheduler
from server.scheduler.queue import STOP_WAIT_SECONDS
from server.settings import SchedulerConfig, Settings
from server.speech import SpeechEngine, Voice
from server.transcription import TranscriptionService

logger = logging.getLogger("voxserve")

FORM_OVERHEAD_BYTES = 256 << 10
"""Room for the form's other fields (a long prompt) and multipart framing beside a
maximal file; the file itself is held to ``max_upload_bytes`` on its own."""


async def load_models(state: Runtime) -> None:
    """Load every catalog model, one at a time; a failure marks that model failed only."""
    for entry in state.settings.models:
        try:
            await _start_transcription(state, entry)
        except Exception as exc:
            _log_failure(f"model {entry.id!r}", exc)
            state.set_state(entry.id, ModelState.FAILED)
        else:
            state.set_state(entry.id, ModelState.READY)
    engines: dict[EngineSpec, SpeechEngine | Exception] = {}
    for model in state.settings.speech_models:
        try:
            state.speech.voices[model.id] = await _start_voices(state, model, engines)
        except Exception as exc:
            _log_failure(f"speech model {model.id!r}", exc)
            state.set_state(model.id, ModelState.FAILED)
        else:
            state.set_state(model.id, ModelState.READY)


def _log_failure(what: str, exc: Exception) -> None:
    if isinstance(exc, ModelLoadError):  # expected: one clear line
        logger.error("%s failed to load: %s", what, exc)
    else:
        logger.exception("%s failed to load", what, exc_info=exc)


async def _start_transcription(state: Runtime, entry: CatalogModel) -> None:
    settings = state.settings
    spec = settings.model_spec(entry)
    config = settings.scheduler_config(entry)
    engine = await anyio.to_thread.run_sync(
        partial(build_engine, spec, settings.model_cache_dir, rows=config.max_batch_size)
    )
    scheduler = _transcription_scheduler(entry.id, engine, config, state)
    await scheduler.start()
    state.metrics.watch_queue(entry.id, _depth_of(scheduler))
    state.transcription[entry.id] = TranscriptionService(
        entry.id,
        engine.model,
        scheduler,
        limits=AudioLimits(settings.max_audio_seconds, settings.max_decoded_bytes),
        decodes=state.decodes,
        observer=state.metrics,
    )
    logger.info("model %s loaded (%s, %s)", entry.id, spec.weights, scheduler.config)


def _transcription_scheduler(
    name: str, engine: TranscriptionEngine, config: SchedulerConfig, state: Runtime
) -> ModelScheduler[TranscriptionItem, WindowTranscript]:
    """Continuous batching for a step engine, whole batches for the others."""
    if engine.steps is not None:
        return StepScheduler(
            name,
            engine.steps,
            config,
            setup=engine.load,
            observer=state.metrics,
            work_of=_audio_seconds,
        )
    assert engine.whole is not None
    return BatchScheduler(
        name,
        engine.whole.transcribe_batch,
        engine.whole.batch_key,
        config,
        setup=engine.load,
        observer=state.metrics,
        work_of=_audio_seconds,
    )


async def _start_voices(
    state: Runtime, model: SpeechModel, engines: dict[EngineSpec, SpeechEngine | Exception]
) -> dict[str, Voice]:
    """The model's voices; an engine is loaded once, however many voices share it."""
    voices: dict[str, Voice] = {}
    for name, spec in model.voices.items():
        engine_spec = state.settings.engine_spec(spec)
        if engine_spec not in engines:
            label = engine_spec.name
            if label in {e.name for e in engines.values() if isinstance(e, SpeechEngine)}:
                label = f"{label}#{len(engines) + 1}"  # same file, other settings
            try:
                engines[engine_spec] = await _start_engine(state, engine_spec, label)
            except Exception as exc:
                engines[engine_spec] = exc
        engine = engines[engine_spec]
        if isinstance(engine, Exception):
            raise ModelLoadError(f"voice {name!r}: {engine}") from engine
        try:
            engine.backend.check_speaker(spec.speaker)
        except ValueError as exc:
            raise ModelLoadError(f"voice {name!r}: {exc}") from exc
        voices[name] = Voice(model.id, name, engine, spec.speaker, spec.speed)
    return voices


async def _start_engine(state: Runtime, spec: EngineSpec, name: str) -> SpeechEngine:
    build = partial(build_speech_backend, max_pass_seconds=state.settings.speech_max_pass_seconds)
    backend = await anyio.to_thread.run_sync(build, spec, state.settings.model_cache_dir)
    config = state.settings.speech_config()
    config = msgspec.structs.replace(
        config, max_batch_size=min(config.max_batch_size, backend.max_batch_size)
    )
    scheduler: ModelScheduler[SpeechItem, AudioArray] = BatchScheduler(
        name,
        backend.synthesize_batch,
        backend.batch_key,
        config,
        setup=backend.load,
        observer=state.metrics,
        work_of=_characters,
    )
    await scheduler.start()
    state.metrics.watch_queue(name, _depth_of(scheduler))
    logger.info("speech engine %s loaded (%s)", name, scheduler.config)
    return SpeechEngine(name, spec.backend, backend, scheduler)


def _audio_seconds(item: TranscriptionItem) -> float:
    """A window's work for ``Retry-After``: its audio seconds (a request declares its own)."""
    return len(item.audio) / SAMPLE_RATE


def _characters(item: SpeechItem) -> float:
    """A sentence's work for ``Retry-After``: its characters (a request declares its own)."""
    return len(item.text)


def _depth_of(scheduler: ModelScheduler[Any, Any]) -> Callable[[], float]:
    return lambda: scheduler.queue_depth


def create_app(settings: Settings) -> Litestar:
    """The app; its models load in the background once it starts serving.

    ``/health`` answers from the first moment; ``/ready`` turns 200 once every
    catalog model is loaded. A model that fails to load is logged, reported by
    ``/ready`` and the ``voxserve_model_state`` metric, and answers 503; the
    process stays up for the probes and the other models.
    """
    state = Runtime(settings=settings)
    if not state.keys:
        logger.warning(
            "no API keys configured: the API is open to anyone who can reach it "
            "(set VOXSERVE_API_KEYS or api_key_file)"
        )

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        loading = asyncio.create_task(load_models(state), name="load-models")
        try:
            yield
        finally:
            # Neither step waits for a model still loading or computing beyond a short
            # bound: that is native code which cannot be interrupted, and the drain's
            # deadline must hold (server.process).
            loading.cancel()
            await asyncio.wait({loading}, timeout=STOP_WAIT_SECONDS)
            await asyncio.gather(*(scheduler.stop() for scheduler in state.schedulers()))

    return Litestar(
        route_handlers=[*ROUTES, *DOCS_ROUTES, *PLAYGROUND_ROUTES],
        lifespan=[lifespan],
        state=State({"runtime": state}, deep_copy=False),
        middleware=MIDDLEWARE,
        exception_handlers=exception_handlers(),
        before_send=[report_ignored_fields],
        cors_config=_cors(settings),
        openapi_config=OPENAPI,
        request_max_body_size=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        logging_config=None,  # the process configures logging once (server.logs)
    )


OPENAPI = OpenAPIConfig(
    title="voxserve",
    version=version("voxserve"),
    description=(
        "OpenAI-compatible speech-to-text and text-to-speech. Every error is OpenAI's "
        'envelope, `{"error": {"message", "type", "param", "code"}}`, with '
        "the statuses each operation lists; an unexpected fault is a 500 in the same envelope. "
        "Realtime transcription is a WebSocket at `/v1/realtime?intent=transcription` "
        "(OpenAI's Realtime protocol), which OpenAPI cannot describe: see the README."
    ),
    components=Components(
        security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer")}
    ),
    security=[{"bearer": []}],
    render_plugins=[SwaggerPage()],
)
"""Served at ``/openapi.json`` and ``/schema/openapi.json``, with the interactive page at
``/docs`` and ``/schema`` (:mod:`server.routes.docs`); public by default (``public_paths``)."""


def _cors(settings: Settings) -> CORSConfig | None:
    """Off unless origins are configured; then the headers the API needs, and no cookies."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID", "Retry-After", IGNORED_FIELDS_HEADER],
        allow_credentials=False,
    )
