"""The queue in front of one model: admission, submission, timeouts and cancellation.

:class:`ModelScheduler` owns everything about waiting: the requests admitted (at
most ``max_queue_size``), the items they submitted, each item's future, its
queue-time timer, and the bookkeeping when a client goes away. How queued items
are then run on the model is its subclasses' business: a whole batch at a time
(:class:`~server.scheduler.batches.BatchScheduler`) or row by row in a running
batch (:class:`~server.scheduler.rows.StepScheduler`). Both take items from the
queue with :meth:`ModelScheduler._take`, in arrival order.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, Protocol, TypeVar

from server.errors import NotReady, Overloaded
from server.scheduler.workload import Throughput, WorkAverage, drain_seconds, owed, stand_in
from server.settings import SchedulerConfig

STOP_WAIT_SECONDS = 0.5
"""How long stopping a scheduler waits for a model call in progress (see ``stop``)."""

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
    work: float | None = None
    """All the work the request will ask of the model, in the units of the scheduler's
    ``work_of`` (audio seconds, characters); ``None`` until known. ``Retry-After``
    counts it, so a request admitted but not yet (fully) queued is not overlooked."""
    done: float = 0.0
    """The work of its items answered so far."""
    submitted: bool = False
    """It has submitted an item; until then it is still preparing (decoding its upload)."""


@dataclass(slots=True, eq=False)
class Entry(Generic[ItemT, ResultT]):
    item: ItemT
    key: Hashable
    future: asyncio.Future[ResultT]
    ticket: Ticket | None = None
    enqueued_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None
    """Fires at ``max_queue_time``; cancelled and dropped once the entry leaves."""
    queued: bool = True
    """Still waiting: not taken into a batch, and its future not known to be done."""
    work: float = 1.0
    """The item's work, in the units of ``work_of``."""

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _nothing() -> None:
    """Queued behind the worker's current call: done when the thread is free."""


class ModelScheduler(Generic[ItemT, ResultT]):
    """A queue and one worker thread in front of one model; subclasses run the items."""

    def __init__(
        self,
        name: str,
        batch_key: Callable[[ItemT], Hashable],
        config: SchedulerConfig,
        *,
        setup: Callable[[], None] | None = None,
        observer: BatchObserver | None = None,
        work_of: Callable[[ItemT], float] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self._batch_key = batch_key
        self._work_of = work_of
        """An item's work in the model's units, for ``Retry-After``; 1 per item if None."""
        self._tickets: set[Ticket] = set()  # admitted, for Retry-After
        self._throughput = Throughput()
        self._work_average = WorkAverage()
        self._busy_until = 0.0  # when the last measured work ended
        self._setup = setup
        self._observer = observer
        self._queue: deque[Entry[ItemT, ResultT]] = deque()
        self._waiting: dict[Hashable, int] = {}  # queued entries per key
        self._depth = 0  # queued entries; _queue may still hold some that left
        self._wakeup = asyncio.Event()
        self._admitted = 0
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the worker thread, load the model in it, then start batching."""
        self._executor = ThreadPoolExecutor(
            self._worker_threads(), thread_name_prefix=f"model-{self.name}"
        )
        if self._setup is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._setup)
        self._task = asyncio.create_task(self._serve(), name=f"scheduler-{self.name}")

    async def stop(self) -> None:
        """Stop batching, fail what is still queued, and give the worker thread
        :data:`STOP_WAIT_SECONDS` to finish the model call it is in.

        A model call cannot be interrupted (it is native code: CTranslate2,
        onnxruntime, torch) and may run for many seconds more; its results are
        dropped anyway. So stopping does not wait for it longer than that: the thread
        is left to end on its own, and the process's exit does not wait for it
        either (``server.process.exit_now``).
        """
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        while self._queue:
            entry = self._queue.popleft()
            self._leave(entry)
            if not entry.future.done():
                entry.future.set_exception(NotReady(f"Model '{self.name}' is shutting down."))
        if self._executor is None:
            return
        try:  # first in first out: with one worker thread, this runs once the call ends
            idle = asyncio.get_running_loop().run_in_executor(self._executor, _nothing)
        except RuntimeError:  # stopped before
            return
        with suppress(TimeoutError):
            await asyncio.wait_for(idle, STOP_WAIT_SECONDS)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def fail_pending(self, error: BaseException) -> int:
        """Fail every item not yet answered, queued or in the worker, with ``error``.

        For the end of a drain: requests still waiting get a clear answer at once
        instead of being cut off with the connection. The batch in the worker
        finishes on its own; its results are dropped. Returns the items failed.
        """
        failed = 0
        for entry in [*self._queue, *self._in_worker()]:
            self._leave(entry)
            if not entry.future.done():
                entry.future.set_exception(error)
                failed += 1
        self._wakeup.set()
        return failed

    async def _serve(self) -> None:
        """The loop that runs queued items on the model, until cancelled."""
        raise NotImplementedError

    def _worker_threads(self) -> int:
        """Threads that may enter the model at once: one, unless a subclass knows better."""
        return 1

    def _in_worker(self) -> list[Entry[ItemT, ResultT]]:
        """Entries taken from the queue and not yet answered."""
        raise NotImplementedError

    def _queue_wait(self) -> float:
        """Seconds until the items queued and running now are worked off, by counting
        batches: the least ``estimated_wait`` gives (never less than one batch)."""
        raise NotImplementedError

    def _submitted(self) -> None:
        """Called on the event loop after an item joined the queue."""
        self._wakeup.set()

    # -- admission and submission --------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not those being computed, cancelled or expired)."""
        return self._depth

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def preparing(self) -> int:
        """Requests admitted that have not submitted an item yet (their uploads decode)."""
        return sum(1 for ticket in self._tickets if not ticket.submitted)

    def _reject(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.rejected(self.name, reason)

    def _not_ready(self) -> NotReady:
        self._reject("not_ready")
        return NotReady(f"Model '{self.name}' is not ready.", retry_after=5)

    @contextmanager
    def admit(self, work: float | None = None) -> Iterator[Ticket]:
        """Hold one of ``max_queue_size`` places for a request while it is served.

        ``work`` is all the request will ask of the model (see :attr:`Ticket.work`);
        a request that learns it later sets it on the ticket.
        """
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
        ticket = Ticket(work=work)
        self._tickets.add(ticket)
        try:
            yield ticket
        finally:
            self._admitted -= 1
            self._tickets.discard(ticket)
            if not ticket.submitted:
                self._wakeup.set()  # a batch may be waiting for it (``preparing``)
            if ticket.work is not None:
                self._work_average.add(ticket.work)

    def submit(self, item: ItemT, ticket: Ticket | None = None) -> asyncio.Future[ResultT]:
        """Queue one item; its future resolves with its result or its error.

        ``ticket`` is the request's, from :meth:`admit`: the item expires only while
        no item of that request has been served yet.
        """
        if not self.running:
            raise self._not_ready()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
        entry = Entry(item, self._batch_key(item), future, ticket)
        if self._work_of is not None:
            entry.work = self._work_of(item)
        if ticket is None or not ticket.served:
            entry.timer = loop.call_later(self.config.max_queue_time, self._expire, entry)
        if ticket is not None:
            ticket.submitted = True
        self._queue.append(entry)
        self._waiting[entry.key] = self._waiting.get(entry.key, 0) + 1
        self._depth += 1
        future.add_done_callback(partial(self._on_future_done, entry))
        self._submitted()
        return future

    async def run(self, items: Sequence[ItemT], ticket: Ticket | None = None) -> list[ResultT]:
        """Submit every item and wait for all; on error or cancellation, withdraw the rest."""
        futures = [self.submit(item, ticket) for item in items]
        try:
            return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    def _leave(self, entry: Entry[ItemT, ResultT]) -> bool:
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

    def _on_future_done(self, entry: Entry[ItemT, ResultT], _: asyncio.Future[ResultT]) -> None:
        if self._leave(entry):  # cancelled while it waited
            self._wakeup.set()  # the head of the queue may have gone

    # -- Retry-After -----------------------------------------------------------------

    def estimated_wait(self) -> float:
        """Seconds until the work admitted now is done, for ``Retry-After``.

        The work every admitted request still owes (:mod:`.workload`) over the
        measured throughput; never less than the queue's own count of batches, at
        most :data:`~server.scheduler.workload.RETRY_AFTER_CAP`.
        """
        return drain_seconds(self.pending_work, self._throughput.rate, self._queue_wait())

    @property
    def pending_work(self) -> float:
        """The work admitted and not yet done, in the units of ``work_of`` (audio
        seconds, characters): what the admitted requests owe, and the items queued
        without one."""
        outstanding = dict.fromkeys(self._tickets, 0.0)
        loose = 0.0
        waiting = [e for e in self._queue if e.queued]
        running = [e for e in self._in_worker() if not e.future.done()]
        for entry in waiting + running:
            ticket = entry.ticket
            if ticket is not None and ticket in outstanding:
                outstanding[ticket] += entry.work
            else:
                loose += entry.work
        known = [t.work for t in self._tickets if t.work is not None]
        assumed = stand_in(self._work_average.value, known)
        return loose + sum(owed(t.work, t.done, outstanding[t], assumed) for t in outstanding)

    def _answer(self, entry: Entry[ItemT, ResultT], result: ResultT) -> None:
        """Give ``entry`` its result and count its work as done for its request."""
        entry.future.set_result(result)
        if entry.ticket is not None:
            entry.ticket.done += entry.work

    def _progress(self, entry: Entry[ItemT, ResultT]) -> float:
        """What computing ``entry`` (not yet answered) advances its request: its work, but
        no more than the request's declared work still open. A window passed again (a
        resumed or hotter decode) costs time without advancing it, so the throughput is
        of declared work, the same units that ``estimated_wait`` divides."""
        ticket = entry.ticket
        if ticket is None or ticket.work is None:
            return entry.work
        return min(entry.work, max(ticket.work - ticket.done, 0.0))

    def _worked(self, units: float, since: float) -> None:
        """Measure the throughput: ``units`` done by now, busy since ``since`` (the time
        the work became pending) or since the last measured work ended, if later."""
        now = time.monotonic()
        self._throughput.add(units, now - max(since, self._busy_until))
        self._busy_until = now

    def _expire(self, entry: Entry[ItemT, ResultT]) -> None:
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

    # -- taking work ---------------------------------------------------------------

    def _sweep(self) -> None:
        """Remove the entries that left (cancelled, expired) from ``_queue``."""
        for entry in self._queue:
            if entry.queued and entry.future.done():
                self._leave(entry)  # cancelled; its done callback has not run yet
        if len(self._queue) != self._depth:
            self._queue = deque(e for e in self._queue if e.queued)

    def _take(self, limit: int, key: Hashable | None = None) -> list[Entry[ItemT, ResultT]]:
        """The oldest ``limit`` queued entries (of ``key``, if given), out of the queue
        and marked served: their requests no longer expire."""
        taken = [e for e in self._queue if key is None or e.key == key][:limit]
        for entry in taken:
            self._leave(entry)
            if entry.ticket is not None:
                entry.ticket.served = True
        self._queue = deque(e for e in self._queue if e.queued)
        return taken

    async def _until_woken(self, seconds: float | None = None) -> None:
        """Wait for the next submission or departure, or ``seconds``."""
        self._wakeup.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), seconds)
