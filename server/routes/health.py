"""Probes and metrics: ``/health`` (alive), ``/ready`` (models loaded), ``/metrics``."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST

from server.errors import NotReady
from server.runtime import runtime


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready")
async def ready(request: Request[Any, Any, Any]) -> dict[str, str]:
    if not runtime(request).ready:
        raise NotReady("The server is not ready.", retry_after=5)
    return {"status": "ready"}


@get("/metrics")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(runtime(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
