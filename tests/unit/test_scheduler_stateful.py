"""The scheduler driven by Hypothesis through random interleavings of its life.

A state machine owns an event loop and a real :class:`BatchScheduler` over a fake
model. Its rules admit requests, submit items for them, cancel items, release
requests, block and unblock the worker, and let time pass; after every step it
checks the bookkeeping, and once the loop has drained it checks that every item got
exactly one outcome and that every batch the model saw was a legal one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Hashable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from server.errors import NotReady, Overloaded
from server.scheduler import BatchScheduler, Ticket
from server.scheduler.workload import RETRY_AFTER_CAP
from server.settings import SchedulerConfig


def expected(item: int) -> int:
    return 3 * item + 1


class FakeModel:
    """Computes :func:`expected`; a batch holding a negative item fails.

    Every call is recorded, in order; while ``gate`` is clear a call blocks the
    worker thread (at most a few seconds, so a broken scheduler cannot hang the run).
    """

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.calls: list[list[int]] = []

    def key(self, item: int) -> Hashable:
        return item % 2

    def run(self, items: list[int]) -> list[int]:
        with self.lock:
            self.calls.append(list(items))
        self.gate.wait(timeout=60)
        if any(item < 0 for item in items):
            raise ValueError("negative item")
        return [expected(item) for item in items]

    def snapshot(self) -> list[list[int]]:
        with self.lock:
            return [list(call) for call in self.calls]


class Observer:
    def __init__(self) -> None:
        self.rejections: list[str] = []
        self.batches = 0

    def batch_done(
        self, model: str, size: int, queue_waits: Sequence[float], seconds: float
    ) -> None:
        self.batches += 1

    def rejected(self, model: str, reason: str) -> None:
        self.rejections.append(reason)


def _has_result(future: asyncio.Future[int]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def model_batches(calls: list[list[int]]) -> list[list[int]]:
    """The batches the scheduler formed, with each failed batch's per-item retry.

    A batch of two or more that fails is followed, in the same worker call, by
    each of its items alone; those calls are checked here and folded away (the last
    batch's retry may still be under way).
    """
    batches: list[list[int]] = []
    i = 0
    while i < len(calls):
        batch = calls[i]
        batches.append(batch)
        i += 1
        if len(batch) >= 2 and any(item < 0 for item in batch):
            retries = calls[i : i + len(batch)]
            alone = [[item] for item in batch]
            under_way = i + len(batch) > len(calls)
            assert retries == (alone[: len(retries)] if under_way else alone), (
                f"bad retry of {batch}: {retries}"
            )
            i += len(batch)
    return batches


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _, context: self.loop_errors.append(context))
        self.model = FakeModel()
        self.observer = Observer()
        self.scheduler: BatchScheduler[int, int] | None = None
        self.config = SchedulerConfig(1, 0, 1)
        self.requests: list[tuple[AbstractContextManager[Ticket], Ticket, list[int]]] = []
        self.futures: dict[int, asyncio.Future[int]] = {}
        self.cancelled_unseen: set[int] = set()  # cancelled before any batch held them
        self.refused = 0
        self.next_item = 1

    # -- helpers -------------------------------------------------------------------

    @property
    def sched(self) -> BatchScheduler[int, int]:
        assert self.scheduler is not None
        return self.scheduler

    def pump(self, seconds: float = 0.0) -> None:
        """Let the loop run for ``seconds``, then until the worker holds every taken batch.

        A taken batch is handed to the worker at once, but the thread enters the
        model a moment later; waiting for that makes "was it taken before it was
        cancelled" a question the model's record answers.
        """
        self.loop.run_until_complete(asyncio.sleep(seconds))
        deadline = time.monotonic() + 60
        while True:
            self.loop.run_until_complete(asyncio.sleep(0))
            seen = {item for call in self.model.snapshot() for item in call}
            unseen_live = sum(
                1 for item, f in self.futures.items() if not f.done() and item not in seen
            )
            if unseen_live == self.sched.queue_depth:
                return
            assert unseen_live > self.sched.queue_depth, "queued items were lost"
            assert time.monotonic() < deadline, "a taken batch never reached the model"
            self.loop.run_until_complete(asyncio.sleep(0.0005))

    # -- rules ---------------------------------------------------------------------

    @initialize(
        max_batch_size=st.integers(1, 4),
        max_queue_delay_ms=st.sampled_from([0.0, 1.0, 3.0]),
        max_queue_size=st.integers(1, 3),
        max_queue_time=st.sampled_from([0.002, 0.01, 30.0]),
    )
    def start(
        self,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        max_queue_time: float,
    ) -> None:
        self.config = SchedulerConfig(
            max_batch_size, max_queue_delay_ms, max_queue_size, max_queue_time
        )
        self.scheduler = BatchScheduler(
            "fake", self.model.run, self.model.key, self.config, observer=self.observer
        )
        self.loop.run_until_complete(self.scheduler.start())

    def submit_items(self, request: int, count: int, failing: int) -> None:
        """The request submits ``count`` unique items; ``failing`` picks one to fail."""
        items = [self.next_item + i for i in range(count)]
        if failing < count:
            items[failing] = -items[failing]
        self.next_item += count
        _, ticket, submitted = self.requests[request]
        submitted.extend(items)

        async def submit_all() -> None:
            for item in items:
                self.futures[item] = self.sched.submit(item, ticket)

        self.loop.run_until_complete(submit_all())

    @rule(count=st.integers(1, 5), failing=st.integers(0, 7))
    def admit(self, count: int, failing: int) -> None:
        """A request arrives; if admitted, it submits its first items at once."""
        manager = self.sched.admit()
        try:
            ticket = manager.__enter__()
        except Overloaded:
            assert len(self.requests) >= self.config.max_queue_size
            self.refused += 1
        else:
            assert len(self.requests) < self.config.max_queue_size
            self.requests.append((manager, ticket, []))
            self.submit_items(len(self.requests) - 1, count, failing)
        self.pump()

    @precondition(lambda self: self.requests)
    @rule(which=st.integers(0, 2), count=st.integers(1, 5), failing=st.integers(0, 7))
    def submit(self, which: int, count: int, failing: int) -> None:
        """An admitted request submits more items."""
        self.submit_items(which % len(self.requests), count, failing)
        self.pump()

    def withdraw(self, items: list[int]) -> None:
        """Cancel these items' futures, noting those no batch had taken yet."""
        seen = {i for call in self.model.snapshot() for i in call}
        for item in items:
            if self.futures[item].cancel() and item not in seen:
                self.cancelled_unseen.add(item)

    @precondition(lambda self: self.futures)  # not "any pending": that depends on timing
    @rule(which=st.integers(0, 100))
    def cancel(self, which: int) -> None:
        """One item's client goes away (if it is still waiting for its result)."""
        items = list(self.futures)
        self.withdraw([items[which % len(items)]])
        self.pump()

    @precondition(lambda self: self.requests)
    @rule(which=st.integers(0, 2))
    def release(self, which: int) -> None:
        """A request ends, as a handler's would: what it still waits for is withdrawn."""
        manager, _, items = self.requests.pop(which % len(self.requests))
        self.withdraw(items)
        manager.__exit__(None, None, None)
        self.pump()

    @rule()
    def block_worker(self) -> None:
        self.model.gate.clear()
        self.pump()

    @rule()
    def unblock_worker(self) -> None:
        self.model.gate.set()
        self.pump()

    @rule(seconds=st.sampled_from([0.0, 0.001, 0.005, 0.025]))
    def wait(self, seconds: float) -> None:
        self.pump(seconds)

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def the_bookkeeping_holds(self) -> None:
        if self.scheduler is None:
            return
        assert self.scheduler.running
        unfinished = sum(1 for f in self.futures.values() if not f.done())
        assert 0 <= self.scheduler.queue_depth <= unfinished
        assert self.scheduler.admitted == len(self.requests) <= self.config.max_queue_size
        assert 0.1 <= self.scheduler.estimated_wait() <= RETRY_AFTER_CAP
        assert self.loop_errors == []

    @invariant()
    def each_request_is_credited_with_exactly_its_answered_items(self) -> None:
        """``Retry-After`` counts what a request still owes: its done work (1 per item
        here) is its items answered with a result, not failed, cancelled or expired."""
        for _, ticket, items in self.requests:
            answered = [i for i in items if _has_result(self.futures[i])]
            assert ticket.done == len(answered)

    @invariant()
    def every_batch_is_legal_and_nothing_cancelled_was_computed(self) -> None:
        calls = self.model.snapshot()
        computed: set[int] = set()
        for batch in model_batches(calls):
            assert 1 <= len(batch) <= self.config.max_batch_size
            assert len({self.model.key(item) for item in batch}) == 1
            assert computed.isdisjoint(batch), f"computed twice: {batch}"
            computed.update(batch)
        assert computed.isdisjoint(self.cancelled_unseen)
        assert computed <= self.futures.keys()

    # -- the end -------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            if self.scheduler is not None:
                self.drain_and_check()
        finally:
            self.model.gate.set()
            if self.scheduler is not None:
                self.loop.run_until_complete(self.scheduler.stop())
            self.loop.close()

    def drain_and_check(self) -> None:
        self.model.gate.set()
        pending = [f for f in self.futures.values() if not f.done()]
        if pending:
            self.loop.run_until_complete(asyncio.wait(pending, timeout=60))
        self.pump()
        computed = {item for batch in model_batches(self.model.snapshot()) for item in batch}
        expired = 0
        outcomes: set[str] = set()
        for item, future in self.futures.items():
            assert future.done(), f"item {item} never finished"
            if future.cancelled():
                outcomes.add("cancelled")
                continue
            error = future.exception()
            if isinstance(error, NotReady):
                assert error.code == "queue_timeout", error
                assert item not in computed, f"expired item {item} was computed"
                expired += 1
                outcomes.add("expired")
            elif error is not None:
                assert isinstance(error, ValueError) and item < 0, (item, error)
                assert item in computed
                outcomes.add("failed")
            else:
                assert item >= 0 and future.result() == expected(item)
                assert item in computed
                outcomes.add("result")
        assert self.observer.rejections.count("queue_timeout") == expired
        event(f"outcomes: {sorted(outcomes)}")
        if self.cancelled_unseen:
            event("an item was cancelled while it waited")
        if self.refused:
            event("a request was refused")
        assert self.observer.rejections.count("queue_full") == self.refused
        assert self.scheduler is not None and self.scheduler.queue_depth == 0
        assert self.loop_errors == []
        for manager, _, _ in self.requests:
            manager.__exit__(None, None, None)
        self.requests.clear()
        assert self.sched.admitted == 0


SchedulerMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler_state_machine = SchedulerMachine.TestCase
