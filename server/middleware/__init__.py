"""The ASGI middleware every matched route passes through, outermost first.

- :class:`RequestContext`: the request id, the access log line, request metrics;
- :class:`ApiKeyGuard`: 401 without a valid key, except on the public paths;
- :class:`Admission`: 503 while draining, 429 before the body is read when every
  model a route could use is at capacity;
- :class:`CancelOnDisconnect`: a client that goes away before its response starts
  cancels its handler, which withdraws its queued work.

Litestar runs middleware only for requests that matched a route; an unknown path
or method gets its 404 or 405 from the router without them.
"""

from litestar.types import Middleware

from server.middleware.admission import Admission
from server.middleware.auth import ApiKeyGuard
from server.middleware.context import RequestContext
from server.middleware.disconnect import CancelOnDisconnect

MIDDLEWARE: list[Middleware] = [RequestContext, ApiKeyGuard, Admission, CancelOnDisconnect]

__all__ = ["MIDDLEWARE", "Admission", "ApiKeyGuard", "CancelOnDisconnect", "RequestContext"]
