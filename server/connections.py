"""The connection layer under uvicorn: limits and timeouts that protect the server from
its clients before any request reaches the app (and so before the API key is checked).

uvicorn's httptools protocol sets no limit on a request's head (it builds the URL by
repeated concatenation, and httptools buffers a header of any size), never times out
a request that arrives slowly, and waits forever on a client that stops reading its
response. :class:`HardenedHttpToolsProtocol` is that protocol with:

- head limits: the request target is counted as it arrives (414 past
  ``max_request_line_bytes``) and the head is fed to the parser in slices that never
  exceed its budget (431 past ``max_header_bytes``), so an endless head costs no memory;
- a header timeout from the connect (or from a keep-alive request's first byte) to the
  end of the headers, and an idle timeout while a request body is incomplete (reset by
  every byte, and paused while the server itself has stopped reading);
- a send timeout: while writing is paused by flow control, a response of which nothing
  more goes out for that long (the client reads nothing) is aborted, so the app sees
  ``http.disconnect`` and frees its queue
  place;
- a cap on open connections below the open-file limit (raised to its hard limit at start):
  when full, the oldest connection still sending its head, or idle between requests, is
  closed for the new one, so a slowloris cannot starve ``/health`` of file descriptors.

Each closure is counted in ``voxserve_connections_closed_total{reason}`` and logged as one
WARNING line per reason at most every :data:`LOG_INTERVAL_SECONDS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import resource
import struct
import termios
import time
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import uvicorn
from litestar import Litestar
from prometheus_client import Counter
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from server.errors import ErrorBody, ErrorEnvelope
from server.metrics import Metrics
from server.settings import Settings

logger = logging.getLogger("voxserve.connections")

ABORT_EXTENSION: Final = "voxserve.abort"
"""The scope extension holding a callable that aborts the connection: how the app breaks
off a response it cannot finish (the drain's deadline) without uvicorn logging an error."""

REASONS: Final = (
    "header_timeout",
    "body_timeout",
    "send_timeout",
    "line_too_long",
    "headers_too_large",
    "shed",
)
"""The values of the ``reason`` label, all exported from the start (at 0)."""

LOG_INTERVAL_SECONDS = 10.0
"""At most one WARNING line per reason this often; the counter has every closure."""

LINGER_SECONDS = 2.0
"""After a 414/431 the server reads and discards what the client still sends for this
long (or :data:`LINGER_BYTES`), so that the client, which is most likely still sending,
gets to read the answer instead of a reset."""
LINGER_BYTES = 4 << 20

FD_RESERVE_FRACTION = 8
"""1/8 of the open-file limit (at least :data:`FD_RESERVE_MIN`) stays free of connections,
for model files, threads' pipes and the like."""
FD_RESERVE_MIN = 64

TIOCOUTQ: int | None = getattr(termios, "TIOCOUTQ", None)
"""On a TCP socket (Linux: ``SIOCOUTQ``): bytes in the send queue, not yet acknowledged."""


@dataclass(frozen=True)
class ConnectionLimits:
    max_request_line_bytes: int
    max_header_bytes: int
    header_timeout: float
    body_idle_timeout: float
    send_timeout: float
    max_connections: int
    """The effective cap: the setting, lowered to fit the open-file limit."""

    @classmethod
    def from_settings(cls, settings: Settings, open_files: int) -> ConnectionLimits:
        return cls(
            max_request_line_bytes=settings.max_request_line_bytes,
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout_seconds,
            body_idle_timeout=settings.body_idle_timeout_seconds,
            send_timeout=settings.send_timeout_seconds,
            max_connections=connection_cap(settings.max_connections, open_files),
        )


def raise_open_file_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (as Go's runtime does at start)
    and return the soft limit now in force.

    The soft limit is often 1024 for compatibility with ``select()``, which asyncio does
    not use; every connection holds a descriptor, so 1024 is a small ceiling for a server.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft if soft != resource.RLIM_INFINITY else target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        logger.info("could not raise the open-file limit from %d to %d", soft, target)
        return soft
    return target


def connection_cap(max_connections: int, open_files: int) -> int:
    """``max_connections``, lowered so that connections leave a reserve of descriptors."""
    reserve = max(FD_RESERVE_MIN, open_files // FD_RESERVE_FRACTION)
    return max(1, min(max_connections, open_files - reserve))


class Closures:
    """Counts the connections closed to protect the server, and logs them without flooding
    the log: under attack there may be thousands a second."""

    def __init__(self, counter: Counter | None) -> None:
        self._counter = counter
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        if counter is not None:
            for reason in REASONS:
                counter.labels(reason)

    def closed(self, reason: str, client: tuple[str, int] | None, detail: str) -> None:
        if self._counter is not None:
            self._counter.labels(reason).inc()
        count = self._unlogged.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, -LOG_INTERVAL_SECONDS) < LOG_INTERVAL_SECONDS:
            self._unlogged[reason] = count
            return
        self._unlogged[reason] = 0
        self._logged_at[reason] = now
        peer = f"{client[0]}:{client[1]}" if client else "?"
        logger.warning(
            "closed %d connection(s) (%s) since the last such line; latest from %s: %s",
            count,
            reason,
            peer,
            detail,
        )


class ConnectionTable:
    """The open connections in the order they were made, for the connection cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[HardenedHttpToolsProtocol, None] = {}

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, connection: HardenedHttpToolsProtocol) -> HardenedHttpToolsProtocol | None:
        """Add ``connection``; when full, return the connection to close to make room: the
        oldest one that is not serving a request, or else ``connection`` itself."""
        victim: HardenedHttpToolsProtocol | None = None
        if len(self._open) >= self.cap:
            victim = next((c for c in self._open if c.sheddable), connection)
            self._open.pop(victim, None)
        if victim is not connection:
            self._open[connection] = None
        return victim

    def discard(self, connection: HardenedHttpToolsProtocol) -> None:
        self._open.pop(connection, None)


@dataclass
class ConnectionGuard:
    """What the connections of one server share: the limits, the table and the counts."""

    limits: ConnectionLimits
    closures: Closures
    table: ConnectionTable = field(init=False)

    def __post_init__(self) -> None:
        self.table = ConnectionTable(self.limits.max_connections)


@dataclass(frozen=True)
class _Refusal:
    status: int
    reason: str
    code: str
    message: str


LINE_TOO_LONG = _Refusal(414, "line_too_long", "uri_too_long", "The request target is too long.")
HEADERS_TOO_LARGE = _Refusal(
    431, "headers_too_large", "headers_too_large", "The request's header fields are too large."
)


class HardenedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits, read and send timeouts, and the
    connection cap (see the module's docstring)."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        if not isinstance(config, HardenedConfig):
            raise TypeError("HardenedHttpToolsProtocol needs a HardenedConfig")
        self._guard = config.guard
        self._limits = config.guard.limits
        self._head_budget = self._limits.max_request_line_bytes + self._limits.max_header_bytes
        self._in_head = True  # reading a request's line and headers (or idle before one)
        self._head_bytes = 0
        self._url_bytes = 0
        self._refusal: _Refusal | None = None
        self._refused = False
        self._discarded = 0
        self._upgraded = False
        self._last_read = 0.0
        self._unsent = 0  # bytes waiting in the transport when the send timer was armed
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None

    @property
    def sheddable(self) -> bool:
        """Closing it loses no work: it is sending a head, idle, or already refused."""
        if self._refused:
            return True
        serving = self.cycle is not None and not self.cycle.response_complete
        return self._in_head and not serving and not self.pipeline

    # Connection events

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._last_read = self.loop.time()
        self._header_timer = self.loop.call_later(
            self._limits.header_timeout, self._header_timed_out
        )
        victim = self._guard.table.admit(self)
        if victim is not None:
            victim._close_for("shed", f"{len(self._guard.table)} connections open (the cap)")

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        self._guard.table.discard(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # The WebSocket protocol takes the transport over: none of this applies any more.
        self._cancel_timers()
        self._guard.table.discard(self)
        self._upgraded = True
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after a 414/431: discard
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.abort()
            return
        self._last_read = self.loop.time()
        offset = 0
        while offset < len(data):
            if self._in_head:
                # Never hand the parser more head than the budget: past it, 431.
                room = self._head_budget - self._head_bytes
                piece = data[offset : offset + room]
                self._head_bytes += len(piece)
            else:
                # A body, and perhaps the start of a pipelined head (at most one read).
                piece = data[offset:] if offset else data
            offset += len(piece)
            super().data_received(piece)
            if self._refusal is None and self._in_head and self._head_bytes >= self._head_budget:
                self._refusal = HEADERS_TOO_LARGE
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            if self._upgraded or self.parser is None or self.transport.is_closing():
                return

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = 0
        if self._header_timer is None:  # a keep-alive connection's next request
            self._header_timer = self.loop.call_later(
                self._limits.header_timeout, self._header_timed_out
            )

    def on_url(self, url: bytes) -> None:
        if self._refusal is not None:
            return
        self._url_bytes += len(url)
        if self._url_bytes > self._limits.max_request_line_bytes:
            self._refusal = LINE_TOO_LONG
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refusal is None:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refusal is not None:
            return  # never start the app on a refused head
        self._in_head = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        self._body_timer = self.loop.call_later(
            self._limits.body_idle_timeout, self._body_idle_check
        )
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[ABORT_EXTENSION] = self._abort_response
        super().on_headers_complete()

    def _abort_response(self) -> None:
        """Break the response under way off (``ABORT_EXTENSION``): the client sees a cut
        transfer, and uvicorn, told the client is gone, logs no error for the unfinished
        response."""
        if self.cycle is not None:
            self.cycle.disconnected = True
        self._cancel_timers()
        self._guard.table.discard(self)
        self.transport.abort()

    def on_body(self, body: bytes) -> None:
        if self._refusal is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refusal is not None:
            return
        self._in_head = True
        self._head_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # Flow control (called by the transport)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._unsent = self._unsent_bytes()
            self._send_timer = self.loop.call_later(self._limits.send_timeout, self._send_check)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    # Timeouts

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._in_head and not self._refused:
            received = f"{self._head_bytes} bytes of head"
            self._close_for("header_timeout", f"{received} in {self._limits.header_timeout:g} s")

    def _body_idle_check(self) -> None:
        self._body_timer = None
        if self._in_head or self._refused or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the app is not reading the body yet: not the client's fault
            self._last_read = now
        idle = now - self._last_read
        timeout = self._limits.body_idle_timeout
        if idle < timeout:
            self._body_timer = self.loop.call_later(timeout - idle, self._body_idle_check)
            return
        self._close_for("body_timeout", f"no body byte for {timeout:g} s")

    def _send_check(self) -> None:
        """Writing is still paused: cut the response off unless some of what waits to be
        sent went out since the last check (a slow reader is progress; one large write can
        take a slow reader many timeouts to drain below the low-water mark)."""
        self._send_timer = None
        if not self.flow.write_paused:
            return
        unsent = self._unsent_bytes()
        if unsent < self._unsent:
            self._unsent = unsent
            self._send_timer = self.loop.call_later(self._limits.send_timeout, self._send_check)
            return
        self._close_for("send_timeout", f"nothing read for {self._limits.send_timeout:g} s")

    def _unsent_bytes(self) -> int:
        """What waits in the transport and in the kernel's send queue (where Linux says:
        on loopback or a fast link the kernel queue grows to megabytes, and the socket only
        turns writable again once a third of it has drained, so the transport's own buffer
        alone would show no progress for a reader that keeps reading)."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None and TIOCOUTQ is not None:
            with contextlib.suppress(OSError, ValueError):
                queued = fcntl.ioctl(sock.fileno(), TIOCOUTQ, b"\0\0\0\0")
                unsent += int(struct.unpack("i", queued)[0])
        return unsent

    def _close_for(self, reason: str, detail: str) -> None:
        """Count, log and abort: nothing more will be read or written on this connection
        (aborting drops what is unsent, so a client that reads nothing cannot hold it)."""
        self._guard.closures.closed(reason, self.client, detail)
        self._cancel_timers()
        self._guard.table.discard(self)
        self.transport.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer, self._send_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = self._send_timer = self._linger_timer = None

    # Refusing an oversized head

    def _refuse(self, refusal: _Refusal) -> None:
        """Answer 414/431 in OpenAI's error envelope and close; the parser gets no more."""
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head while a response is going out: no room for an answer.
            self._close_for(refusal.reason, f"{refusal.status} while a response was in flight")
            return
        self._guard.closures.closed(refusal.reason, self.client, f"answered {refusal.status}")
        self._cancel_timers()
        self._refused = True
        body = msgspec.json.encode(
            ErrorEnvelope(ErrorBody(refusal.message, "invalid_request_error", None, refusal.code))
        )
        content = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            content += [name, b": ", value, b"\r\n"]
        content += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(content))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.abort)


class RefusingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, for which an HTTP answer to the handshake is complete.

    An app may refuse an upgrade with a real HTTP response (ASGI's
    ``websocket.http.response`` extension): the realtime route answers a bad key 401
    and a full server 429 in OpenAI's envelope, which clients can read, where a bare
    refusal is a 403 with no body. uvicorn sends that response but does not count it
    as the end of the handshake, and logs "ASGI callable returned without completing
    handshake" at ERROR for every refused client; here it counts.
    """

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
            self.handshake_complete = True


class HardenedConfig(uvicorn.Config):
    """A ``uvicorn.Config`` whose connections are :class:`HardenedHttpToolsProtocol`
    (and :class:`RefusingWebSocketProtocol` once upgraded), carrying what they share
    (one :class:`ConnectionGuard` per server)."""

    def __init__(self, app: Any, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(
            app, http=HardenedHttpToolsProtocol, ws=RefusingWebSocketProtocol, **kwargs
        )
        self.guard = guard


def uvicorn_config(app: Litestar, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration every voxserve server runs with (the CLI and the tests):
    the hardened protocol, with limits from ``settings`` and counts in the app's metrics.

    Raises the process's open-file limit (see :func:`raise_open_file_limit`) to size the
    connection cap. ``overrides`` are ``uvicorn.Config`` keyword arguments.
    """
    metrics: Metrics = app.state.runtime.metrics
    limits = ConnectionLimits.from_settings(settings, raise_open_file_limit())
    guard = ConnectionGuard(limits, Closures(metrics.connections_closed))
    return HardenedConfig(app, guard=guard, **overrides)
