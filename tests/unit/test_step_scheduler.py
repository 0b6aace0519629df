"""The continuous-batching scheduler against a fake step engine that records every call."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import ExitStack, asynccontextmanager
from typing import TypeVar

import pytest

from server.errors import NotReady
from server.scheduler import StepScheduler, Ticket
from server.settings import SchedulerConfig
from tests.unit.fake_step_engine import UNLUCKY, FakeStepEngine, Item

T = TypeVar("T")


@asynccontextmanager
async def started(
    engine: FakeStepEngine,
    *,
    max_queue_delay_ms: float = 0.0,
    max_queue_time: float = 30.0,
) -> AsyncIterator[StepScheduler[Item, int]]:
    config = SchedulerConfig(engine.rows, max_queue_delay_ms, 100, max_queue_time)
    scheduler = StepScheduler("fake", engine, config, setup=engine.load)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout=60)

    return asyncio.run(main())


async def until(condition: object, what: str) -> None:
    """Poll a condition on the loop (the worker thread changes the engine's record)."""
    for _ in range(20_000):
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


def test_every_item_gets_its_own_result_and_rows_are_reused() -> None:
    engine = FakeStepEngine(rows=3)

    async def scenario() -> list[int]:
        async with started(engine) as scheduler:
            return await scheduler.run([(1 + i % 4, i) for i in range(20) if i != UNLUCKY])

    assert run(scenario()) == [10 * i for i in range(20) if i != UNLUCKY]
    assert engine.peak == 3
    assert len(engine.admitted) == 19
    assert {row for row, _ in engine.admitted} == {0, 1, 2}
    assert engine.violations == []
    assert len(engine.threads) == 1


def test_a_short_item_joins_a_running_long_one_and_leaves_first() -> None:
    engine = FakeStepEngine(rows=4, step_seconds=0.001)

    async def scenario() -> tuple[list[str], int]:
        async with started(engine) as scheduler:
            order: list[str] = []
            long = asyncio.ensure_future(scheduler.run([(400, 1)]))
            long.add_done_callback(lambda _: order.append("long"))
            await until(lambda: engine.steps >= 20, "the long item is decoding")
            joined_at = engine.steps
            (short,) = await scheduler.run([(5, 2)])
            order.append("short")
            assert short == 20
            await long
            return order, joined_at

    order, joined_at = run(scenario())
    assert order == ["short", "long"]
    assert engine.admissions[1] == [1]  # the short one took the next free row
    assert engine.peak == 2
    assert joined_at < 400


def test_the_lowest_free_row_is_taken_first() -> None:
    engine = FakeStepEngine(rows=4, step_seconds=0.001)

    async def scenario() -> None:
        async with started(engine) as scheduler:
            first = asyncio.ensure_future(scheduler.run([(3, 1)]))
            second = asyncio.ensure_future(scheduler.run([(300, 2)]))
            await until(lambda: len(engine.admitted) == 2, "both admitted")
            await first
            await scheduler.run([(2, 3)])
            second.cancel()

    run(scenario())
    assert [row for row, _ in engine.admitted] == [0, 1, 0]


def test_a_cancelled_running_item_leaves_at_the_next_step_and_frees_its_row() -> None:
    engine = FakeStepEngine(rows=1, step_seconds=0.001)

    async def scenario() -> tuple[int, int]:
        async with started(engine) as scheduler:
            doomed = asyncio.ensure_future(scheduler.run([(100_000, 1)]))
            await until(lambda: engine.steps >= 5, "the item is decoding")
            engine.gate.clear()  # park the worker inside a step while the client leaves
            await until(engine.parked.is_set, "the worker is parked in a step")
            doomed.cancel()
            await asyncio.gather(doomed, return_exceptions=True)
            cancelled_at = engine.steps
            engine.gate.set()
            await until(lambda: engine.released == [0], "the row was released")
            released_at = engine.steps
            (result,) = await scheduler.run([(2, 7)])  # the freed row serves the next item
            assert result == 70
            return cancelled_at, released_at

    cancelled_at, released_at = run(scenario())
    assert released_at - cancelled_at <= 1
    assert [row for row, _ in engine.admitted] == [0, 0]


def test_items_that_fail_fail_alone() -> None:
    engine = FakeStepEngine(rows=4)

    async def scenario() -> list[int | BaseException]:
        async with started(engine) as scheduler:
            items: list[Item] = [(3, 1), (2, -5), (4, UNLUCKY), (1, 4)]
            futures = [scheduler.submit(item) for item in items]
            return await asyncio.gather(*futures, return_exceptions=True)

    outcomes = run(scenario())
    assert outcomes[0] == 10 and outcomes[3] == 40
    assert isinstance(outcomes[1], ValueError) and "bad item" in str(outcomes[1])
    assert isinstance(outcomes[2], ValueError) and "unlucky" in str(outcomes[2])


def test_a_broken_step_fails_the_running_items_and_the_scheduler_serves_on() -> None:
    engine = FakeStepEngine(rows=2)

    async def scenario() -> tuple[list[int | BaseException], int]:
        async with started(engine) as scheduler:
            engine.explode = True
            broken = await asyncio.gather(
                scheduler.submit((5, 1)), scheduler.submit((5, 2)), return_exceptions=True
            )
            engine.explode = False
            (after,) = await scheduler.run([(2, 3)])
            return list(broken), after

    broken, after = run(scenario())
    assert all(isinstance(outcome, NotReady) for outcome in broken)
    assert after == 30
    assert sorted(engine.released) == [0, 1]


def test_an_item_waiting_for_a_row_times_out_but_running_ones_do_not() -> None:
    engine = FakeStepEngine(rows=1, step_seconds=0.001)

    async def scenario() -> tuple[int, BaseException | int]:
        async with started(engine, max_queue_time=0.2) as scheduler:
            running = asyncio.ensure_future(scheduler.run([(600, 1)]))  # about 0.6 s or more
            await until(lambda: engine.steps >= 1, "the first item runs")
            (waiting,) = await asyncio.gather(scheduler.submit((1, 2)), return_exceptions=True)
            (result,) = await running
            return result, waiting

    result, waiting = run(scenario())
    assert result == 10
    assert isinstance(waiting, NotReady) and waiting.code == "queue_timeout"
    assert [item for _, item in engine.admitted] == [(600, 1)]


def test_an_idle_engine_admits_at_once_and_a_busy_one_gathers_newcomers() -> None:
    engine = FakeStepEngine(rows=8, admission_batch=3, step_seconds=0.001)

    async def scenario() -> list[int]:
        async with started(engine, max_queue_delay_ms=10_000) as scheduler:
            long = asyncio.ensure_future(scheduler.run([(100_000, 0)]))
            await until(lambda: engine.steps >= 1, "the first item runs at once")
            futures = []
            for value in (1, 2, 3):  # the first two wait for a third to share the pass
                futures.append(scheduler.submit((2, value)))
                await asyncio.sleep(0.02)
            results = list(await asyncio.gather(*futures))
            long.cancel()
            return results

    assert run(scenario()) == [10, 20, 30]
    assert engine.admissions[:2] == [[0], [1, 2, 3]]


def test_a_newcomer_waits_for_company_no_longer_than_the_delay() -> None:
    engine = FakeStepEngine(rows=8, admission_batch=4, step_seconds=0.001)

    async def scenario() -> float:
        async with started(engine, max_queue_delay_ms=100) as scheduler:
            long = asyncio.ensure_future(scheduler.run([(100_000, 0)]))
            await until(lambda: engine.steps >= 1, "the first item runs")
            submitted = time.monotonic()
            await scheduler.run([(1, 1)])
            long.cancel()
            return time.monotonic() - submitted

    waited = run(scenario())
    assert 0.09 <= waited < 10.0  # the delay, not the 100,000-step item
    assert engine.admissions[:2] == [[0], [1]]


def test_draining_fails_running_and_queued_items_at_once() -> None:
    engine = FakeStepEngine(rows=1, step_seconds=0.001)
    error = NotReady("draining", code="draining")

    async def scenario() -> list[int | BaseException]:
        async with started(engine) as scheduler:
            futures = [scheduler.submit((100_000, 1)), scheduler.submit((1, 2))]
            await until(lambda: engine.steps >= 2, "the first item runs")
            assert scheduler.fail_pending(error) == 2
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            await until(lambda: engine.released == [0], "the running row was released")
            return outcomes

    assert run(scenario()) == [error, error]


@pytest.mark.parametrize("rows", [1, 3])
def test_estimated_wait_counts_rounds_of_rows(rows: int) -> None:
    engine = FakeStepEngine(rows=rows)
    engine.gate.clear()

    async def scenario() -> float:
        async with started(engine) as scheduler:
            futures = [scheduler.submit((1, i)) for i in range(6)]
            await until(lambda: engine.running == rows, "rows filled")
            wait = scheduler.estimated_wait()
            engine.gate.set()
            await asyncio.gather(*futures)
            return wait

    assert run(scenario()) == pytest.approx(0.1 * -(-6 // rows))


def test_the_engine_is_entered_by_the_thread_that_loaded_it() -> None:
    engine = FakeStepEngine(rows=2)

    async def scenario() -> None:
        async with started(engine) as scheduler:
            await asyncio.gather(*(scheduler.run([(i % 3 + 1, i)]) for i in range(10)))

    run(scenario())
    assert len(engine.threads) == 1
    assert threading.get_ident() not in engine.threads


def test_the_retry_estimate_is_the_admitted_work_at_the_engines_throughput() -> None:
    """Eight requests of five 10-step items each, run one item at a time, on 4 rows: the
    estimate is their drain time (within a wide factor). Counting the items queued and
    running at one item's latency each round would say a fifth of it; dividing the work
    by one row's rate instead of all four's would say four times it."""
    engine = FakeStepEngine(rows=4, step_seconds=0.01)
    requests, items, steps = 8, 5, 10

    async def request(scheduler: StepScheduler[Item, int], ticket: Ticket) -> None:
        for value in range(items):
            await scheduler.run([(steps, value)], ticket)

    async def scenario() -> tuple[float, float]:
        config = SchedulerConfig(engine.rows, 0.0, requests, 30.0)
        scheduler = StepScheduler("fake", engine, config, setup=engine.load, work_of=lambda i: i[0])
        await scheduler.start()
        try:
            await asyncio.gather(*(scheduler.run([(steps, v)]) for v in range(8)))  # measure
            with ExitStack() as places:
                tickets = [
                    places.enter_context(scheduler.admit(work=items * steps))
                    for _ in range(requests)
                ]
                began = time.monotonic()
                work = [asyncio.ensure_future(request(scheduler, t)) for t in tickets]
                await asyncio.sleep(0)  # each request has queued its first item
                estimate = scheduler.estimated_wait()
                await asyncio.gather(*work)
                return estimate, time.monotonic() - began
        finally:
            await scheduler.stop()

    estimate, took = run(scenario())
    assert took / 2.5 <= estimate <= took * 2.5, (estimate, took)
