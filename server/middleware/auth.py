"""401 in OpenAI's envelope for a request without a valid key, unless its path is public.

It wraps every route the app has (middleware is app-wide), so a route added later is
guarded without anyone remembering to guard it; only ``public_paths`` and the paths
below them are open: by default the probes, the metrics scrape, and the API docs
(``/docs``, ``/openapi.json``, ``/schema``), because a browser opening a page sends no
``Authorization`` header and the document holds no secret (the interactive page
sends the key for "Try it out" once it is given under "Authorize"). A CORS preflight
never reaches it: the CORS middleware answers those before routing.
"""

from __future__ import annotations

from litestar.types import HTTPScope, Receive, Send

from server.auth import bearer_token
from server.errors import Unauthorized, send_error
from server.middleware.base import HttpMiddleware
from server.runtime import Runtime

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG_KEY = "Incorrect API key provided."


class ApiKeyGuard(HttpMiddleware):
    skip_public_paths = True

    async def handle(
        self, scope: HTTPScope, receive: Receive, send: Send, runtime: Runtime
    ) -> None:
        keys = runtime.keys
        if not keys:  # open API (warned at start)
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        token = bearer_token(header)
        if token is not None and keys.allows(token):
            await self.app(scope, receive, send)
            return
        error = (
            Unauthorized(MISSING_KEY)
            if token is None
            else Unauthorized(WRONG_KEY, code="invalid_api_key")
        )
        runtime.metrics.rejected("", "unauthorized")
        await send_error(send, error, {"WWW-Authenticate": "Bearer"})
