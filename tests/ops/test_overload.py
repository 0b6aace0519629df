"""Backpressure at 3x capacity on a real ``voxserve serve`` process (``benchmarks.overload``).

A shorter run of the benchmark: a closed loop measures the capacity, then Poisson
arrivals at three times that rate overload the server. The queue stays within its
bound, refusals are fast, and what is accepted is answered correctly.
"""

from __future__ import annotations

from benchmarks.overload import REJECTION_P99_BOUND_MS, SETTINGS, WINDOWS_PER_REQUEST, run

OVERLOAD_ARRIVALS = 90
"""The overload lasts at least as long as 90 arrivals take, not a fixed 6 s: at 3x the
capacity about 90 - 90/3 - 16 = 44 of them are refused (22 if the capacity was
underestimated by half), however fast the machine, where in 6 s a busy machine's
slow arrivals left fewer than 10 to refuse."""
CLIENT_SLACK = 10
"""How much slower a typical refusal may look to a client sharing a busy machine."""
SLACK_ADMITTED = 1
"""The admitted bound is checked on an upper bound of it: each answered request's whole
stay in the server, from its access log. A request that has just given its place back
may still be writing its answer when the next one, admitted in that place, has begun,
so one over ``max_queue_size`` can be seen without the bound being broken; the exact
bound is the scheduler's own tests' business."""


def test_at_three_times_capacity_the_queue_stays_bounded_and_refusals_are_fast() -> None:
    report = run(
        ramp=2.0,
        capacity_seconds=4.0,
        overload_seconds=6.0,
        overload_arrivals=OVERLOAD_ARRIVALS,
        factor=3.0,
    )
    print(report)  # shown when an assertion fails
    overload = report["overload"]
    statuses = overload["by_status"]
    bound = SETTINGS["max_queue_size"]

    # it was overloaded: a good share of the requests was refused
    assert statuses.get("429", 0) >= max(10, overload["requests"] // 4), overload
    assert overload["server_rejections"], overload
    # refused or answered, nothing else: no timeouts, no dropped connections
    assert set(statuses) <= {"200", "429"}, statuses

    # the queue never exceeds its bound
    assert overload["metrics_samples"] > 50, overload
    assert 0 < overload["queue_depth_max"] <= bound * WINDOWS_PER_REQUEST, overload
    assert overload["admitted_max_upper_bound"] is not None
    assert overload["admitted_max_upper_bound"] <= bound + SLACK_ADMITTED, overload

    # refusals answer fast. As the server timed them (its access log): within the
    # benchmark's 50 ms at p99. Client-side, from the call to the end of the answer, a
    # busy machine adds its own stalls (at a load average of 14: server-side p99 4.5 ms,
    # client-side p50 54 ms, p99 3.6 s, when the load client itself sent an arrival
    # 2.9 s late), so there the typical refusal is bounded, with CLIENT_SLACK, and the
    # slowest only against the served requests: no refusal waited in the queue.
    assert overload["rejection_server_ms"]["p99"] < REJECTION_P99_BOUND_MS, overload
    rejection = overload["rejection_latency_ms"]
    assert rejection["p50"] < CLIENT_SLACK * REJECTION_P99_BOUND_MS, rejection
    assert rejection["p99"] / 1000 < overload["accepted_latency_s"]["p50"] / 4, overload

    # every accepted request succeeded, with the clip's text
    assert statuses.get("200", 0) > 0
    assert overload["accepted_success_rate"] == 1.0, overload
    assert overload["exact_transcripts"] == statuses["200"], overload
    ok = report["ok"]  # the benchmark's client-side 50 ms is for a quiet machine, as above
    assert ok["queue_within_bound"] and ok["accepted_all_succeed"] and ok["overloaded"], ok
