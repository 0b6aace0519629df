"""Backpressure under overload: offered 3x its capacity, does the server stay bounded?

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.overload [--ramp-seconds 10] [--capacity-seconds 20]
                                  [--overload-seconds 30] [--overload-arrivals 0]
                                  [--factor 3] [--quick]

One JSON document goes to stdout; progress goes to stderr.

What is done
------------
A real ``python -m server serve`` process (:mod:`benchmarks.server_process`) serves
``whisper-1`` (embedded tiny.en, int8, 2 CPU threads) and no speech models, with
explicit scheduler settings: ``max_batch_size`` 8, ``max_queue_size`` 16,
``max_queue_delay_ms`` 5 and a ``max_queue_time`` of 120 s, long enough that no
accepted request is timed out (any 503 would be reported apart). The clip is one
sentence of ``tests.speech.SENTENCES`` spoken by the packaged Piper voice (about
2.8 s, 120 kB of WAV), so a request is one Whisper window and the upload is small.

1. *capacity*: ``2 x max_batch_size`` closed-loop clients (never more than
   ``max_queue_size``, so nothing is refused) keep one request in flight each for
   ``--ramp-seconds`` and then ``--capacity-seconds``, and on until at least
   ``concurrency`` requests have finished after the ramp (one round each: on a busy
   machine a round can take longer than the span; ``CAPACITY_PATIENCE_S`` bounds
   the wait). The capacity is the number of
   clients over the mean latency of the requests that finished in the second span
   (Little's law for a closed loop): a batch of 8 finishes 8 requests at once, so a
   count of completions in a short span jumps by 8 (``completed_per_s`` is that count,
   for comparison). The ramp warms the model and fills the pipeline.
2. *overload*: requests arrive open-loop, as a Poisson process (seeded) at ``--factor``
   times that rate, for ``--overload-seconds`` or for as long as ``--overload-arrivals``
   arrivals take at that rate, whichever is longer (an overload measured in arrivals
   refuses as large a share on a slow machine as on a fast one: at a factor of 3, about
   two thirds of the arrivals less the queue's places); each arrival is sent at once on its
   own connection-pooled task, however many are outstanding, so the client never
   holds arrivals back (``arrival_lag_ms`` shows how late it sent them). Every
   request's status, error code and latency are recorded client-side, from the call
   to the last byte of the answer. Meanwhile ``/metrics`` is scraped every 50 ms for
   ``voxserve_queue_depth{model="whisper-1"}`` and ``voxserve_requests_in_flight``.

What is reported
----------------
- ``by_status`` / ``by_code``: answers by HTTP status and by error code (0: no answer);
- ``rejection_latency_ms``: p50/p95/p99/max of the 429s, client-side;
  ``rejection_server_ms``: the same 429s as the server timed them (its access log:
  from its first middleware to the end of the answer), to tell the two sides apart;
- ``accepted_latency_s``: p50/p99/max of the requests not refused with 429;
- ``queue_depth_max`` against ``queue_depth_bound`` (``max_queue_size`` x 1 window per
  request); ``in_flight_max``: every API request being handled, refusals included;
- ``admitted_max_upper_bound``: the most accepted (200) requests the server held at
  once, from its access log (``time`` minus ``duration_ms``). The server does not
  export its admitted count; a request's whole stay in the server contains its
  admission, so this is an upper bound on ``admitted`` (it also counts the upload's
  read and the answer's rendering around it), against ``max_queue_size``;
- ``offered_over_served``: the offered rate over the rate of 200s during the overload,
  the overload factor as it turned out (the closed-loop capacity is an estimate: on a
  small shared machine it varies by a third from run to run);
- ``accepted_success_rate``: accepted requests answered 200 whose text is within a
  WER of 0.1 of the clip's sentence; ``mean_wer`` over the 200s;
- ``ok``: ``queue_within_bound``, ``rejections_p99_under_50ms``,
  ``accepted_all_succeed``, and ``overloaded`` (some requests were in fact refused).

The load client shares the machine with the server, as in the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.server_process import metric, serving
from benchmarks.transcription_load import percentile, rounded
from tests.speech import SENTENCES, duration_of, spoken_wav, word_error_rate

MODEL = "whisper-1"
CLIP_TEXT = SENTENCES[0]
SETTINGS: dict[str, Any] = {
    "max_batch_size": 8,
    "max_queue_size": 16,
    "max_queue_delay_ms": 5.0,
    "max_queue_time": 120.0,
    "cpu_threads": 2,
    "device": "cpu",
    "compute_type": "int8",
    "speech_models": [],
    "log_level": "info",
    "log_format": "json",
}
WINDOWS_PER_REQUEST = 1
"""The clip is far shorter than Whisper's 30 s window."""
REJECTION_P99_BOUND_MS = 50.0
SUCCESS_WER = 0.1
SCRAPE_INTERVAL_S = 0.05
REQUEST_TIMEOUT_S = 300.0
CAPACITY_PATIENCE_S = 600.0
"""The longest the capacity phase waits for its first round of completions: only a
server that answers nothing at all runs into it."""

JSON = dict[str, Any]


def log(message: str) -> None:
    print(f"[overload] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Clip:
    wav: bytes
    text: str

    @classmethod
    def make(cls, text: str = CLIP_TEXT) -> Clip:
        return cls(spoken_wav(text), text)


@dataclass(frozen=True)
class Outcome:
    status: int
    """HTTP status, or 0 when no answer came (timeout, connection error)."""
    code: str | None
    """The error's ``code`` (``queue_full``, ``queue_timeout``, ...) or the exception's name."""
    seconds: float
    text: str
    sent_at: float
    """``time.monotonic()`` when the request was sent."""
    lag: float = 0.0
    """Seconds between its scheduled arrival and its sending (open loop only)."""


@dataclass
class Samples:
    queue_depth: list[float] = field(default_factory=list)
    in_flight: list[float] = field(default_factory=list)
    scrape_seconds: list[float] = field(default_factory=list)


def rejections_by_reason(exposition: str) -> dict[str, float]:
    """``voxserve_rejections_total`` as ``{"<model>/<reason>": count}`` (model '' is the route)."""
    counts: dict[str, float] = {}
    for model, reason, value in re.findall(
        r'^voxserve_rejections_total\{model="([^"]*)",reason="([^"]*)"\} (\S+)$',
        exposition,
        flags=re.MULTILINE,
    ):
        counts[f"{model or '(admission middleware)'}/{reason}"] = float(value)
    return counts


async def post_clip(
    client: httpx.AsyncClient, url: str, clip: Clip, scheduled: float | None = None
) -> Outcome:
    sent_at = time.monotonic()
    lag = 0.0 if scheduled is None else sent_at - scheduled
    started = time.perf_counter()
    try:
        response = await client.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip.wav, "audio/wav")},
            data={"model": MODEL, "response_format": "json"},
        )
    except httpx.HTTPError as exc:
        return Outcome(0, type(exc).__name__, time.perf_counter() - started, "", sent_at, lag)
    seconds = time.perf_counter() - started
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code == 200:
        return Outcome(200, None, seconds, str(body.get("text", "")), sent_at, lag)
    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
    return Outcome(response.status_code, code, seconds, "", sent_at, lag)


async def closed_loop(
    client: httpx.AsyncClient,
    url: str,
    clip: Clip,
    concurrency: int,
    ramp: float,
    seconds: float,
    patience: float = CAPACITY_PATIENCE_S,
) -> tuple[list[Outcome], float]:
    """``concurrency`` clients, one request in flight each, for ``ramp + seconds`` and
    until ``concurrency`` requests have succeeded after the ramp; those requests, and
    how long the counted span lasted.

    Only the requests that finish inside the counted span are returned: the first
    ``ramp`` seconds fill the pipeline (and warm the model), and the requests still
    in flight at the end are waited for but not counted, so neither the start nor the
    tail, when fewer than ``concurrency`` are in flight, dilutes the rate. The span is
    ``seconds`` long on a machine that serves a round of requests in that time, and
    stretched to the end of the first round on one that does not (a busy one), so
    that a capacity is measured at all; ``patience`` seconds after the ramp it ends
    regardless, and the caller finds no request finished.
    """
    start = time.monotonic()
    counted_from = start + ramp
    finished: list[float] = []
    """When each request that succeeded inside the span finished."""
    end: float | None = None

    def over() -> bool:
        nonlocal end
        if end is None:
            now = time.monotonic()
            span = now - counted_from
            if (span >= seconds and len(finished) >= concurrency) or span >= patience:
                end = now
        return end is not None

    async def one_client() -> list[Outcome]:
        outcomes = []
        while not over():
            outcome = await post_clip(client, url, clip)
            outcomes.append(outcome)
            if outcome.status == 200 and outcome.sent_at + outcome.seconds >= counted_from:
                finished.append(outcome.sent_at + outcome.seconds)
        return outcomes

    per_client = await asyncio.gather(*(one_client() for _ in range(concurrency)))
    assert end is not None  # every client stopped because the span was over
    counted = [
        o for outs in per_client for o in outs if counted_from <= o.sent_at + o.seconds <= end
    ]
    return counted, end - counted_from


async def open_loop(
    client: httpx.AsyncClient, url: str, clip: Clip, rate: float, seconds: float, seed: int
) -> list[Outcome]:
    """Poisson arrivals at ``rate`` per second for ``seconds``; every one sent when due."""
    rng = random.Random(seed)
    start = time.monotonic()
    arrivals = []
    t = rng.expovariate(rate)
    while t < seconds:
        arrivals.append(start + t)
        t += rng.expovariate(rate)
    tasks = []
    for due in arrivals:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post_clip(client, url, clip, scheduled=due)))
    return list(await asyncio.gather(*tasks))


async def scrape_metrics(url: str, samples: Samples, stop: asyncio.Event) -> None:
    """``/metrics`` every ``SCRAPE_INTERVAL_S`` until ``stop``, on its own connection."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                text = (await client.get(f"{url}/metrics")).text
            except httpx.HTTPError:
                text = None
            if text is not None:
                samples.scrape_seconds.append(time.perf_counter() - started)
                samples.queue_depth.append(metric(text, "voxserve_queue_depth", model=MODEL))
                samples.in_flight.append(metric(text, "voxserve_requests_in_flight"))
            pause = SCRAPE_INTERVAL_S - (time.perf_counter() - started)
            if pause > 0:
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)


def max_overlap(intervals: Sequence[tuple[float, float]]) -> int:
    """The most intervals that hold one instant (an end before a start at a tie)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


@dataclass(frozen=True)
class AccessLog:
    """What the server's own access lines say about the overload phase."""

    admitted_max_upper_bound: int | None
    rejection_seconds: list[float]
    """Server-side time of each 429: from the first middleware to the end of the answer."""

    @classmethod
    def read(cls, log_path: Path, since_wall: float) -> AccessLog:
        accepted = []
        rejected = []
        for line in log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("route") != "/v1/audio/transcriptions":
                continue
            end = datetime.fromisoformat(record["time"].replace("Z", "+00:00")).timestamp()
            seconds = float(record["duration_ms"]) / 1000
            if end < since_wall:
                continue
            if record.get("status") == 200:
                accepted.append((end - seconds, end))
            elif record.get("status") == 429:
                rejected.append(seconds)
        return cls(max_overlap(accepted) if accepted else None, rejected)


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def latency_summary(seconds: Sequence[float], in_ms: bool) -> JSON:
    scale = ms if in_ms else rounded
    return {
        "n": len(seconds),
        "p50": scale(percentile(seconds, 50)),
        "p95": scale(percentile(seconds, 95)),
        "p99": scale(percentile(seconds, 99)),
        "max": scale(max(seconds) if seconds else None),
    }


def count_by(values: Sequence[object]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[str(value)] = counts.get(str(value), 0) + 1
    return dict(sorted(counts.items()))


def overload_report(
    outcomes: Sequence[Outcome],
    samples: Samples,
    clip: Clip,
    seconds: float,
    settings: JSON,
    access: AccessLog,
) -> JSON:
    rejected = [o for o in outcomes if o.status == 429]
    accepted = [o for o in outcomes if o.status != 429]
    answered = [o for o in accepted if o.status == 200]
    wers = [word_error_rate([(clip.text, o.text)]) or 0.0 for o in answered]
    succeeded = sum(1 for w in wers if w <= SUCCESS_WER)
    queue_bound = settings["max_queue_size"] * WINDOWS_PER_REQUEST
    queue_max = max(samples.queue_depth, default=0.0)
    rejection_p99 = percentile([o.seconds for o in rejected], 99)
    return {
        "seconds": seconds,
        "requests": len(outcomes),
        "by_status": count_by([o.status for o in outcomes]),
        "by_code": count_by([o.code for o in outcomes if o.status != 200]),
        "rejection_latency_ms": latency_summary([o.seconds for o in rejected], in_ms=True),
        "rejection_server_ms": latency_summary(access.rejection_seconds, in_ms=True),
        "accepted_latency_s": latency_summary([o.seconds for o in accepted], in_ms=False),
        "accepted_requests_per_s": round(len(answered) / seconds, 3),
        "queue_depth_max": queue_max,
        "queue_depth_bound": queue_bound,
        "in_flight_max": max(samples.in_flight, default=0.0),
        "admitted_max_upper_bound": access.admitted_max_upper_bound,
        "admitted_bound": settings["max_queue_size"],
        "metrics_samples": len(samples.queue_depth),
        "metrics_scrape_ms": latency_summary(samples.scrape_seconds, in_ms=True),
        "arrival_lag_ms": latency_summary([o.lag for o in outcomes], in_ms=True),
        "mean_wer": rounded(sum(wers) / len(wers)) if wers else None,
        "exact_transcripts": sum(1 for w in wers if w == 0),
        "accepted_success_rate": rounded(succeeded / len(accepted)) if accepted else None,
        "ok": {
            "queue_within_bound": bool(samples.queue_depth) and queue_max <= queue_bound,
            "rejections_p99_under_50ms": rejection_p99 is not None
            and rejection_p99 * 1000 < REJECTION_P99_BOUND_MS,
            "accepted_all_succeed": bool(accepted) and succeeded == len(accepted),
            "overloaded": bool(rejected),
        },
    }


async def measure(
    url: str,
    clip: Clip,
    settings: JSON,
    *,
    capacity_seconds: float,
    overload_seconds: float,
    overload_arrivals: int,
    factor: float,
    ramp: float,
    seed: int,
) -> tuple[JSON, float]:
    """The capacity phase and the overload phase on a running server; the wall time
    the overload started at, for reading the access log."""
    concurrency = min(2 * settings["max_batch_size"], settings["max_queue_size"])
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        log(f"capacity: {concurrency} closed-loop clients, {ramp:g} s + {capacity_seconds:g} s")
        outcomes, counted_seconds = await closed_loop(
            client, url, clip, concurrency, ramp, capacity_seconds
        )
        done = [o for o in outcomes if o.status == 200]
        if not done:
            raise RuntimeError(f"no request finished in the capacity phase: {outcomes[:3]}")
        mean_latency = sum(o.seconds for o in done) / len(done)
        capacity_rps = concurrency / mean_latency  # Little's law
        capacity = {
            "concurrency": concurrency,
            "ramp_seconds": ramp,
            "seconds": round(counted_seconds, 2),
            "requests": len(outcomes),
            "completed_per_s": round(len(done) / counted_seconds, 3),
            "by_status": count_by([o.status for o in outcomes]),
            "latency_s": latency_summary([o.seconds for o in done], in_ms=False),
            "wer": rounded(word_error_rate([(clip.text, o.text) for o in done])),
        }
        offered_rps = factor * capacity_rps
        overload_seconds = max(overload_seconds, overload_arrivals / offered_rps)
        log(
            f"capacity {capacity_rps:.2f} req/s; offering {offered_rps:.2f} req/s"
            f" for {overload_seconds:.1f} s"
        )
        samples = Samples()
        stop = asyncio.Event()
        scraper = asyncio.create_task(scrape_metrics(url, samples, stop))
        before = (await client.get(f"{url}/metrics")).text
        started_wall = time.time()
        cpu_before = resource.getrusage(resource.RUSAGE_SELF)
        outcomes = await open_loop(client, url, clip, offered_rps, overload_seconds, seed)
        cpu_after = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        await scraper
        after = (await client.get(f"{url}/metrics")).text
    rejections = {
        key: value - rejections_by_reason(before).get(key, 0.0)
        for key, value in rejections_by_reason(after).items()
    }
    client_cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (
        cpu_before.ru_utime + cpu_before.ru_stime
    )
    report = {
        "capacity": capacity,
        "capacity_rps": round(capacity_rps, 3),
        "offered_rps": round(offered_rps, 3),
        "overload_seconds": round(overload_seconds, 2),
        "samples": samples,
        "outcomes": outcomes,
        "server_rejections": {k: v for k, v in rejections.items() if v},
        "client_cpu_s": round(client_cpu, 2),
    }
    return report, started_wall


def run(
    *,
    capacity_seconds: float,
    overload_seconds: float,
    overload_arrivals: int = 0,
    factor: float = 3.0,
    ramp: float = 10.0,
    seed: int = 1,
    settings: JSON | None = None,
) -> JSON:
    """Start the server, measure its capacity, overload it; the report (see the module)."""
    settings = {**SETTINGS, **(settings or {})}
    started = time.monotonic()
    clip = Clip.make()
    with tempfile.TemporaryDirectory() as directory:
        log_path = Path(directory) / "server.log"
        with serving(Path(directory), log_path=log_path, **settings) as (_, url):
            log(f"server ready at {url} (log: {log_path})")
            measured, started_wall = asyncio.run(
                measure(
                    url,
                    clip,
                    settings,
                    capacity_seconds=capacity_seconds,
                    overload_seconds=overload_seconds,
                    overload_arrivals=overload_arrivals,
                    factor=factor,
                    ramp=ramp,
                    seed=seed,
                )
            )
        access = AccessLog.read(log_path, started_wall)
    outcomes: list[Outcome] = measured.pop("outcomes")
    samples: Samples = measured.pop("samples")
    overloaded_for = measured.pop("overload_seconds")  # stretched to the arrivals asked for
    overload = overload_report(outcomes, samples, clip, overloaded_for, settings, access)
    ok = overload.pop("ok")
    overload["server_rejections"] = measured.pop("server_rejections")
    overload["client_cpu_s"] = measured.pop("client_cpu_s")
    served = overload["accepted_requests_per_s"]
    overload["offered_over_served"] = round(measured["offered_rps"] / served, 2) if served else None
    return {
        "setup": {
            "settings": settings,
            "clip": {
                "text": clip.text,
                "seconds": round(duration_of(clip.wav), 2),
                "bytes": len(clip.wav),
            },
            "factor": factor,
            "capacity_ramp_seconds": ramp,
            "capacity_seconds": capacity_seconds,
            "overload_seconds": overload_seconds,
            "overload_arrivals": overload_arrivals,
            "arrivals": "poisson",
            "seed": seed,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        **measured,
        "overload": overload,
        "ok": ok,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overload",
        description="Offer a real server a multiple of its capacity; check its backpressure.",
    )
    parser.add_argument("--capacity-seconds", type=float, default=20.0)
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument(
        "--overload-arrivals",
        type=int,
        default=0,
        help="overload for at least as long as this many arrivals take",
    )
    parser.add_argument("--factor", type=float, default=3.0, help="offered rate / capacity")
    parser.add_argument(
        "--ramp-seconds", type=float, default=10.0, help="closed loop before capacity is counted"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the Poisson arrivals")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 s + 5 s, then 8 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.ramp_seconds, args.capacity_seconds, args.overload_seconds = 3.0, 5.0, 8.0
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(
        capacity_seconds=args.capacity_seconds,
        overload_seconds=args.overload_seconds,
        overload_arrivals=args.overload_arrivals,
        factor=args.factor,
        ramp=args.ramp_seconds,
        seed=args.seed,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
