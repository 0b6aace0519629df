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
- At the end of a drain (``Runtime.cut``), a request admitted before it and still
  without a response (uploading, decoding, waiting for the model) is answered here
  with the same 503 ``draining``, ``Retry-After`` and ``Connection: close``: see
  :func:`serve_until_cut`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litestar.types import ASGIApp, HTTPScope, Message, Receive, Send

from server.connections import ABORT_EXTENSION
from server.errors import NotReady, Overloaded, send_error
from server.middleware.base import HttpMiddleware
from server.runtime import DRAIN_RETRY_AFTER, Runtime, cut_off_error
from server.scheduler import ModelScheduler

logger = logging.getLogger("voxserve.drain")

CUT_GRACE_SECONDS = 0.25
"""At the cut, how long a handler gets to wind up after it is told (cancelled, or its
queued work failed) before this middleware stops waiting for it."""


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
        await serve_until_cut(self.app, scope, receive, send, runtime)


async def serve_until_cut(
    app: ASGIApp, scope: HTTPScope, receive: Receive, send: Send, runtime: Runtime
) -> None:
    """Run the request's handler until it ends or the drain's deadline cuts it off.

    Without this, a request that is still uploading or decoding at the deadline is
    in no queue for ``Runtime.cut_off`` to fail: uvicorn cancels it at shutdown and
    answers a plain-text 500 without ``Retry-After``. So at the cut:

    - a handler whose response has not started is cancelled and the request is
      answered here, 503 ``draining`` with ``Retry-After`` and ``Connection: close``,
      like every other request the drain turns away; whatever the handler still
      sends is dropped;
    - a response already under way is left to end on its own (its queued work has
      just failed: an SSE stream sends its ``error`` event and ends, an audio
      stream breaks off) for :data:`CUT_GRACE_SECONDS`, then cancelled. Its end is
      logged once at WARNING, never as a traceback: shutting down is not a fault.

    Nothing is left running for uvicorn's shutdown to cancel into a 500.
    """
    started = False
    answered = False

    async def guarded_send(message: Message) -> None:
        nonlocal started
        if answered:
            return  # answered at the cut; the handler's late output goes nowhere
        if message["type"] == "http.response.start":
            started = True
        await send(message)

    handler = asyncio.ensure_future(app(scope, receive, guarded_send))
    handler.add_done_callback(_retrieve)
    cut = asyncio.ensure_future(runtime.cut.wait())
    try:
        await asyncio.wait({handler, cut}, return_when=asyncio.FIRST_COMPLETED)
        if handler.done():
            handler.result()  # its own outcome, exceptions included, as without a drain
            return
        if not started:
            answered = True
            handler.cancel()
            await send_error(send, cut_off_error(), {"Connection": "close"})
            await asyncio.wait({handler}, timeout=CUT_GRACE_SECONDS)
            return
        await asyncio.wait({handler}, timeout=CUT_GRACE_SECONDS)
        if not handler.done():
            handler.cancel()
            await asyncio.wait({handler}, timeout=CUT_GRACE_SECONDS)
        if handler.done() and not handler.cancelled() and handler.exception() is None:
            return  # it ended by itself, its error (if any) said in the stream
        abort = (scope.get("extensions") or {}).get(ABORT_EXTENSION)
        if callable(abort):  # a cut transfer, not a short body that looks whole
            abort()
        logger.warning(
            "drain deadline: a response under way was broken off (%s %s)",
            scope["method"],
            scope["path"],
        )
    finally:
        cut.cancel()
        if not handler.done():
            handler.cancel()


def _retrieve(task: asyncio.Future[None]) -> None:
    """Mark a handler's exception as seen: one left behind at the cut is no error."""
    if not task.cancelled():
        task.exception()


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
