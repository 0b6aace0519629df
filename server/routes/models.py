"""``GET /v1/models`` and ``GET /v1/models/{id}``, in OpenAI's shape, and
``GET /v1/audio/models``, the speech models alone, in the shape Open WebUI reads.

Aliases are listed as models of their own: OpenAI lists every model by its id, and
clients that check the list before using a name (``gpt-4o-mini-tts``) look for it
there, not for a field of another model.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from server import openapi
from server.catalog import Kind
from server.errors import ModelNotFound
from server.protocol import ModelId, ModelList, ModelObject, SpeechModelList
from server.runtime import Runtime, runtime


def _models(state: Runtime, kind: Kind | None = None) -> list[ModelObject]:
    return [
        ModelObject(id=name, created=state.started_at)
        for name, entry in state.names.items()
        if kind is None or entry.kind == kind
    ]


@get("/v1/models", operation_class=openapi.MODELS)
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = ModelList(data=_models(runtime(request)))
    return Response(msgspec.json.encode(body), media_type="application/json")


@get("/v1/models/{model_id:path}", operation_class=openapi.MODEL)
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
    model_id = model_id.lstrip("/")  # ids may hold slashes, as hub ids do
    for model in _models(runtime(request)):
        if model.id == model_id:
            return Response(msgspec.json.encode(model), media_type="application/json")
    raise ModelNotFound(model_id)


@get("/v1/audio/models", operation_class=openapi.SPEECH_MODELS)
async def list_speech_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Open WebUI asks a non-OpenAI base URL for ``{base}/audio/models`` to fill its
    text-to-speech model menu, and reads ``models``; aliases are names it may pick."""
    speech = _models(runtime(request), "speech")
    body = SpeechModelList(models=[ModelId(id=m.id) for m in speech], data=speech)
    return Response(msgspec.json.encode(body), media_type="application/json")
