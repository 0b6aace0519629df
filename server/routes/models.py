"""``GET /v1/models`` and ``GET /v1/models/{id}``, in OpenAI's shape."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.params import FromPath

from server.errors import ModelNotFound
from server.protocol import ModelList, ModelObject
from server.runtime import Runtime, runtime


def _models(state: Runtime) -> list[ModelObject]:
    ids = [m.id for m in state.settings.models] + [m.id for m in state.settings.speech_models]
    return [ModelObject(id=model_id, created=state.started_at) for model_id in ids]


@get("/v1/models")
async def list_models(request: Request[Any, Any, Any]) -> Response[bytes]:
    body = ModelList(data=_models(runtime(request)))
    return Response(msgspec.json.encode(body), media_type="application/json")


@get("/v1/models/{model_id:path}")
async def get_model(request: Request[Any, Any, Any], model_id: FromPath[str]) -> Response[bytes]:
    model_id = model_id.lstrip("/")  # ids may hold slashes, as hub ids do
    for model in _models(runtime(request)):
        if model.id == model_id:
            return Response(msgspec.json.encode(model), media_type="application/json")
    raise ModelNotFound(model_id)
