"""What every voxserve middleware shares: HTTP only, the app's runtime at hand."""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send

from server.runtime import Runtime


class HttpMiddleware:
    """Passes non-HTTP scopes through and calls :meth:`handle` with the runtime.

    With ``skip_public_paths``, requests to ``public_paths`` (the probes, the metrics
    scrape, the API docs) and below them pass through as well.
    """

    skip_public_paths = False

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        runtime: Runtime = scope["litestar_app"].state.runtime
        if self.skip_public_paths and runtime.settings.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send, runtime)

    async def handle(
        self, scope: HTTPScope, receive: Receive, send: Send, runtime: Runtime
    ) -> None:
        raise NotImplementedError
