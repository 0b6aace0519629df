"""What the running app holds: its settings, metrics, the state of every model, and one
service per loaded model.

Routes reach it through :func:`runtime`, never through module globals. Models load
in the background after start-up (``/health`` answers at once, ``/ready`` once all
are loaded); a model that fails to load is recorded as failed, its requests get 503
and the rest of the server carries on.
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any

import anyio
from litestar import Request

from server.auth import KeyRing, read_key_file
from server.catalog import CatalogName, Kind, catalog_names
from server.errors import ModelNotFound, NotReady, WrongEndpoint
from server.metrics import Metrics
from server.scheduler import ModelScheduler
from server.settings import Settings, SettingsError
from server.speech import SpeechService, Voice
from server.transcription import TranscriptionService

LOADING_RETRY_AFTER = 5.0
"""Retry-After for a model still loading, and for a server that is not ready."""
DRAIN_RETRY_AFTER = 1.0
"""Retry-After while draining: another replica can take the request now."""


def cut_off_error() -> NotReady:
    """What a request still in flight at the end of a drain is answered: a retryable 503."""
    return NotReady(
        "The server is shutting down and could not finish this request; retry it.",
        code="draining",
        retry_after=DRAIN_RETRY_AFTER,
    )


class ModelState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"  # why is logged at load time, not served to unauthenticated probes


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    transcription: dict[str, TranscriptionService] = field(default_factory=dict)
    speech: SpeechService = field(default_factory=SpeechService)
    models: dict[str, ModelState] = field(default_factory=dict)
    """Every catalog model id (transcription and speech) and how its loading went."""
    started_at: int = field(default_factory=lambda: int(time.time()))
    draining: bool = False
    drain: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a drain begins (:meth:`begin_drain`): realtime sessions then wind down."""
    realtime_sessions: int = 0
    """Realtime transcription sessions open (``realtime_max_sessions`` bounds them)."""
    in_flight: int = 0
    """API requests (not probes) being served; a drain waits for this to reach 0."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever ``in_flight`` is 0."""
    cut: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the end of a drain (:meth:`cut_off`): every request still in flight whose
    response has not started is answered 503 ``draining`` at once (the admission
    middleware races each handler against this event)."""
    decodes: anyio.CapacityLimiter = field(init=False)
    """At most ``max_concurrent_decodes`` uploads are decoded at once, server-wide."""
    keys: KeyRing = field(init=False)
    names: dict[str, CatalogName] = field(init=False)
    """Every name a client may send (ids and aliases) and the model it means."""

    def __post_init__(self) -> None:
        self.names = catalog_names(self.settings.models, self.settings.speech_models)
        self.decodes = anyio.CapacityLimiter(self.settings.max_concurrent_decodes)
        self.metrics.in_flight.set_function(lambda: self.in_flight)
        self.metrics.realtime_sessions.set_function(lambda: self.realtime_sessions)
        self.metrics.watch_decodes(
            lambda: self.decodes.borrowed_tokens,
            lambda: self.decodes.statistics().tasks_waiting,
        )
        self.keys = KeyRing(_api_keys(self.settings))
        self.speech.observer = self.metrics
        self.idle.set()
        ids = [m.id for m in self.settings.models] + [m.id for m in self.settings.speech_models]
        for model_id in ids:
            self.set_state(model_id, ModelState.LOADING)

    def request_started(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def begin_drain(self) -> None:
        """Refuse new work from now on (503) and tell the open sessions to wind down."""
        self.draining = True
        self.drain.set()

    def request_finished(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()

    # -- model states --------------------------------------------------------------

    def set_state(self, model_id: str, state: ModelState) -> None:
        self.models[model_id] = state
        self.metrics.model_state(model_id, state.value)

    def _require(self, model_id: str) -> None:
        """404 for a model not in the catalog; 503 for one loading or failed."""
        state = self.models.get(model_id)
        if state is None:
            raise ModelNotFound(model_id)
        if state is ModelState.LOADING:
            raise NotReady(
                f"Model '{model_id}' is still loading; retry shortly.",
                code="model_loading",
                retry_after=LOADING_RETRY_AFTER,
            )
        if state is ModelState.FAILED:
            raise NotReady(
                f"Model '{model_id}' failed to load and is unavailable on this server.",
                code="model_unavailable",
            )

    def cut_off(self) -> int:
        """End of a drain: fail all queued work with a retryable 503 and set :attr:`cut`,
        so that requests not in a queue (uploading, decoding) are answered too; returns
        the queued items failed."""
        items = sum(scheduler.fail_pending(cut_off_error()) for scheduler in self.schedulers())
        self.cut.set()
        return items

    # -- what routes ask for -------------------------------------------------------

    def resolve(self, model: str, kind: Kind) -> str:
        """The catalog id ``model`` names (an id or an alias): 404 for a name not in
        the catalog, 400 naming the right route for a model of the other kind."""
        name = self.names.get(model)
        if name is None:
            raise ModelNotFound(model)
        if name.kind != kind:
            raise WrongEndpoint(model, name.kind)
        return name.id

    def transcriber(self, model: str) -> TranscriptionService:
        model_id = self.resolve(model, "transcription")
        self._require(model_id)
        return self.transcription[model_id]

    def voice(self, model: str, name: str) -> Voice:
        model_id = self.resolve(model, "speech")
        self._require(model_id)
        return self.speech.voice(model_id, name)

    def schedulers(self, kind: str | None = None) -> list[ModelScheduler[Any, Any]]:
        """Every running model's scheduler, or those of one kind (a route's ``queue``):
        ``"transcription"`` or ``"speech"``."""
        if kind not in (None, "transcription", "speech"):
            raise ValueError(f"unknown queue kind {kind!r}")
        schedulers: list[ModelScheduler[Any, Any]] = []
        if kind in (None, "transcription"):
            schedulers += [service.scheduler for service in self.transcription.values()]
        if kind in (None, "speech"):
            schedulers += [engine.scheduler for engine in self.speech.engines]
        return schedulers

    @property
    def ready(self) -> bool:
        return (
            not self.draining
            and all(state is ModelState.READY for state in self.models.values())
            and all(scheduler.running for scheduler in self.schedulers())
        )

    def not_ready_reason(self) -> str:
        if self.draining:
            return "The server is draining for shutdown."
        pending = [
            f"{model_id} {state.value}"
            for model_id, state in self.models.items()
            if state is not ModelState.READY
        ]
        if pending:
            return "Not every model is loaded: " + ", ".join(pending) + "."
        return "A model's scheduler has stopped."


def _api_keys(settings: Settings) -> list[str]:
    keys = list(settings.api_keys)
    if settings.api_key_file:
        try:
            keys += read_key_file(settings.api_key_file)
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read api_key_file: {exc}") from exc
    return keys


def runtime(request: Request[Any, Any, Any]) -> Runtime:
    state_runtime: Runtime = request.app.state.runtime
    return state_runtime
