"""The only place that groups requests into batches.

One :class:`ModelScheduler` per loaded model. Handlers on the event loop submit
*items* (Whisper windows, TTS sentences) and await one future per item. One asyncio
task owns the queue: it waits for the oldest item's ``max_queue_delay_ms`` to pass
or for ``max_batch_size`` compatible items, whichever comes first, then hands the
batch to the model's single worker thread and resolves each item's future with its
own result or its own error.

Guarantees, each of them tested:

- a batch never holds more than ``max_batch_size`` items, and only items whose
  ``batch_key`` is equal (items that cannot share one model call never meet);
- items leave in arrival order within a key, and the oldest item always leads the
  next batch, so nothing starves;
- the model is entered by one thread only, the one that loaded it;
- a failing batch is retried item by item, so one bad item fails alone;
- an item whose future was cancelled (its client went away) is never computed;
- an item that waited longer than ``max_queue_time`` seconds without being taken
  into a batch leaves the queue uncomputed, and its future fails with
  :class:`~server.errors.NotReady` (code ``queue_timeout``, with a ``Retry-After``
  estimate), even while the worker is busy with a long batch; items already taken
  into a batch are not affected. The timeout bounds how long a *request* waits for
  service: once one item of a request (its :class:`Ticket`) has been taken into a
  batch, its other items no longer expire, so a long file whose windows queue
  behind each other, or a long text spoken sentence by sentence, is not cut off
  half-way for being long;
- at most ``max_queue_size`` requests are admitted at once; the next one is refused
  with :class:`~server.errors.Overloaded` and a ``Retry-After`` estimate, before any
  of its work (decoding included) is done.

Every refusal is reported to the observer's ``rejected`` with a reason:
``queue_full`` (admission refused), ``queue_timeout`` (an item expired, once per
item) or ``not_ready`` (the scheduler is not running).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, Protocol, TypeVar

from server.errors import NotReady, Overloaded
from server.settings import SchedulerConfig

logger = logging.getLogger("voxserve.scheduler")

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class BatchObserver(Protocol):
    """Receives what the scheduler did, for metrics. Called on the event loop."""

    def batch_done(
        self, model: str, size: int, queue_waits: Sequence[float], seconds: float
    ) -> None: ...

    def rejected(self, model: str, reason: str) -> None:
        """Work was refused: ``queue_full``, ``queue_timeout`` or ``not_ready``."""


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted request's place in the queue; its items are submitted with it."""

    served: bool = False
    """One of its items has been taken into a batch: the request is being served."""


@dataclass(slots=True, eq=False)
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    key: Hashable
    future: asyncio.Future[ResultT]
    ticket: Ticket | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    """Fires at ``max_queue_time``; cancelled and dropped once the entry leaves."""
    queued: bool = True
    """Still waiting: not taken into a batch, and its future not known to be done."""

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass(slots=True, frozen=True)
class _Failure:
    error: BaseException


class ModelScheduler(Generic[ItemT, ResultT]):
    """A queue, a batching policy and one worker thread in front of one model."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        batch_key: Callable[[ItemT], Hashable],
        config: SchedulerConfig,
        *,
        setup: Callable[[], None] | None = None,
        observer: BatchObserver | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._run_batch = run_batch
        self._batch_key = batch_key
        self._setup = setup
        self._observer = observer
        self._queue: deque[_Entry[ItemT, ResultT]] = deque()
        self._waiting: dict[Hashable, int] = {}  # queued entries per key
        self._depth = 0  # queued entries; _queue may still hold some that left
        self._wakeup = asyncio.Event()
        self._admitted = 0
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._batch: list[_Entry[ItemT, ResultT]] = []  # the batch in the worker thread
        self._batch_seconds = 0.0  # moving average, for Retry-After

    # -- life cycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker thread, load the model in it, then start batching."""
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.name}")
        if self._setup is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._setup)
        self._task = asyncio.create_task(self._serve(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        """Stop batching, fail what is still queued, and let the thread finish."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            entry = self._queue.popleft()
            self._leave(entry)
            if not entry.future.done():
                entry.future.set_exception(NotReady(f"Model '{self.name}' is shutting down."))
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    def fail_pending(self, error: BaseException) -> int:
        """Fail every item not yet answered, queued or in the worker, with ``error``.

        For the end of a drain: requests still waiting get a clear answer at once
        instead of being cut off with the connection. The batch in the worker
        finishes on its own; its results are dropped. Returns the items failed.
        """
        failed = 0
        for entry in [*self._queue, *self._batch]:
            self._leave(entry)
            if not entry.future.done():
                entry.future.set_exception(error)
                failed += 1
        self._wakeup.set()
        return failed

    # -- admission and submission --------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not those being computed, cancelled or expired)."""
        return self._depth

    @property
    def admitted(self) -> int:
        return self._admitted

    def estimated_wait(self) -> float:
        """Seconds until the queue as it stands now would be worked off (Retry-After).

        The batch in the worker, if any, plus the batches the waiting items make (each
        key batches apart), at the moving average of a batch's time but at least
        0.1 s each; never less than one batch.
        """
        limit = self.config.max_batch_size
        batches = sum(-(-count // limit) for count in self._waiting.values())
        batches += 1 if self._batch else 0
        return max(batches, 1) * max(self._batch_seconds, 0.1)

    def _reject(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(self.name, reason)

    def _not_ready(self) -> NotReady:
        self._reject("not_ready")
        return NotReady(f"Model '{self.name}' is not ready.", retry_after=5)

    @contextmanager
    def admit(self) -> Iterator[Ticket]:
        """Hold one of ``max_queue_size`` places for a request while it is served."""
        if not self.running:
            raise self._not_ready()
        if self._admitted >= self.config.max_queue_size:
            self._reject("queue_full")
            raise Overloaded(
                f"Model '{self.name}' is at capacity "
                f"({self.config.max_queue_size} requests queued); retry later.",
                code="queue_full",
                retry_after=self.estimated_wait(),
            )
        self._admitted += 1
        try:
            yield Ticket()
        finally:
            self._admitted -= 1

    def submit(self, item: ItemT, ticket: Ticket | None = None) -> asyncio.Future[ResultT]:
        """Queue one item; its future resolves with its result or its error.

        ``ticket`` is the request's, from :meth:`admit`: the item expires only while
        no item of that request has been served yet.
        """
        if not self.running:
            raise self._not_ready()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        entry = _Entry(item, self._batch_key(item), future, ticket)
        if ticket is None or not ticket.served:
            entry.timer = loop.call_later(self.config.max_queue_time, self._expire, entry)
        self._queue.append(entry)
        self._waiting[entry.key] = self._waiting.get(entry.key, 0) + 1
        self._depth += 1
        future.add_done_callback(partial(self._on_future_done, entry))
        self._wakeup.set()
        return future

    async def run(self, items: Sequence[ItemT], ticket: Ticket | None = None) -> list[ResultT]:
        """Submit every item and wait for all; on error or cancellation, withdraw the rest."""
        futures = [self.submit(item, ticket) for item in items]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    def _leave(self, entry: _Entry[ItemT, ResultT]) -> bool:
        """Stop counting ``entry`` as waiting and stop its timer; False if it had left.

        The entry may stay in ``_queue`` until ``_next_batch`` sweeps it out.
        """
        entry.stop_timer()
        if not entry.queued:
            return False
        entry.queued = False
        self._depth -= 1
        left = self._waiting[entry.key] - 1
        if left:
            self._waiting[entry.key] = left
        else:
            del self._waiting[entry.key]
        return True

    def _on_future_done(self, entry: _Entry[ItemT, ResultT], _: asyncio.Future[ResultT]) -> None:
        if self._leave(entry):  # cancelled while it waited
            self._wakeup.set()  # the head of the queue may have gone

    def _expire(self, entry: _Entry[ItemT, ResultT]) -> None:
        """The entry's timer: it waited ``max_queue_time`` without being taken."""
        entry.timer = None
        if entry.ticket is not None and entry.ticket.served:
            return  # its request is being served: it waits its turn
        if entry.future.done() or not self._leave(entry):
            return  # its done callback, or its batch, already took it off
        self._wakeup.set()
        entry.future.set_exception(
            NotReady(
                f"Model '{self.name}' is busy: the request waited longer than "
                f"{self.config.max_queue_time:g} s in the queue; retry later.",
                code="queue_timeout",
                retry_after=self.estimated_wait(),
            )
        )
        self._reject("queue_timeout")

    # -- the batching loop ---------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._execute(batch)
            except Exception:  # never let one batch end the loop
                logger.exception("scheduler %s: batch failed unexpectedly", self.name)
                for entry in batch:
                    if not entry.future.done():
                        entry.future.set_exception(NotReady("The model failed on this batch."))

    async def _next_batch(self) -> list[_Entry[ItemT, ResultT]]:
        """Wait for a full batch or for the oldest item's delay, then take the batch."""
        limit = self.config.max_batch_size
        delay = self.config.max_queue_delay_ms / 1000
        while True:
            self._sweep()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            batch = [e for e in self._queue if e.key == head.key][:limit]
            remaining = head.enqueued_at + delay - time.monotonic()
            if len(batch) >= limit or remaining <= 0:
                for entry in batch:
                    self._leave(entry)
                    if entry.ticket is not None:
                        entry.ticket.served = True
                self._queue = deque(e for e in self._queue if e.queued)
                return batch
            self._wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _sweep(self) -> None:
        """Remove the entries that left (cancelled, expired) from ``_queue``."""
        for entry in self._queue:
            if entry.queued and entry.future.done():
                self._leave(entry)  # cancelled; its done callback has not run yet
        if len(self._queue) != self._depth:
            self._queue = deque(e for e in self._queue if e.queued)

    async def _execute(self, batch: list[_Entry[ItemT, ResultT]]) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._batch = batch
        try:
            outcomes = await loop.run_in_executor(
                self._executor, self._compute, [e.item for e in batch]
            )
        finally:
            self._batch = []
        seconds = time.monotonic() - started
        self._batch_seconds = (
            seconds if not self._batch_seconds else (0.8 * self._batch_seconds + 0.2 * seconds)
        )
        for entry, outcome in zip(batch, outcomes, strict=True):
            if entry.future.done():
                continue
            if isinstance(outcome, _Failure):
                entry.future.set_exception(outcome.error)
            else:
                entry.future.set_result(outcome)
        if self._observer is not None:
            waits = [started - e.enqueued_at for e in batch]
            self._observer.batch_done(self.name, len(batch), waits, seconds)

    def _compute(self, items: list[ItemT]) -> list[ResultT | _Failure]:
        """Run in the worker thread: the batch, or on failure each item on its own."""
        try:
            results = self._run_batch(items)
            if len(results) != len(items):
                raise RuntimeError(f"backend returned {len(results)} results for {len(items)}")
            return list(results)
        except Exception as exc:
            if len(items) == 1:
                return [_Failure(exc)]
            logger.warning(
                "scheduler %s: batch of %d failed, retrying items alone: %r",
                self.name,
                len(items),
                exc,
            )
            return [self._compute([item])[0] for item in items]
