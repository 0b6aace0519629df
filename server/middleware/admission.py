"""Refuse work the server will not do, before the request's body is read.

- While draining for shutdown, every non-public request gets 503 with
  ``Retry-After`` and ``Connection: close``, so the client retries on another
  replica instead of queueing behind a process about to exit.
- A route that queues work declares which models' queues it uses (its handler's
  ``opt["queue"]``: ``"transcription"`` or ``"speech"``). When every one of
  those queues is at ``max_queue_size``, the request gets 429 with the shortest
  ``Retry-After`` among them, before a byte of its upload is read: the model is
  named inside the body, so this is as exact as it can be this early, and exact
  when one model serves the route (the default). The model's own admission,
  once the form is parsed and before the file is decoded, is always exact.
"""

from __future__ import annotations

from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from server.errors import NotReady, Overloaded, send_error
from server.runtime import Runtime
from server.scheduler import ModelScheduler

DRAIN_RETRY_AFTER = 1.0


class Admission:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["litestar_app"].state.runtime
        if scope["type"] != ScopeType.HTTP or scope["path"] in runtime.settings.public_paths:
            await self.app(scope, receive, send)
            return
        if runtime.draining:
            runtime.metrics.rejected("", "draining")
            error = NotReady(
                "The server is shutting down; retry the request.",
                code="draining",
                retry_after=DRAIN_RETRY_AFTER,
            )
            await send_error(send, error, {"Connection": "close"})
            return
        queue = scope["route_handler"].opt.get("queue")
        if queue is not None:
            full = _all_full(_queues(runtime, queue))
            if full is not None:
                runtime.metrics.rejected("", "queue_full")
                await send_error(send, full)
                return
        await self.app(scope, receive, send)


def _queues(runtime: Runtime, queue: str) -> list[ModelScheduler[Any, Any]]:
    if queue == "transcription":
        return [service.scheduler for service in runtime.transcription.values()]
    if queue == "speech":
        return [engine.scheduler for engine in runtime.speech.engines]
    raise ValueError(f"unknown queue kind {queue!r}")


def _all_full(schedulers: list[ModelScheduler[Any, Any]]) -> Overloaded | None:
    """429 when every scheduler is running and full; ``None`` when any could take more.

    Schedulers not running (models loading or failed) are left to the route, which
    answers 503 for the model the request names.
    """
    running = [s for s in schedulers if s.running]
    if not running or any(s.admitted < s.config.max_queue_size for s in running):
        return None
    return Overloaded(
        "Every model for this route is at capacity; retry later.",
        code="queue_full",
        retry_after=min(s.estimated_wait() for s in running),
    )
