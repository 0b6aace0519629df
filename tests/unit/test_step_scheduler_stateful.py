"""Continuous batching driven by Hypothesis through random joins, departures and cancels.

A state machine owns an event loop and a real :class:`StepScheduler` over the fake
step engine. Its rules submit items of random lengths (some that fail to start,
some that fail at the end), cancel items queued or running, hold and release the
worker, and let time pass. After every rule the engine must never run more rows
than it has, nor be handed a busy row; once everything has drained, every item
must have had exactly its own outcome, nothing cancelled may still hold a row,
and every row must be free again.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from server.errors import NotReady
from server.scheduler import StepScheduler
from server.settings import SchedulerConfig
from tests.unit.fake_step_engine import UNLUCKY, FakeStepEngine, Item

ENDLESS = 10**9


class StepSchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _, context: self.loop_errors.append(context))
        self.engine = FakeStepEngine()
        self.scheduler: StepScheduler[Item, int] | None = None
        self.futures: dict[Item, asyncio.Future[int]] = {}
        self.cancelled: set[Item] = set()
        self.next_value = 20

    @property
    def sched(self) -> StepScheduler[Item, int]:
        assert self.scheduler is not None
        return self.scheduler

    def pump(self, seconds: float = 0.0) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    @initialize(
        rows=st.integers(1, 4),
        delay_ms=st.sampled_from([0.0, 2.0]),
        queue_time=st.sampled_from([0.005, 30.0]),
    )
    def start(self, rows: int, delay_ms: float, queue_time: float) -> None:
        self.engine = FakeStepEngine(rows=rows, step_seconds=0.0002)
        config = SchedulerConfig(rows, delay_ms, 1000, queue_time)
        self.scheduler = StepScheduler("fake", self.engine, config, setup=self.engine.load)
        self.loop.run_until_complete(self.scheduler.start())

    @rule(
        steps=st.integers(1, 40),
        kind=st.sampled_from(["good", "good", "good", "bad start", "bad end", "endless"]),
    )
    def submit(self, steps: int, kind: str) -> None:
        """An item; an endless one only ever ends by being cancelled (or timing out)."""
        value = self.next_value
        self.next_value += 1
        if value == UNLUCKY:
            value = self.next_value
            self.next_value += 1
        value = {"good": value, "endless": value, "bad start": -value, "bad end": UNLUCKY}[kind]
        item = (ENDLESS if kind == "endless" else steps, value)
        if item in self.futures:  # one UNLUCKY item of each length is enough
            return

        async def submit() -> None:
            self.futures[item] = self.sched.submit(item)

        self.loop.run_until_complete(submit())
        self.pump()

    @rule(which=st.integers(0, 10**6))
    def cancel(self, which: int) -> None:
        """Cancel one of the items not yet answered (which one depends on timing, so
        the draw is a number, not a choice among them)."""
        live = sorted(item for item, future in self.futures.items() if not future.done())
        if not live:
            return
        item = live[which % len(live)]
        self.futures[item].cancel()
        self.cancelled.add(item)
        self.pump()

    @rule()
    def hold_the_worker(self) -> None:
        self.engine.gate.clear()
        self.pump(0.002)

    @rule()
    def release_the_worker(self) -> None:
        self.engine.gate.set()
        self.pump(0.002)

    @rule(seconds=st.sampled_from([0.0, 0.001, 0.01]))
    def wait(self, seconds: float) -> None:
        self.pump(seconds)

    @invariant()
    def the_engine_is_used_legally(self) -> None:
        with self.engine.lock:
            assert self.engine.violations == []
            assert len(self.engine.table) <= self.engine.rows
            assert self.engine.peak <= self.engine.rows

    def teardown(self) -> None:
        try:
            if self.scheduler is not None:
                self.drain_and_check()
                self.loop.run_until_complete(self.scheduler.stop())
        finally:
            self.engine.gate.set()
            self.loop.close()

    def drain_and_check(self) -> None:
        self.engine.gate.set()
        for (steps, _), future in self.futures.items():
            if steps == ENDLESS:
                future.cancel()
        self.pump()  # a cancel's done callback (which takes the item off the queue) runs
        deadline = time.monotonic() + 30
        while not all(future.done() for future in self.futures.values()):
            assert time.monotonic() < deadline, "items never finished"
            self.pump(0.005)
        freed_by = time.monotonic() + 5
        while self.engine.running:  # released cancels land at the next cycle
            assert time.monotonic() < freed_by, "a cancelled item still holds its row"
            self.pump(0.005)
        admitted = [item for _, item in self.engine.admitted]
        assert len(admitted) == len(set(admitted)), "an item was admitted twice"
        for (steps, value), future in self.futures.items():
            if future.cancelled():
                continue
            error = future.exception()
            if isinstance(error, NotReady):  # waited too long for a row: never started
                assert error.code == "queue_timeout"
                assert (steps, value) not in admitted
            elif value < 0 or value == UNLUCKY:
                assert isinstance(error, ValueError), (steps, value, error)
            else:
                assert error is None and future.result() == 10 * value
        assert self.sched.queue_depth == 0
        assert not self.loop_errors, self.loop_errors


StepSchedulerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_step_scheduler_state_machine = StepSchedulerMachine.TestCase
