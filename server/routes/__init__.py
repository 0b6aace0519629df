"""HTTP routes: thin handlers that validate, call a service, and render."""

from server.routes.health import health, metrics, ready
from server.routes.models import get_model, list_models, list_speech_models
from server.routes.realtime import realtime
from server.routes.speech import create_speech, list_voices
from server.routes.transcriptions import create_transcription
from server.routes.translations import create_translation

ROUTES = [
    create_transcription,
    create_translation,
    create_speech,
    realtime,
    list_voices,
    list_models,
    list_speech_models,
    get_model,
    health,
    ready,
    metrics,
]
