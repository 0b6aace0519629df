"""Per request: take or make its id, echo it, time it, log one access line, count it.

The id comes from the client's ``X-Request-ID`` when that is a sane token (a
gateway's trace id passes through), otherwise a new one is made; either way it is
echoed in the response's ``X-Request-ID`` and stamped on every log record of the
request (``server.logs.REQUEST_ID``). The access line is at INFO and carries the
method, the route template, the status and the time taken: never a body.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from litestar.types import HTTPScope, Message, Receive, Scope, Send

from server.logs import REQUEST_ID
from server.middleware.base import HttpMiddleware
from server.runtime import Runtime

logger = logging.getLogger("voxserve.access")

REQUEST_ID_HEADER = b"x-request-id"
VALID_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/+=-]{1,128}$")

CLIENT_CLOSED = 499
"""The status counted and logged for a request whose client left before its answer
(nginx's convention); nothing is sent."""


def request_id_of(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and VALID_REQUEST_ID.match(value):
            return value.decode()
    return uuid.uuid4().hex


class RequestContext(HttpMiddleware):
    async def handle(
        self, scope: HTTPScope, receive: Receive, send: Send, runtime: Runtime
    ) -> None:
        method = scope["method"]
        request_id = request_id_of(scope)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = CLIENT_CLOSED
        counted = not runtime.settings.is_public(scope["path"])
        if counted:
            runtime.request_started()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if counted:
                runtime.request_finished()
            route = scope.get("path_template") or scope["path"]
            runtime.metrics.request_done(route, method, status, seconds)
            _log_access(scope, method, route, status, seconds, quiet=not counted)
            REQUEST_ID.reset(token)


def _log_access(
    scope: Scope, method: str, route: str, status: int, seconds: float, *, quiet: bool
) -> None:
    """One line per request; at DEBUG for the public paths (probes, scrapes)."""
    client = scope.get("client")
    fields: dict[str, Any] = {
        "method": method,
        "path": scope["path"],
        "route": route,
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "client": f"{client[0]}:{client[1]}" if client else None,
    }
    logger.log(
        logging.DEBUG if quiet else logging.INFO,
        "%s %s %d %.1f ms",
        method,
        scope["path"],
        status,
        seconds * 1000,
        extra=fields,
    )
