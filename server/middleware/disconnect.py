"""Cancel a request's handler when its client goes away before the response starts.

Litestar, like most ASGI frameworks, runs a handler to the end even when the
client has hung up: a transcription would sit in the queue, be computed and be
thrown away. Here, once the request's body has been read, the next ``receive``
can only be ``http.disconnect``; a watcher awaits it and cancels the handler's
task, whose ``finally`` blocks withdraw its queued items (never computed) and
give back its queue place.

Once the response has started, this middleware steps aside: a streaming response
(speech, ``stream=true``) watches for the disconnect itself and closes its
generator, which withdraws the rest of its work the same way.

A client that hangs up while its body is still arriving makes the body's reader
fail (Litestar raises a 500 "client disconnected prematurely"). Nobody is left to
receive that answer, and it is the client's doing, not a server fault: once the
disconnect is seen, nothing more is sent, so the request is counted and logged
as a 499 (``RequestContext``) and 5xx alerting stays quiet.
"""

from __future__ import annotations

import asyncio

from litestar.types import HTTPScope, Message, Receive, ReceiveMessage, Send

from server.middleware.base import HttpMiddleware
from server.runtime import Runtime


class CancelOnDisconnect(HttpMiddleware):
    async def handle(
        self, scope: HTTPScope, receive: Receive, send: Send, runtime: Runtime
    ) -> None:
        body_read = asyncio.Event()
        disconnected = asyncio.Event()
        started = False

        async def tracking_receive() -> ReceiveMessage:
            if body_read.is_set():  # the watcher owns the channel now
                await disconnected.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if disconnected.is_set() and not started:
                return  # nobody to answer: the request stays a 499, not the handler's error
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        handler = asyncio.ensure_future(self.app(scope, tracking_receive, tracking_send))
        watcher = asyncio.ensure_future(_watch(receive, body_read, disconnected))
        gone = asyncio.ensure_future(disconnected.wait())
        cancelled_here = False
        try:
            await asyncio.wait({handler, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not handler.done() and not started:
                handler.cancel()
                cancelled_here = True
            await handler
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not cancelled_here or (current is not None and current.cancelling()):
                raise  # the server is cancelling us, not the client's departure
        finally:
            for task in (watcher, gone, handler):
                task.cancel()


async def _watch(receive: Receive, body_read: asyncio.Event, disconnected: asyncio.Event) -> None:
    """After the body, the only message left is the disconnect: wait for it."""
    await body_read.wait()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            disconnected.set()
            return
