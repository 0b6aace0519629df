"""What the running app holds: its settings, metrics and one service per loaded model.

Routes reach it through :func:`runtime`, never through module globals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from litestar import Request

from server.errors import ModelNotFound
from server.metrics import Metrics
from server.scheduler import ModelScheduler
from server.settings import Settings
from server.speech import SpeechService
from server.transcription import TranscriptionService


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    transcription: dict[str, TranscriptionService] = field(default_factory=dict)
    speech: SpeechService = field(default_factory=SpeechService)
    started_at: int = field(default_factory=lambda: int(time.time()))

    def transcriber(self, model: str) -> TranscriptionService:
        try:
            return self.transcription[model]
        except KeyError:
            raise ModelNotFound(model) from None

    @property
    def ready(self) -> bool:
        schedulers: list[ModelScheduler[Any, Any]] = [
            service.scheduler for service in self.transcription.values()
        ]
        schedulers += [engine.scheduler for engine in self.speech.engines]
        return (
            len(self.transcription) == len(self.settings.models)
            and len(self.speech.voices) == len(self.settings.speech_models)
            and all(scheduler.running for scheduler in schedulers)
        )


def runtime(request: Request[Any, Any, Any]) -> Runtime:
    state_runtime: Runtime = request.app.state.runtime
    return state_runtime
