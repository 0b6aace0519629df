"""The server process: uvicorn with a graceful drain in front of its shutdown.

On the first SIGTERM (or SIGINT) the process does not stop listening at once, as
uvicorn alone would. It turns ``/ready`` to 503 and refuses new work with 503 and
``Retry-After`` (so a load balancer takes it out of rotation and clients retry
elsewhere), lets the requests in flight finish for up to ``drain_seconds``, answers what is
still queued after that with a retryable 503, and only then shuts uvicorn down and
exits 0. A second signal stops it at once.
This is the order Kubernetes expects: preStop sleep, SIGTERM, drain, exit before
``terminationGracePeriodSeconds`` runs out.

Realtime sessions (``/v1/realtime``) count as requests in flight: at the drain each
commits the speech in progress, has its utterances answered, says so in an ``error``
event (``server_shutting_down``) and closes with 1012; new handshakes get 503.

The exit comes within ``drain_seconds`` + 2 s whatever is still running: at the
deadline every request without a response is answered 503 ``draining``
(``Runtime.cut_off`` and the admission middleware), the schedulers stop without
waiting for a model call in progress (``ModelScheduler.stop``), and the process
then ends with ``os._exit(0)`` (:func:`exit_now`) rather than let a thread still
inside a native model call or a decode hold up the interpreter's exit. A watchdog
thread started with the drain guarantees the bound even if the shutdown itself
stalls.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
from contextlib import suppress
from types import FrameType

import uvicorn

from server.runtime import Runtime

logger = logging.getLogger("voxserve.process")

SHUTDOWN_GRACE_SECONDS = 1
"""uvicorn's own wait for connections after the drain: the drain has already waited."""
CUT_OFF_GRACE_SECONDS = 0.5
"""After the deadline, the wait for the 503s sent at the cut to go out."""
FORCED_EXIT_SECONDS = 1.5
"""The watchdog ends the process this long after the drain deadline if the orderly
shutdown has not (it normally takes well under half a second)."""


def exit_now(code: int = 0) -> None:
    """Flush the logs and standard streams, then end the process at once.

    ``os._exit`` skips the interpreter's exit, which would join every non-daemon
    thread: the model worker threads (one may be inside a CTranslate2 or
    onnxruntime call for seconds more, and cannot be interrupted), the decode
    threads and the event loop's default executor. Every client has been answered
    by then and nothing of the process's state needs saving, so skipping the
    ``atexit`` hooks loses nothing; making those threads daemons instead would let
    finalization tear modules down under a native call still running, which can
    crash the exit.
    """
    for handler in logging.getLogger().handlers:
        with suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with suppress(Exception):
            stream.flush()
    os._exit(code)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve; after a drain, end the process as soon as uvicorn's shutdown is done."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)
        if self._drain_requested and threading.current_thread() is threading.main_thread():
            logger.info("shut down; exiting")
            exit_now(0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: the first signal starts a drain, a second one exits now."""
        if self._drain_requested or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        # A signal handler runs between any two bytecodes: hand over to the loop.
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self.runtime.begin_drain()
        _start_watchdog(self.runtime.settings.drain_seconds + FORCED_EXIT_SECONDS)
        logger.info(
            "draining: %d requests in flight, up to %g s",
            self.runtime.in_flight,
            self.runtime.settings.drain_seconds,
        )
        self._drain = asyncio.get_running_loop().create_task(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        runtime = self.runtime
        with suppress(TimeoutError):
            await asyncio.wait_for(runtime.idle.wait(), runtime.settings.drain_seconds)
        if runtime.in_flight:
            items = runtime.cut_off()
            logger.warning(
                "drain time is up with %d requests in flight: answered 503 "
                "(%d queued items failed)",
                runtime.in_flight,
                items,
            )
            with suppress(TimeoutError):  # let those answers go out
                await asyncio.wait_for(runtime.idle.wait(), CUT_OFF_GRACE_SECONDS)
        else:
            logger.info("drained; shutting down")
        self.should_exit = True


def _start_watchdog(seconds: float) -> None:
    """A daemon thread that ends the process after ``seconds`` if it is still there.

    It is a thread, not a loop callback, so that it fires even when the event loop
    itself is stuck (a blocking call on it, a shutdown step that never returns).
    """

    def watch() -> None:
        logger.warning(
            "shutdown did not finish within %g s of the drain deadline: exiting now",
            FORCED_EXIT_SECONDS,
        )
        exit_now(0)

    timer = threading.Timer(seconds, watch)
    timer.daemon = True
    timer.name = "drain-watchdog"
    timer.start()
