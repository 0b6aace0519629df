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
- at most ``max_queue_size`` requests are admitted at once; the next one is refused
  with :class:`~server.errors.Overloaded` and a ``Retry-After`` estimate, before any
  of its work (decoding included) is done.
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


@dataclass(slots=True, eq=False)
class _Entry(Generic[ItemT, ResultT]):
    item: ItemT
    key: Hashable
    future: asyncio.Future[ResultT]
    enqueued_at: float = field(default_factory=time.monotonic)


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
        self._wakeup = asyncio.Event()
        self._admitted = 0
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
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
            if not entry.future.done():
                entry.future.set_exception(NotReady(f"Model '{self.name}' is shutting down."))
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, wait=True)

    # -- admission and submission --------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not those being computed)."""
        return len(self._queue)

    @property
    def admitted(self) -> int:
        return self._admitted

    def estimated_wait(self) -> float:
        """Seconds until the queue as it stands now would be worked off."""
        batches = self.queue_depth / self.config.max_batch_size + 1
        return batches * max(self._batch_seconds, 0.1)

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_queue_size`` places for a request while it is served."""
        if not self.running:
            raise NotReady(f"Model '{self.name}' is not ready.", retry_after=5)
        if self._admitted >= self.config.max_queue_size:
            raise Overloaded(
                f"Model '{self.name}' is at capacity "
                f"({self.config.max_queue_size} requests queued); retry later.",
                retry_after=self.estimated_wait(),
            )
        self._admitted += 1
        try:
            yield
        finally:
            self._admitted -= 1

    def submit(self, item: ItemT) -> asyncio.Future[ResultT]:
        """Queue one item; its future resolves with its result or its error."""
        if not self.running:
            raise NotReady(f"Model '{self.name}' is not ready.", retry_after=5)
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append(_Entry(item, self._batch_key(item), future))
        future.add_done_callback(self._on_future_done)
        self._wakeup.set()
        return future

    async def run(self, items: Sequence[ItemT]) -> list[ResultT]:
        """Submit every item and wait for all; on error or cancellation, withdraw the rest."""
        futures = [self.submit(item) for item in items]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    def _on_future_done(self, future: asyncio.Future[ResultT]) -> None:
        if future.cancelled():
            self._wakeup.set()  # the head of the queue may have gone

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
            self._drop_cancelled()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            head = self._queue[0]
            batch = [e for e in self._queue if e.key == head.key][:limit]
            remaining = head.enqueued_at + delay - time.monotonic()
            if len(batch) >= limit or remaining <= 0:
                taken = {id(e) for e in batch}
                self._queue = deque(e for e in self._queue if id(e) not in taken)
                return batch
            self._wakeup.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _drop_cancelled(self) -> None:
        if any(e.future.done() for e in self._queue):
            self._queue = deque(e for e in self._queue if not e.future.done())

    async def _execute(self, batch: list[_Entry[ItemT, ResultT]]) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        outcomes = await loop.run_in_executor(
            self._executor, self._compute, [e.item for e in batch]
        )
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
