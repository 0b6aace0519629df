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

from litestar.types import HTTPScope, Receive, Send

from server.errors import NotReady, Overloaded, send_error
from server.middleware.base import HttpMiddleware
from server.runtime import DRAIN_RETRY_AFTER, Runtime
from server.scheduler import ModelScheduler


class Admission(HttpMiddleware):
    skip_public_paths = True

    async def handle(
        self, scope: HTTPScope, receive: Receive, send: Send, runtime: Runtime
    ) -> None:
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
            full = _all_full(runtime.schedulers(queue))
            if full is not None:
                runtime.metrics.rejected("", "queue_full")
                await send_error(send, full)
                return
        await self.app(scope, receive, send)


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
