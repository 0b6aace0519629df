"""401 in OpenAI's envelope for a request without a valid key, unless its path is public.

It wraps every route the app has (middleware is app-wide), so a route added later is
guarded without anyone remembering to guard it; only ``public_paths`` (the probes
and the metrics scrape by default) are open. A CORS preflight never reaches it: the
CORS middleware answers those before routing.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from server.auth import bearer_token
from server.errors import Unauthorized, send_error
from server.runtime import Runtime

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG_KEY = "Incorrect API key provided."


class ApiKeyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime: Runtime = scope["litestar_app"].state.runtime
        keys = runtime.keys
        if (
            scope["type"] != ScopeType.HTTP
            or not keys
            or scope["path"] in runtime.settings.public_paths
        ):
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
