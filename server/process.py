"""The server process: uvicorn with a graceful drain in front of its shutdown.

On the first SIGTERM (or SIGINT) the process does not stop listening at once, as
uvicorn alone would. It turns ``/ready`` to 503 and refuses new work with 503 and
``Retry-After`` (so a load balancer takes it out of rotation and clients retry
elsewhere), lets the requests in flight finish for up to ``drain_seconds``, answers what is
still queued after that with a retryable 503, and only then shuts uvicorn down and
exits 0. A second signal stops it at once.
This is the order Kubernetes expects: preStop sleep, SIGTERM, drain, exit before
``terminationGracePeriodSeconds`` runs out.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from contextlib import suppress
from types import FrameType

import uvicorn

from server.runtime import Runtime

logger = logging.getLogger("voxserve.process")

SHUTDOWN_GRACE_SECONDS = 1
"""uvicorn's own wait for connections after the drain: the drain has already waited."""


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self.runtime = runtime
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The signal handler: the first signal starts a drain, a second one exits now."""
        if self._drain_requested or self._loop is None or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        # A signal handler runs between any two bytecodes: hand over to the loop.
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self.runtime.draining = True
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
                "drain time is up with %d requests in flight: %d queued items answered 503",
                runtime.in_flight,
                items,
            )
            with suppress(TimeoutError):  # let those answers go out
                await asyncio.wait_for(runtime.idle.wait(), SHUTDOWN_GRACE_SECONDS)
        else:
            logger.info("drained; shutting down")
        self.should_exit = True
