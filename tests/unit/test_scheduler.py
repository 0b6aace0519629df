"""The scheduler against a small fake backend that records every call it gets."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import pytest

from server.errors import NotReady, Overloaded
from server.scheduler import ModelScheduler
from server.settings import SchedulerConfig


class RecordingBackend:
    """Squares numbers; remembers each batch, its thread and when it started.

    Items are ``(key, value)``: the key decides which items may share a batch, and
    a negative value fails, as a bad input would in a real model.
    """

    def __init__(self, seconds_per_batch: float = 0.0) -> None:
        self.seconds_per_batch = seconds_per_batch
        self.batches: list[list[tuple[str, int]]] = []
        self.started_at: list[float] = []
        self.threads: set[int] = set()
        self.setup_thread: int | None = None

    def setup(self) -> None:
        self.setup_thread = threading.get_ident()

    def key(self, item: tuple[str, int]) -> Hashable:
        return item[0]

    def run(self, items: list[tuple[str, int]]) -> list[int]:
        self.started_at.append(time.monotonic())
        self.threads.add(threading.get_ident())
        self.batches.append(list(items))
        time.sleep(self.seconds_per_batch)
        if any(value < 0 for _, value in items):
            raise ValueError("negative input")
        return [value * value for _, value in items]


def make(
    backend: RecordingBackend,
    max_batch_size: int = 4,
    max_queue_delay_ms: float = 20,
    max_queue_size: int = 100,
) -> ModelScheduler[tuple[str, int], int]:
    config = SchedulerConfig(max_batch_size, max_queue_delay_ms, max_queue_size)
    return ModelScheduler("fake", backend.run, backend.key, config, setup=backend.setup)


@asynccontextmanager
async def started(
    backend: RecordingBackend,
    max_batch_size: int = 4,
    max_queue_delay_ms: float = 20,
    max_queue_size: int = 100,
) -> AsyncIterator[ModelScheduler[tuple[str, int], int]]:
    """A running scheduler over ``backend``, stopped when the block ends."""
    scheduler = make(backend, max_batch_size, max_queue_delay_ms, max_queue_size)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.stop()


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_batches_never_exceed_the_maximum_and_every_item_gets_its_own_result() -> None:
    backend = RecordingBackend(seconds_per_batch=0.01)

    async def scenario() -> list[int]:
        async with started(backend, max_batch_size=4) as scheduler:
            return await scheduler.run([("a", i) for i in range(23)])

    assert run(scenario()) == [i * i for i in range(23)]
    assert max(len(b) for b in backend.batches) == 4
    assert sum(len(b) for b in backend.batches) == 23


def test_a_lone_item_waits_for_the_delay_and_no_longer() -> None:
    backend = RecordingBackend()

    async def scenario() -> float:
        async with started(backend, max_batch_size=8, max_queue_delay_ms=100) as scheduler:
            submitted = time.monotonic()
            await scheduler.run([("a", 3)])
            return backend.started_at[0] - submitted

    waited = run(scenario())
    assert isinstance(waited, float)
    assert 0.09 <= waited < 0.25


def test_a_full_batch_starts_without_waiting_for_the_delay() -> None:
    backend = RecordingBackend()

    async def scenario() -> float:
        async with started(backend, max_batch_size=4, max_queue_delay_ms=5000) as scheduler:
            submitted = time.monotonic()
            await scheduler.run([("a", i) for i in range(4)])
            return backend.started_at[0] - submitted

    waited = run(scenario())
    assert isinstance(waited, float)
    assert waited < 0.5
    assert backend.batches == [[("a", 0), ("a", 1), ("a", 2), ("a", 3)]]


def test_arrival_order_is_kept_across_batches() -> None:
    backend = RecordingBackend(seconds_per_batch=0.005)

    async def scenario() -> None:
        async with started(backend, max_batch_size=3, max_queue_delay_ms=1) as scheduler:
            futures = []
            for i in range(20):
                futures.append(scheduler.submit(("a", i)))
                if i % 4 == 0:
                    await asyncio.sleep(0.002)  # arrivals spread over several batches
            await asyncio.gather(*futures)

    run(scenario())
    order = [value for batch in backend.batches for _, value in batch]
    assert order == list(range(20))
    assert len(backend.batches) > 1


def test_items_with_different_keys_never_share_a_batch_and_the_oldest_leads() -> None:
    backend = RecordingBackend()

    async def scenario() -> list[int]:
        async with started(backend, max_batch_size=8, max_queue_delay_ms=30) as scheduler:
            items = [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("c", 5), ("a", 6)]
            return await scheduler.run(items)

    assert run(scenario()) == [1, 4, 9, 16, 25, 36]
    assert backend.batches == [[("a", 1), ("a", 3), ("a", 6)], [("b", 2), ("b", 4)], [("c", 5)]]


def test_one_failing_item_fails_alone() -> None:
    backend = RecordingBackend()

    async def scenario() -> list[object]:
        async with started(backend, max_batch_size=4, max_queue_delay_ms=20) as scheduler:
            futures = [scheduler.submit(("a", v)) for v in (2, -1, 3, 4)]
            return list(await asyncio.gather(*futures, return_exceptions=True))

    outcomes = run(scenario())
    assert isinstance(outcomes, list)
    assert outcomes[0] == 4 and outcomes[2] == 9 and outcomes[3] == 16
    assert isinstance(outcomes[1], ValueError)
    assert backend.batches[0] == [("a", 2), ("a", -1), ("a", 3), ("a", 4)]  # tried together first


def test_cancelled_items_are_never_computed() -> None:
    backend = RecordingBackend(seconds_per_batch=0.2)

    async def scenario() -> None:
        async with started(backend, max_batch_size=1, max_queue_delay_ms=0) as scheduler:
            first = scheduler.submit(("a", 1))
            await asyncio.sleep(0.05)  # the first item is now being computed
            doomed = asyncio.ensure_future(scheduler.run([("a", 2), ("a", 3)]))
            await asyncio.sleep(0.01)
            doomed.cancel()  # its client went away while it waited
            last = scheduler.submit(("a", 4))
            assert await first == 1
            assert await last == 16

    run(scenario())
    assert [item for batch in backend.batches for item in batch] == [("a", 1), ("a", 4)]


def test_the_model_is_entered_by_one_thread_the_one_that_loaded_it() -> None:
    backend = RecordingBackend()

    async def scenario() -> None:
        async with started(backend, max_batch_size=2, max_queue_delay_ms=1) as scheduler:
            await asyncio.gather(*(scheduler.run([("a", i)]) for i in range(10)))

    run(scenario())
    assert backend.threads == {backend.setup_thread}
    assert backend.setup_thread != threading.get_ident()


def test_admission_refuses_past_max_queue_size_with_a_retry_estimate() -> None:
    backend = RecordingBackend()

    async def scenario() -> None:
        async with started(backend, max_queue_size=2) as scheduler:
            with scheduler.admit(), scheduler.admit():
                with pytest.raises(Overloaded) as refused, scheduler.admit():
                    pass
                assert refused.value.status_code == 429
                assert refused.value.headers()["Retry-After"].isdigit()
            with scheduler.admit():  # places are given back when requests finish
                assert scheduler.admitted == 1

    run(scenario())


def test_a_stopped_scheduler_refuses_work_as_not_ready() -> None:
    backend = RecordingBackend()

    async def scenario() -> None:
        scheduler = make(backend)
        await scheduler.start()
        await scheduler.stop()
        with pytest.raises(NotReady):
            scheduler.submit(("a", 1))
        with pytest.raises(NotReady), scheduler.admit():
            pass

    run(scenario())
