"""``GET /v1/realtime`` (WebSocket): realtime transcription sessions, OpenAI's protocol.

The handshake is checked before the upgrade and refused with a real HTTP answer in
OpenAI's envelope, which an SDK or ``curl`` can read: 401 without a valid key (the
``Authorization`` header, or the ``openai-insecure-api-key.<key>`` subprotocol that
browsers use since they cannot set headers), 400 for an ``intent`` other than
``transcription``, 429 when ``realtime_max_sessions`` are open, 503 while draining.

Once open, one task reads client events and hands each to the
:class:`~server.realtime.session.TranscriptionSession`, which queues server events
for one writer task (so events go out in the order they were made, and a client
that reads slowly holds up only its own writer). The session ends when the client
closes, when it has been silent ``realtime_idle_seconds``, when it has lasted
``realtime_max_session_seconds``, or at a drain: then speech in progress is
committed, the utterances in flight are answered, an ``error`` event says why, and
the socket closes (1000; 1012 "service restart" for the drain). A client that simply
goes away has its queued utterances withdrawn.

An open session counts as a request in flight, so a drain waits for it to wind down.
The HTTP middleware does not see WebSocket traffic; this route logs its own access
line, at the end of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import msgspec
from litestar import WebSocket, websocket

from server.auth import bearer_token
from server.errors import InvalidRequest, NotReady, Overloaded, Unauthorized, VoxserveError
from server.middleware.auth import MISSING_KEY, WRONG_KEY
from server.realtime.events import EventError, error_event
from server.realtime.session import TranscriptionSession
from server.runtime import DRAIN_RETRY_AFTER, Runtime

logger = logging.getLogger("voxserve.realtime")

KEY_SUBPROTOCOL = "openai-insecure-api-key."
SESSIONS_RETRY_AFTER = 5.0
"""Retry-After when every realtime place is taken: sessions last minutes, not seconds."""
CLOSE_NORMAL = 1000
CLOSE_SERVICE_RESTART = 1012


@dataclass(frozen=True, slots=True)
class Ending:
    """Why the server ends a session: the ``error`` event it sends, and the close code."""

    error: EventError
    close_code: int


def _ending(code: str, message: str, close_code: int = CLOSE_NORMAL) -> Ending:
    """A limit the session reached is the client's to mind; the drain is the server's doing."""
    error_type = "server_error" if close_code == CLOSE_SERVICE_RESTART else "invalid_request_error"
    return Ending(EventError(message, code=code, error_type=error_type), close_code)


@websocket("/v1/realtime")
async def realtime(socket: WebSocket[Any, Any, Any]) -> None:
    runtime: Runtime = socket.app.state.runtime
    query = parse_qs(socket.scope.get("query_string", b"").decode("latin-1"))
    refusal = _refusal(socket, runtime, query)
    if refusal is not None:
        runtime.metrics.rejected("", _reason(refusal))
        await _refuse(socket, refusal)
        return
    await socket.accept(subprotocols=_subprotocol(socket.scope.get("subprotocols") or []))
    beta = any(
        name == b"openai-beta" and b"realtime=v1" in value
        for name, value in socket.scope["headers"]
    )
    started = time.monotonic()
    runtime.realtime_sessions += 1
    runtime.request_started()
    session: TranscriptionSession | None = None
    reason = "client closed"
    try:
        outbox: asyncio.Queue[bytes | Ending] = asyncio.Queue()
        session = TranscriptionSession(
            runtime, _sender(outbox), model=_first(query, "model"), beta=beta
        )
        reason = await _serve(socket, runtime, session, outbox)
    finally:
        if session is not None:
            await session.close()
        runtime.realtime_sessions -= 1
        runtime.request_finished()
        logger.info(
            "WebSocket /v1/realtime: %s after %.1f s, %d utterances",
            reason,
            time.monotonic() - started,
            session.utterances if session is not None else 0,
            extra={"route": "/v1/realtime", "reason": reason},
        )


def _sender(outbox: asyncio.Queue[bytes | Ending]) -> Callable[[dict[str, Any]], None]:
    def emit(event: dict[str, Any]) -> None:
        outbox.put_nowait(msgspec.json.encode(event))

    return emit


async def _serve(
    socket: WebSocket[Any, Any, Any],
    runtime: Runtime,
    session: TranscriptionSession,
    outbox: asyncio.Queue[bytes | Ending],
) -> str:
    """Read events until the session ends; returns why it ended, for the log."""
    settings = runtime.settings
    writer = asyncio.create_task(_write(socket, outbox), name=f"writer-{session.id}")
    session.created()
    deadline = time.monotonic() + settings.realtime_max_session_seconds
    drain = asyncio.create_task(runtime.drain.wait())
    receive: asyncio.Task[Any] | None = None
    try:
        while True:
            if receive is None:
                receive = asyncio.create_task(_receive(socket))
            idle = settings.realtime_idle_seconds
            left = deadline - time.monotonic()
            expiring = left <= idle  # decided now: a timer may fire a hair early
            done, _ = await asyncio.wait(
                {receive, drain, writer},
                timeout=max(min(idle, left), 0),
                return_when="FIRST_COMPLETED",
            )
            if writer in done:
                return "client gone"
            if drain in done:
                session.finish_speech()
                ending = _ending(
                    "server_shutting_down",
                    "The server is shutting down; reconnect to continue.",
                    CLOSE_SERVICE_RESTART,
                )
                return await _end(socket, session, outbox, writer, receive, ending, runtime)
            if receive not in done:
                if expiring:
                    minutes = settings.realtime_max_session_seconds / 60
                    ending = _ending(
                        "session_expired",
                        f"Your session hit the maximum duration of {minutes:g} minutes.",
                    )
                else:
                    ending = _ending(
                        "session_idle_timeout",
                        f"The session received no event for {idle:g} seconds and was closed.",
                    )
                return await _end(socket, session, outbox, writer, receive, ending, runtime)
            message = receive.result()
            receive = None
            if message["type"] == "websocket.disconnect":
                return "client closed"
            if message.get("text") is not None:
                await session.handle(message["text"])
            elif message.get("bytes") is not None:
                session.refuse_binary()
    finally:
        drain.cancel()
        if receive is not None:
            receive.cancel()
        if not writer.done():
            writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer


async def _end(
    socket: WebSocket[Any, Any, Any],
    session: TranscriptionSession,
    outbox: asyncio.Queue[bytes | Ending],
    writer: asyncio.Task[None],
    receive: asyncio.Task[Any],
    ending: Ending,
    runtime: Runtime,
) -> str:
    """Answer the utterances in flight, then say why and close; stop early if the client
    leaves, or at the drain's deadline (the queued work is failed then, and answered)."""
    settle = asyncio.create_task(session.settle())
    cut = asyncio.create_task(runtime.cut.wait())
    try:
        while not settle.done():
            done, _ = await asyncio.wait({settle, receive, cut}, return_when="FIRST_COMPLETED")
            if receive in done:
                if receive.result()["type"] == "websocket.disconnect":
                    return "client gone while ending"
                receive = asyncio.create_task(_receive(socket))  # events now are ignored
            if cut in done:
                await asyncio.wait({settle}, timeout=0.5)  # the failed events go out
                break
    finally:
        settle.cancel()
        cut.cancel()
        receive.cancel()
    outbox.put_nowait(ending)
    await asyncio.wait({writer})
    return ending.error.code


async def _write(socket: WebSocket[Any, Any, Any], outbox: asyncio.Queue[bytes | Ending]) -> None:
    """Send queued events in order; an :class:`Ending` sends its error and closes."""
    try:
        while True:
            item = await outbox.get()
            if isinstance(item, Ending):
                await socket.send_text(_text(item))
                await socket.close(code=item.close_code, reason=item.error.code)
                return
            await socket.send_text(item.decode())
    except Exception:  # the client is gone: the reader sees the disconnect
        return


async def _receive(socket: WebSocket[Any, Any, Any]) -> Any:
    return await socket.receive()


def _text(ending: Ending) -> str:
    return msgspec.json.encode(error_event(ending.error, None)).decode()


# -- the handshake -----------------------------------------------------------------


def _refusal(
    socket: WebSocket[Any, Any, Any], runtime: Runtime, query: dict[str, list[str]]
) -> VoxserveError | None:
    if runtime.keys and not runtime.settings.is_public(socket.scope["path"]):
        token = _presented_key(socket)
        if token is None:
            return Unauthorized(MISSING_KEY)
        if not runtime.keys.allows(token):
            return Unauthorized(WRONG_KEY, code="invalid_api_key")
    intent = _first(query, "intent")
    if intent is not None and intent != "transcription":
        return InvalidRequest(
            f"Invalid intent '{intent[:100]}': this server serves realtime transcription "
            "sessions only; connect with ?intent=transcription.",
            param="intent",
        )
    if runtime.draining:
        return NotReady(
            "The server is draining for shutdown; connect to another replica.",
            code="draining",
            retry_after=DRAIN_RETRY_AFTER,
        )
    limit = runtime.settings.realtime_max_sessions
    if runtime.realtime_sessions >= limit:
        return Overloaded(
            f"This server has {limit} realtime sessions open, its limit; retry later.",
            code="too_many_sessions",
            retry_after=SESSIONS_RETRY_AFTER,
        )
    return None


def _reason(error: VoxserveError) -> str:
    return {401: "unauthorized", 429: "too_many_sessions", 503: "draining"}.get(
        error.status_code, "bad_handshake"
    )


def _presented_key(socket: WebSocket[Any, Any, Any]) -> str | None:
    header = next((v for k, v in socket.scope["headers"] if k == b"authorization"), None)
    token = bearer_token(header)
    if token is not None:
        return token
    for protocol in socket.scope.get("subprotocols") or []:
        if protocol.startswith(KEY_SUBPROTOCOL) and len(protocol) > len(KEY_SUBPROTOCOL):
            return str(protocol[len(KEY_SUBPROTOCOL) :])
    return None


def _subprotocol(offered: list[str]) -> str | None:
    """The subprotocol to accept: ``realtime`` if offered, else any offered one that is not a
    key, else the first. A browser that offered subprotocols fails a handshake that picks
    none, so one is always picked when any was offered."""
    if not offered:
        return None
    if "realtime" in offered:
        return "realtime"
    plain = [p for p in offered if not p.startswith(KEY_SUBPROTOCOL)]
    return plain[0] if plain else offered[0]


def _first(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


async def _refuse(socket: WebSocket[Any, Any, Any], error: VoxserveError) -> None:
    """An HTTP answer instead of the upgrade, in OpenAI's envelope."""
    body = msgspec.json.encode(error.envelope())
    headers = {"content-type": "application/json", **error.headers()}
    if error.status_code == 401:
        headers["www-authenticate"] = "Bearer"
    await socket.send(
        {
            "type": "websocket.http.response.start",
            "status": error.status_code,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
    )
    await socket.send({"type": "websocket.http.response.body", "body": body})  # type: ignore[arg-type]
