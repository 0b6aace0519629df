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
import re
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

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""C0 and C1 control characters, and the Unicode line and paragraph separators."""
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``).

    What a client sends ends up in log messages (a path, a header, a model name);
    a percent-encoded line break in a path (``/v1/models/x%0Afake-line``) would
    otherwise start a forged line, and terminal escapes would reach whoever reads
    the log.
    """
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match[0]
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


class TextFormatter(logging.Formatter):
    """:data:`TEXT_FORMAT`, one record per line whatever its message and arguments hold.

    The message (after its arguments are merged in), the logger name and the
    request id have their control characters escaped; a traceback, the only
    text that legitimately spans lines, is indented, so that no line of it can
    pass for the start of a record. (JSON lines need none of this: ``json.dumps``
    escapes control characters in every field.)
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        safe = logging.makeLogRecord(record.__dict__)
        safe.message = escape_controls(record.message)
        safe.name = escape_controls(record.name)
        safe.request_id = escape_controls(str(getattr(record, "request_id", "-")))
        lines = [self.formatMessage(safe)]
        if record.exc_info:  # formatted here, not cached: another handler's text may differ
            lines.append(_indented(self.formatException(record.exc_info)))
        elif record.exc_text:
            lines.append(_indented(record.exc_text))
        if record.stack_info:
            lines.append(_indented(self.formatStack(record.stack_info)))
        return "\n".join(lines)


def _indented(text: str) -> str:
    return "\n".join("    " + escape_controls(line) for line in text.splitlines())


def configure_logging(level: str, fmt: Literal["text", "json"]) -> None:
    """Route every logger, uvicorn's included, through one handler on stderr.

    uvicorn's own access log is turned off: the request-context middleware writes
    one access line per request, with the request id and the route template.
    """
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
