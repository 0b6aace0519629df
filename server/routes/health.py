"""Probes and metrics: ``/health`` (alive), ``/ready`` (models loaded, not draining),
``/metrics``. All three are public by default (``public_paths``), and the schema
says so (``security=[{}]``: no key needed)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from server import openapi
from server.errors import NotReady
from server.runtime import LOADING_RETRY_AFTER, runtime


@get("/health", security=[{}], operation_class=openapi.HEALTH)
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", security=[{}], operation_class=openapi.READY)
async def ready(request: Request[Any, Any, Any]) -> dict[str, str]:
    state = runtime(request)
    if not state.ready:
        raise NotReady(state.not_ready_reason(), code="not_ready", retry_after=LOADING_RETRY_AFTER)
    return {"status": "ready"}


@get("/metrics", security=[{}], operation_class=openapi.METRICS)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    # CONTENT_TYPE_LATEST carries its charset: set it as is, not as a media type.
    headers = {"Content-Type": CONTENT_TYPE_LATEST}
    return Response(runtime(request).metrics.exposition(), headers=headers)
