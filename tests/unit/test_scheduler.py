"""The scheduler against a small fake backend that records every call it gets."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import ExitStack, asynccontextmanager

import pytest

from server.errors import NotReady, Overloaded
from server.scheduler import BatchObserver, BatchScheduler, Ticket
from server.scheduler.workload import RETRY_AFTER_CAP, Throughput
from server.settings import SchedulerConfig


class RecordingBackend:
    """Squares numbers; remembers each batch, its thread and when it started.

    Items are ``(key, value)``: the key decides which items may share a batch, and
    a negative value fails, as a bad input would in a real model. With a ``gate``,
    each batch blocks the worker thread until the gate is set.
    """

    def __init__(self, seconds_per_batch: float = 0.0, gate: threading.Event | None = None) -> None:
        self.seconds_per_batch = seconds_per_batch
        self.gate = gate
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
        if self.gate is not None:
            self.gate.wait(timeout=60)
        time.sleep(self.seconds_per_batch)
        if any(value < 0 for _, value in items):
            raise ValueError("negative input")
        return [value * value for _, value in items]


class RecordingObserver:
    """Keeps what the scheduler reports, as the metrics would count it."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, int]] = []
        self.rejections: list[tuple[str, str]] = []

    def batch_done(
        self, model: str, size: int, queue_waits: Sequence[float], seconds: float
    ) -> None:
        self.batches.append((model, size))

    def rejected(self, model: str, reason: str) -> None:
        self.rejections.append((model, reason))


def make(
    backend: RecordingBackend,
    max_batch_size: int = 4,
    max_queue_delay_ms: float = 20,
    max_queue_size: int = 100,
    max_queue_time: float = 30.0,
    observer: BatchObserver | None = None,
) -> BatchScheduler[tuple[str, int], int]:
    config = SchedulerConfig(max_batch_size, max_queue_delay_ms, max_queue_size, max_queue_time)
    return BatchScheduler(
        "fake", backend.run, backend.key, config, setup=backend.setup, observer=observer
    )


@asynccontextmanager
async def started(
    backend: RecordingBackend,
    max_batch_size: int = 4,
    max_queue_delay_ms: float = 20,
    max_queue_size: int = 100,
    max_queue_time: float = 30.0,
    observer: BatchObserver | None = None,
) -> AsyncIterator[BatchScheduler[tuple[str, int], int]]:
    """A running scheduler over ``backend``, stopped when the block ends."""
    scheduler = make(
        backend, max_batch_size, max_queue_delay_ms, max_queue_size, max_queue_time, observer
    )
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
    assert waited < 2.5  # half the 5 s delay: it did not wait for it
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
                assert refused.value.code == "queue_full"
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


def test_an_item_stuck_behind_a_slow_batch_times_out_uncomputed_and_frees_its_place() -> None:
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    observer = RecordingObserver()

    async def request(scheduler: BatchScheduler[tuple[str, int], int]) -> list[int]:
        with scheduler.admit():
            return await scheduler.run([("a", 2)])

    async def scenario() -> None:
        async with started(
            backend, max_batch_size=1, max_queue_delay_ms=0, max_queue_time=0.2, observer=observer
        ) as scheduler:
            first = scheduler.submit(("a", 1))
            await asyncio.sleep(0.05)  # the first item now holds the worker
            queued_at = time.monotonic()
            with pytest.raises(NotReady) as expired:
                await asyncio.wait_for(request(scheduler), 60)  # a hang guard only
            waited = time.monotonic() - queued_at
            assert not gate.is_set()  # it fired while the worker was still busy
            assert expired.value.code == "queue_timeout"
            assert expired.value.status_code == 503
            assert "0.2 s" in expired.value.message
            assert expired.value.retry_after is not None and expired.value.retry_after >= 0.1
            assert 0.19 <= waited < 1.0
            assert scheduler.admitted == 0  # the request's place is given back
            assert scheduler.queue_depth == 0
            gate.set()
            assert await first == 1
            await asyncio.sleep(0.05)  # time for a (wrong) batch of the expired item

    try:
        run(scenario())
    finally:
        gate.set()
    assert backend.batches == [[("a", 1)]]  # the expired item was never computed
    assert observer.rejections == [("fake", "queue_timeout")]


def test_an_item_taken_into_a_batch_is_not_failed_when_the_batch_runs_past_the_deadline() -> None:
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    observer = RecordingObserver()

    async def scenario() -> list[int]:
        async with started(
            backend, max_batch_size=2, max_queue_delay_ms=0, max_queue_time=0.1, observer=observer
        ) as scheduler:
            running = asyncio.ensure_future(scheduler.run([("a", 3), ("a", 4)]))
            await asyncio.sleep(0.3)  # three times max_queue_time, all inside the batch
            assert not running.done()
            gate.set()
            return await running

    try:
        assert run(scenario()) == [9, 16]
    finally:
        gate.set()
    assert observer.rejections == []
    assert observer.batches == [("fake", 2)]


def test_a_request_being_served_is_not_cut_off_for_the_items_it_queued_behind_itself() -> None:
    """The timeout bounds a request's wait for service, not the length of its work."""
    backend = RecordingBackend(seconds_per_batch=0.06)
    observer = RecordingObserver()

    async def scenario() -> tuple[list[int], BaseException]:
        async with started(
            backend, max_batch_size=1, max_queue_delay_ms=0, max_queue_time=0.1, observer=observer
        ) as scheduler:
            with scheduler.admit() as ticket:
                served = asyncio.ensure_future(
                    scheduler.run([("a", v) for v in range(1, 6)], ticket)  # 0.3 s of work
                )
                await asyncio.sleep(0)
                with scheduler.admit() as other:  # queued behind all five: waits 0.3 s
                    late = scheduler.submit(("a", 9), other)
                    (outcome,) = await asyncio.gather(late, return_exceptions=True)
                assert isinstance(outcome, BaseException)
                return await served, outcome

    results, error = asyncio.run(scenario())
    assert results == [1, 4, 9, 16, 25]
    assert isinstance(error, NotReady) and error.code == "queue_timeout"
    assert observer.rejections == [("fake", "queue_timeout")]
    assert [v for batch in backend.batches for _, v in batch] == [1, 2, 3, 4, 5]


def test_each_expired_item_is_reported_once_and_later_items_still_run() -> None:
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)
    observer = RecordingObserver()

    async def scenario() -> list[object]:
        async with started(
            backend, max_batch_size=4, max_queue_delay_ms=0, max_queue_time=0.1, observer=observer
        ) as scheduler:
            first = scheduler.submit(("a", 1))
            await asyncio.sleep(0.02)
            doomed = [scheduler.submit(("b", v)) for v in (2, 3, 4)]
            outcomes = await asyncio.wait_for(asyncio.gather(*doomed, return_exceptions=True), 60)
            gate.set()
            late = await scheduler.run([("b", 5)])  # the scheduler goes on as before
            return [await first, *outcomes, *late]

    try:
        outcomes = run(scenario())
    finally:
        gate.set()
    assert isinstance(outcomes, list)
    assert outcomes[0] == 1 and outcomes[-1] == 25
    for outcome in outcomes[1:4]:
        assert isinstance(outcome, NotReady) and outcome.code == "queue_timeout"
    assert backend.batches == [[("a", 1)], [("b", 5)]]
    assert observer.rejections == [("fake", "queue_timeout")] * 3


def test_refusals_are_reported_to_the_observer_with_their_reason() -> None:
    backend = RecordingBackend()
    observer = RecordingObserver()

    async def scenario() -> None:
        scheduler = make(backend, max_queue_size=1, observer=observer)
        with pytest.raises(NotReady), scheduler.admit():
            pass
        await scheduler.start()
        with scheduler.admit(), pytest.raises(Overloaded), scheduler.admit():
            pass
        await scheduler.stop()
        with pytest.raises(NotReady):
            scheduler.submit(("a", 1))

    run(scenario())
    assert observer.rejections == [
        ("fake", "not_ready"),
        ("fake", "queue_full"),
        ("fake", "not_ready"),
    ]


def test_the_retry_estimate_counts_the_running_batch_and_the_batches_each_key_makes() -> None:
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)

    async def scenario() -> list[float]:
        async with started(backend, max_batch_size=4, max_queue_delay_ms=0) as scheduler:
            idle = scheduler.estimated_wait()
            first = scheduler.submit(("a", 1))
            await asyncio.sleep(0.05)  # in the worker, not yet timed
            busy = scheduler.estimated_wait()
            waiting = [scheduler.submit(("a", v)) for v in range(5)] + [scheduler.submit(("b", 1))]
            queued = scheduler.estimated_wait()  # 1 running + 2 batches of "a" + 1 of "b"
            gate.set()
            await asyncio.gather(first, *waiting)
            return [idle, busy, queued]

    try:
        estimates = run(scenario())
    finally:
        gate.set()
    assert estimates == pytest.approx([0.1, 0.1, 0.4])


def test_a_finished_or_cancelled_item_leaves_nothing_scheduled_behind() -> None:
    """Its queue timer is cancelled with it, so the loop keeps no reference to it."""
    backend = RecordingBackend()

    async def scenario() -> list[weakref.ref[asyncio.Future[int]]]:
        async with started(backend, max_queue_delay_ms=1, max_queue_time=60) as scheduler:
            done = scheduler.submit(("a", 1))
            cancelled = scheduler.submit(("b", 2))
            cancelled.cancel()
            assert await done == 1
            refs = [weakref.ref(done), weakref.ref(cancelled)]
            del done, cancelled
            await asyncio.sleep(0.01)
            gc.collect()
            return refs

    refs = run(scenario())
    assert isinstance(refs, list)
    assert [ref() for ref in refs] == [None, None]


# -- Retry-After from the work admitted ------------------------------------------------


async def _sequential_request(
    scheduler: BatchScheduler[tuple[str, int], int], ticket: Ticket, items: int
) -> None:
    """A request that keeps one item queued at a time (as speech keeps a few): the queue
    shows almost nothing of the work it was admitted with."""
    for value in range(items):
        await scheduler.run([("a", value)], ticket)


def test_the_retry_estimate_counts_the_work_admitted_not_only_the_items_queued() -> None:
    """Four requests of six items each hold every place, one item queued apiece: the
    estimate is the time their work takes (within a wide factor), where counting the
    queued items would say one round of batches, a sixth of it."""
    backend = RecordingBackend(seconds_per_batch=0.05)
    requests, items = 4, 6

    async def scenario() -> tuple[float, float, float]:
        async with started(
            backend, max_batch_size=2, max_queue_delay_ms=0, max_queue_size=requests
        ) as scheduler:
            await asyncio.gather(*(scheduler.run([("a", v)]) for v in range(8)))  # measure
            with ExitStack() as places:
                tickets = [places.enter_context(scheduler.admit(work=items)) for _ in range(4)]
                began = time.monotonic()
                work = [
                    asyncio.ensure_future(_sequential_request(scheduler, t, items)) for t in tickets
                ]
                await asyncio.sleep(0)  # each request has queued its first item
                estimate = scheduler.estimated_wait()
                with pytest.raises(Overloaded) as refused, scheduler.admit():
                    pass
                await asyncio.gather(*work)
                took = time.monotonic() - began
            assert refused.value.retry_after is not None
            return estimate, refused.value.retry_after, took

    estimate, retry_after, took = asyncio.run(scenario())
    assert took / 2.5 <= estimate <= took * 2.5, (estimate, took)
    assert retry_after == pytest.approx(estimate, rel=0.5)


def test_a_request_whose_work_is_not_known_yet_counts_as_the_recent_average() -> None:
    """A transcription is admitted before its upload is decoded: until it declares its
    work, the average of recent requests' stands in; before any, what it queued."""
    backend = RecordingBackend(seconds_per_batch=0.02)

    async def scenario() -> tuple[float, float, float]:
        async with started(backend, max_batch_size=1, max_queue_delay_ms=0) as scheduler:
            with scheduler.admit() as ticket:  # nothing known, nothing queued
                await scheduler.run([("a", 1)], ticket)
                unknown_first = scheduler.estimated_wait()
            for _ in range(3):
                with scheduler.admit(work=50) as ticket:
                    await scheduler.run([("a", 1)], ticket)
            with scheduler.admit() as ticket:  # declares nothing: as the others
                assumed = scheduler.estimated_wait()
                ticket.work = 50
                declared = scheduler.estimated_wait()
            return unknown_first, assumed, declared

    unknown_first, assumed, declared = asyncio.run(scenario())
    assert unknown_first < 0.5  # one batch's worth, at least 0.1 s
    assert assumed == pytest.approx(declared, rel=0.01)
    assert declared > 3 * unknown_first  # 50 items' worth of batches


def test_the_retry_estimate_is_capped() -> None:
    backend = RecordingBackend(seconds_per_batch=0.01)

    async def scenario() -> float:
        async with started(backend, max_batch_size=1, max_queue_delay_ms=0) as scheduler:
            await scheduler.run([("a", 1)])
            with scheduler.admit(work=1e9):
                return scheduler.estimated_wait()

    assert asyncio.run(scenario()) == RETRY_AFTER_CAP


def test_throughput_is_work_over_busy_time_and_follows_a_change_of_pace() -> None:
    meter = Throughput(horizon=10.0)
    assert meter.rate is None
    for _ in range(10):
        meter.add(units=8, seconds=1.0)  # a batch of 8 per second
    assert meter.rate == pytest.approx(8.0)
    for _ in range(50):  # 50 s of a pace four times slower
        meter.add(units=2, seconds=1.0)
    assert meter.rate == pytest.approx(2.0, rel=0.05)


def _preparing_scheduler(
    backend: RecordingBackend, max_prepare_wait_ms: float
) -> BatchScheduler[tuple[str, int], int]:
    config = SchedulerConfig(
        max_batch_size=8,
        max_queue_delay_ms=1,
        max_queue_size=100,
        max_prepare_wait_ms=max_prepare_wait_ms,
    )
    return BatchScheduler("fake", backend.run, backend.key, config)


def test_a_batch_waits_for_admitted_requests_still_preparing() -> None:
    """Closed-loop clients send together; the one decoded first must not run alone."""
    backend = RecordingBackend()

    async def scenario() -> list[int]:
        scheduler = _preparing_scheduler(backend, max_prepare_wait_ms=60_000)
        await scheduler.start()
        try:
            with scheduler.admit() as first, scheduler.admit() as second:
                assert scheduler.preparing == 2
                early = scheduler.submit(("a", 2), first)
                assert scheduler.preparing == 1
                await asyncio.sleep(0.2)  # far past the 1 ms delay
                assert backend.batches == []  # still waiting for the second upload
                late = scheduler.submit(("a", 3), second)
                return list(await asyncio.wait_for(asyncio.gather(early, late), 30))
        finally:
            await scheduler.stop()

    assert run(scenario()) == [4, 9]
    assert backend.batches == [[("a", 2), ("a", 3)]]


def test_a_request_that_leaves_while_preparing_releases_the_waiting_batch() -> None:
    backend = RecordingBackend()

    async def scenario() -> int:
        scheduler = _preparing_scheduler(backend, max_prepare_wait_ms=60_000)
        await scheduler.start()
        try:
            with scheduler.admit() as ticket:
                future = scheduler.submit(("a", 5), ticket)
                with scheduler.admit():  # a bad upload: refused before it submits anything
                    await asyncio.sleep(0.05)
                return await asyncio.wait_for(future, 30)  # not the minute of patience
        finally:
            await scheduler.stop()

    assert run(scenario()) == 25
    assert backend.batches == [[("a", 5)]]


def test_the_wait_for_preparing_requests_is_bounded() -> None:
    backend = RecordingBackend()

    async def scenario() -> float:
        scheduler = _preparing_scheduler(backend, max_prepare_wait_ms=300)
        await scheduler.start()
        try:
            with scheduler.admit() as ticket, scheduler.admit():  # the second never submits
                submitted = time.monotonic()
                await asyncio.wait_for(scheduler.submit(("a", 1), ticket), 30)
                return backend.started_at[0] - submitted
        finally:
            await scheduler.stop()

    waited = run(scenario())
    assert isinstance(waited, float)
    assert 0.29 <= waited < 20  # the bound is what is under test; the upper margin is wide


def test_workers_compute_that_many_batches_at_once_in_their_own_threads() -> None:
    gate = threading.Event()
    backend = RecordingBackend(gate=gate)

    async def scenario(workers: int) -> tuple[int, list[int]]:
        config = SchedulerConfig(
            max_batch_size=8, max_queue_delay_ms=1, max_queue_size=100, workers=workers
        )
        scheduler = BatchScheduler("fake", backend.run, backend.key, config)
        await scheduler.start()
        try:
            futures = [scheduler.submit((key, n)) for n, key in enumerate("abc")]
            for _ in range(400):  # until the workers are all inside the model (or 20 s)
                if len(backend.batches) >= workers:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # a worker too many would have entered by now
            inside = len(backend.batches)
            gate.set()
            results = list(await asyncio.wait_for(asyncio.gather(*futures), 30))
            return inside, results
        finally:
            await scheduler.stop()

    inside, results = asyncio.run(scenario(2))
    assert inside == 2  # keys a and b, at once; c waits for a free worker
    assert results == [0, 1, 4]
    assert len(backend.threads) == 2
    gate.clear()
    backend.batches.clear()
    backend.threads.clear()
    inside, _ = asyncio.run(scenario(1))
    assert inside == 1
    assert len(backend.threads) == 1
