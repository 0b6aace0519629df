"""HTTP routes: thin handlers that validate, call a service, and render."""

from server.routes.health import health, metrics, ready
from server.routes.models import get_model, list_models
from server.routes.transcriptions import create_transcription

ROUTES = [create_transcription, list_models, get_model, health, ready, metrics]
