"""Logging for the process: one line per record, as text or as JSON, each with its request id.

The request id lives in a context variable set by the request-context middleware,
so every record logged while a request is served (by any module, in the event
loop's task) carries it without being passed around. Worker threads started by
``asyncio.to_thread`` copy the context, so their records carry it too.

What is logged at INFO and above never holds a transcript or an input text: the
access line has the method, route, status and timings, and the modules log
counts, durations and identifiers only.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any, Literal

REQUEST_ID: ContextVar[str | None] = ContextVar("voxserve_request_id", default=None)

EXTRA_FIELDS = (
    "method",
    "path",
    "route",
    "status",
    "duration_ms",
    "client",
)
"""Attributes passed with ``extra=`` that the JSON lines carry as fields."""


class RequestIdFilter(logging.Filter):
    """Stamps each record with the id of the request being served (or ``-``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        for name in EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Route every logger, uvicorn's included, through one handler on stderr.

    uvicorn's own access log is turned off: the request-context middleware writes
    one access line per request, with the request id and the route template.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
