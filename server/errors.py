"""Every error voxserve answers with, and its one mapping to OpenAI's error envelope.

The tree::

    VoxserveError                 status  type
    ├── InvalidRequest             400    invalid_request_error
    │   ├── InvalidAudio           400    invalid_request_error  (param "file")
    │   └── WrongEndpoint          400    invalid_request_error  (param "model")
    ├── Unauthorized               401    invalid_request_error
    ├── ModelNotFound              404    invalid_request_error  (param "model")
    ├── PayloadTooLarge            413    invalid_request_error
    ├── Overloaded                 429    server_error           (+ Retry-After)
    ├── NotReady                   503    server_error           (+ Retry-After)
    └── InternalError              500    server_error

Routes raise these; the handlers in :func:`exception_handlers` turn them, the
framework's own HTTP errors, and anything unexpected into
``{"error": {"message", "type", "param", "code"}}`` with the right status.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import Send

from server.protocol import sse_event

logger = logging.getLogger("voxserve.errors")


class ErrorBody(msgspec.Struct):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody


class VoxserveError(Exception):
    status_code = 500
    error_type = "server_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.retry_after = retry_after

    def envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(ErrorBody(self.message, self.error_type, self.param, self.code))

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class InvalidRequest(VoxserveError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidAudio(InvalidRequest):
    def __init__(self, message: str) -> None:
        super().__init__(message, param="file")


ENDPOINTS: dict[str, str] = {
    "transcription": "/v1/audio/transcriptions (or /v1/audio/translations)",
    "speech": "/v1/audio/speech",
}
"""Where each kind of model is sent, as :class:`WrongEndpoint` names it."""


class WrongEndpoint(InvalidRequest):
    """A model that exists, sent to a route for the other kind of model.

    A 404 would say the model "does not exist" while ``/v1/models`` lists it; the
    client's mistake is the route, so the message names the one that takes it.
    """

    def __init__(self, model: str, kind: Literal["transcription", "speech"]) -> None:
        what = "speech-to-text" if kind == "transcription" else "text-to-speech"
        super().__init__(
            f"Model '{model}' is a {what} model; send it to {ENDPOINTS[kind]}.",
            param="model",
        )


class Unauthorized(VoxserveError):
    status_code = 401
    error_type = "invalid_request_error"


class ModelNotFound(VoxserveError):
    status_code = 404
    error_type = "invalid_request_error"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model '{model}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )


class PayloadTooLarge(VoxserveError):
    status_code = 413
    error_type = "invalid_request_error"


class Overloaded(VoxserveError):
    status_code = 429
    error_type = "server_error"


class NotReady(VoxserveError):
    status_code = 503
    error_type = "server_error"


class InternalError(VoxserveError):
    status_code = 500


def error_response(
    error: VoxserveError, status_code: int | None = None, headers: dict[str, str] | None = None
) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(error.envelope()),
        status_code=status_code or error.status_code,
        media_type="application/json",
        headers={**(headers or {}), **error.headers()},
    )


async def send_error(
    send: Send, error: VoxserveError, headers: dict[str, str] | None = None
) -> None:
    """Answer with ``error`` straight from ASGI middleware, before any handler runs.

    Middleware answers rather than raises, so that the middleware around it (the
    request id, the access log, the request metrics) sees the response go out.
    """
    body = msgspec.json.encode(error.envelope())
    all_headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        **(headers or {}),
        **error.headers(),
    }
    await send(
        {
            "type": "http.response.start",
            "status": error.status_code,
            "headers": [(k.lower().encode(), v.encode()) for k, v in all_headers.items()],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _from_voxserve(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, VoxserveError)
    return error_response(exc)


def _from_validation(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, ValidationException)
    return error_response(InvalidRequest(str(exc.detail)))


_HTTP_ERRORS: dict[int, type[VoxserveError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    413: PayloadTooLarge,
    429: Overloaded,
    503: NotReady,
}


def _from_http(_: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The framework's own errors (unknown route, wrong method, body too large)."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 413:
        error: VoxserveError = PayloadTooLarge("The request body is too large.")
    elif status in _HTTP_ERRORS:
        error = _HTTP_ERRORS[status](str(exc.detail))
    else:  # 404 for an unknown route, 405 for a wrong method
        error = InvalidRequest(str(exc.detail)) if status < 500 else InternalError(str(exc.detail))
    return error_response(error, status_code=status, headers=exc.headers)


def _from_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(InternalError("The server had an error processing your request."))


Handler = Callable[[Request[Any, Any, Any], Any], Response[Any]]


def exception_handlers() -> MutableMapping[int | type[Exception], Handler]:
    return {
        VoxserveError: _from_voxserve,
        ValidationException: _from_validation,
        HTTPException: _from_http,
        Exception: _from_unexpected,
    }


def sse_error(error: VoxserveError) -> bytes:
    """An ``error`` event for a stream whose status line is already sent."""
    return sse_event({"type": "error", **msgspec.to_builtins(error.envelope())})
