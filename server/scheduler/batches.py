"""Whole-batch scheduling: a batch of compatible items, run on the model until all are done.

For backends whose call takes a batch and returns when every item of it is done
(CTranslate2's Whisper, the ONNX voices), and for the torch engine's whole-batch
mode. The loop waits for ``max_batch_size`` items of the oldest item's key or
for that item's ``max_queue_delay_ms``, whichever comes first, hands the batch to
the worker thread, and answers each item with its own result or error; a batch
that fails is retried item by item, so one bad item fails alone.

With ``workers`` above 1 (a backend that may be entered from that many threads at
once, such as CTranslate2 with as many replicas), up to that many batches are
computed at once, each taken from the queue as a worker comes free. On a CPU that
is what pays: a small Whisper's matrices are too small for many threads in one
call, and batching rows together barely speeds one core (tiny.en: eight windows
decoded as one batch took as long as one by one), while two calls on one thread
each keep two cores busy.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from server.errors import NotReady
from server.scheduler.queue import (
    BatchObserver,
    Entry,
    ItemT,
    ModelScheduler,
    ResultT,
)
from server.settings import SchedulerConfig

logger = logging.getLogger("voxserve.scheduler")


@dataclass(slots=True, frozen=True)
class Failure:
    """An item's own error, in place of its result."""

    error: BaseException


class BatchScheduler(ModelScheduler[ItemT, ResultT]):
    """Runs queued items a whole batch at a time through ``run_batch``."""

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[ItemT]], list[ResultT]],
        batch_key: Callable[[ItemT], Hashable],
        config: SchedulerConfig,
        *,
        setup: Callable[[], None] | None = None,
        observer: BatchObserver | None = None,
        work_of: Callable[[ItemT], float] | None = None,
    ) -> None:
        super().__init__(name, batch_key, config, setup=setup, observer=observer, work_of=work_of)
        self._run_batch = run_batch
        self._running: list[list[Entry[ItemT, ResultT]]] = []  # batches in worker threads
        self._batch_seconds = 0.0  # moving average, the least Retry-After

    def _in_worker(self) -> list[Entry[ItemT, ResultT]]:
        return [entry for batch in self._running for entry in batch]

    def _worker_threads(self) -> int:
        return self.config.workers

    def _queue_wait(self) -> float:
        """The batches in the workers plus those the waiting items make (each key
        batches apart), shared among the workers, at the moving average of a batch's
        time but at least 0.1 s each; never less than one batch."""
        limit = self.config.max_batch_size
        batches = sum(-(-count // limit) for count in self._waiting.values())
        batches += len(self._running)
        rounds = -(-max(batches, 1) // self.config.workers)
        return rounds * max(self._batch_seconds, 0.1)

    async def _serve(self) -> None:
        """Take a batch whenever a worker is free; with several, each in a task of its own.

        One worker runs each batch in this task, so the next batch is formed in the same
        loop iteration in which the last one's results were handed out, as it always
        was: its size does not depend on how soon the answered requests queue more.
        """
        if self.config.workers == 1:
            while True:
                await self._serve_batch(await self._next_batch())
        free = asyncio.Semaphore(self.config.workers)
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                await free.acquire()
                try:
                    batch = await self._next_batch()
                except BaseException:
                    free.release()
                    raise
                task = asyncio.create_task(self._serve_batch(batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(lambda _: free.release())
        finally:
            for task in tasks:
                task.cancel()

    async def _serve_batch(self, batch: list[Entry[ItemT, ResultT]]) -> None:
        try:
            await self._execute(batch)
        except Exception:  # never let one batch end the loop
            logger.exception("scheduler %s: batch failed unexpectedly", self.name)
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(NotReady("The model failed on this batch."))

    async def _next_batch(self) -> list[Entry[ItemT, ResultT]]:
        """Wait for a full batch or for the oldest item's delay, then take the batch.

        Past the delay, a batch that is not full waits on (up to
        ``max_prepare_wait_ms`` more) while admitted requests are still preparing:
        clients that all got their answers from one batch send their next requests
        together, and an upload's decoding takes longer than the delay, so without
        this the first one decoded would start a batch of its own.
        """
        limit = self.config.max_batch_size
        delay = self.config.max_queue_delay_ms / 1000
        patience = delay + self.config.max_prepare_wait_ms / 1000
        while True:
            self._sweep()
            if not self._queue:
                await self._until_woken()
                continue
            head = self._queue[0]
            waiting = self._waiting.get(head.key, 0)
            now = time.monotonic()
            remaining = head.enqueued_at + delay - now
            if waiting >= limit:
                return self._take(limit, head.key)
            if remaining <= 0:
                remaining = head.enqueued_at + patience - now
                if remaining <= 0 or not self.preparing:
                    return self._take(limit, head.key)
            await self._until_woken(remaining)

    async def _execute(self, batch: list[Entry[ItemT, ResultT]]) -> None:
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        self._running.append(batch)
        try:
            outcomes = await loop.run_in_executor(
                self._executor, self._compute, [e.item for e in batch]
            )
        finally:
            self._running.remove(batch)
        seconds = time.monotonic() - started
        self._worked(sum(self._progress(e) for e in batch), min(e.enqueued_at for e in batch))
        self._batch_seconds = (
            seconds if not self._batch_seconds else (0.8 * self._batch_seconds + 0.2 * seconds)
        )
        for entry, outcome in zip(batch, outcomes, strict=True):
            if entry.future.done():
                continue
            if isinstance(outcome, Failure):
                entry.future.set_exception(outcome.error)
            else:
                self._answer(entry, outcome)
        if self._observer is not None:
            waits = [started - e.enqueued_at for e in batch]
            self._observer.batch_done(self.name, len(batch), waits, seconds)

    def _compute(self, items: list[ItemT]) -> list[ResultT | Failure]:
        """Run in the worker thread: the batch, or on failure each item on its own."""
        try:
            results = self._run_batch(items)
            if len(results) != len(items):
                raise RuntimeError(f"backend returned {len(results)} results for {len(items)}")
            return list(results)
        except Exception as exc:
            if len(items) == 1:
                return [Failure(exc)]
            logger.warning(
                "scheduler %s: batch of %d failed, retrying items alone: %r",
                self.name,
                len(items),
                exc,
            )
            return [self._compute([item])[0] for item in items]
