"""Soak: a long mixed load on a real server, and its resident memory over time.

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.soak [--requests 1000] [--warmup 100] [--concurrency 4]
                              [--sample-every 50] [--quick]

One JSON document goes to stdout; progress goes to stderr.

What is done
------------
A real ``python -m server serve`` process (:mod:`benchmarks.server_process`) with the
default settings (batching 8, queue 64, ``whisper-1`` and the embedded voices of
``tts-1`` and ``tts-1-hd``) on 2 CPU threads takes ``--concurrency`` closed-loop
clients. Each sends the next request of one fixed, seeded-shuffled cycle of
``MIX`` (repeated as often as needed), so every kind recurs evenly throughout:

- transcriptions of six different spoken sentences, uploaded as WAV, MP3, FLAC and
  Ogg/Opus, answered as ``json``, ``text``, ``verbose_json`` with word and segment
  timestamps, ``srt``, ``vtt`` and as a server-sent-event stream;
- speech from all six voices (both engines, both models) in ``mp3``, ``wav``,
  ``opus``, ``pcm``, ``aac`` and ``flac``, read as the chunked stream it is, one as
  ``stream_format=sse``;
- requests that must fail: an upload that is not audio (400), an unknown model
  (404), an unknown voice (400), and a speech stream the client leaves after its
  first chunk (the cancel path).

The first ``--warmup`` requests fill the caches and the allocator's pools and are not
measured. The server's resident set size (``VmRSS`` of ``/proc/<pid>/status``) is
read every ``--sample-every`` requests under load, and at two quiet points, when no
request is in flight (the clients wait for the last answer, then a second): after
the warm-up and at the end. Growth is measured between the quiet points, since
under load RSS swings by tens of MiB with the batches and streams in flight.

What is reported
----------------
- ``rss_mb``: ``[requests done, MiB]`` pairs under load, from just after start-up;
- ``rss_after_warmup_mb``, ``rss_final_mb``: the two quiet points;
  ``rss_peak_after_warmup_mb``: the most seen after the warm-up;
- ``growth_mb``: final minus after warm-up; ``peak_growth_mb``: peak minus after warm-up;
- ``settled_growth_mb``: the median RSS of the last quarter of the measured requests
  minus that of the first quarter (sampled every 5 requests, under load). A quiet
  point is one reading, and at one the allocator may just have handed pages back
  (or not): over a short run it can be off by tens of MiB either way. The medians
  of the settled levels see through both that and the spikes of the batches in
  flight, while a leak moves them by three quarters of its total;
- ``by_kind``: per kind of request, the answers by status; ``unexpected``: answers
  that were not what the kind expects (a failed transcription or speech, a wrong
  error status), with a few examples; ``transcription_wer``: mean WER of the
  transcriptions' texts against their sentences;
- ``ok``: ``growth_mb`` and ``settled_growth_mb`` under ``--max-growth-mb`` (100 by
  default), and nothing unexpected.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.server_process import rss_mb, serving
from benchmarks.transcription_load import rounded
from server.encoding import SpeechFormat, encode_all
from tests.speech import SENTENCES, speak, wav_bytes, word_error_rate

SETTINGS: dict[str, Any] = {
    "speech_models": None,  # the embedded voices: tts-1 and tts-1-hd
    "cpu_threads": 2,
    "device": "cpu",
    "compute_type": "int8",
    "log_level": "warning",
    "log_format": "json",
}
"""The server's defaults otherwise (max_batch_size 8, max_queue_size 64, ...)."""
REQUEST_TIMEOUT_S = 300.0
QUIET_SECONDS = 1.0
"""The pause before RSS is read at a quiet point (after the warm-up, at the end)."""
DENSE_EVERY = 5
"""Requests between the RSS samples of the measured phase that the settled levels use."""
MAX_TRANSCRIPTION_WER = 0.2
"""A transcription answer within this WER of its sentence counts as a success."""
MIN_SPEECH_BYTES = 2_000

JSON = dict[str, Any]


def log(message: str) -> None:
    print(f"[soak] {message}", file=sys.stderr, flush=True)


# -- what is sent ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    """HTTP status, or 0 when no answer came."""
    ok: bool
    """The answer is what this kind of request expects."""
    detail: str = ""
    wer: float | None = None


Send = Callable[[httpx.AsyncClient, str], Awaitable[Answer]]


def encoded_clip(text: str, fmt: SpeechFormat) -> bytes:
    """``text`` spoken by the test voice, as a WAV file or encoded by the server's encoder."""
    samples, rate = speak(text)
    if fmt == "wav":
        return wav_bytes(samples, rate)
    return encode_all(fmt, (samples / 32768).astype(np.float32), rate)


def transcript_text(body: str, response_format: str, stream: bool) -> str:
    """The text of a transcription answer, in any response format."""
    if stream:
        for line in reversed(body.splitlines()):
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                if event.get("type") == "transcript.text.done":
                    return str(event["text"])
        return ""
    if response_format in ("json", "verbose_json"):
        return str(json.loads(body)["text"])
    if response_format in ("srt", "vtt"):
        return " ".join(
            line
            for line in body.splitlines()
            if line and "-->" not in line and line != "WEBVTT" and not line.isdigit()
        )
    return body


def transcription(
    text: str, fmt: SpeechFormat, response_format: str = "json", **fields: Any
) -> Send:
    data = encoded_clip(text, fmt)
    filename = f"clip.{'ogg' if fmt == 'opus' else fmt}"
    stream = bool(fields.get("stream"))
    form = {"model": "whisper-1", "response_format": response_format, **fields}

    async def send(client: httpx.AsyncClient, url: str) -> Answer:
        response = await client.post(
            f"{url}/v1/audio/transcriptions", files={"file": (filename, data)}, data=form
        )
        if response.status_code != 200:
            return Answer(response.status_code, False, response.text[:200])
        said = transcript_text(response.text, response_format, stream)
        wer = word_error_rate([(text, said)]) or 0.0
        return Answer(200, wer <= MAX_TRANSCRIPTION_WER, said[:200], wer)

    return send


def speech(
    model: str, voice: str, response_format: str, text: str, stream_format: str = "audio"
) -> Send:
    body = {
        "model": model,
        "voice": voice,
        "input": text,
        "response_format": response_format,
        "stream_format": stream_format,
    }

    async def send(client: httpx.AsyncClient, url: str) -> Answer:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            size = 0
            chunks = []
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if stream_format == "sse":
                    chunks.append(chunk)
        if response.status_code != 200:
            return Answer(response.status_code, False)
        if stream_format == "sse":
            done = b'"speech.audio.done"' in b"".join(chunks)
            return Answer(200, done, "" if done else "no speech.audio.done event")
        return Answer(200, size >= MIN_SPEECH_BYTES, f"{size} bytes")

    return send


def abandoned_speech(model: str, voice: str, text: str) -> Send:
    """A speech stream the client leaves after its first chunk."""
    body = {"model": model, "voice": voice, "input": text, "response_format": "pcm"}

    async def send(client: httpx.AsyncClient, url: str) -> Answer:
        async with client.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            async for _ in response.aiter_bytes():
                break
        return Answer(response.status_code, response.status_code == 200)

    return send


def failing(expected: int, path: str, **request: Any) -> Send:
    async def send(client: httpx.AsyncClient, url: str) -> Answer:
        response = await client.post(f"{url}{path}", **request)
        return Answer(response.status_code, response.status_code == expected)

    return send


def build_mix() -> dict[str, Send]:
    """Every kind of request of the cycle, by name (the clips are made here, once)."""
    s = SENTENCES
    two = f"{s[10]} {s[11]}"
    return {
        "transcribe_wav_json": transcription(s[1], "wav", "json"),
        "transcribe_mp3_text": transcription(s[5], "mp3", "text"),
        "transcribe_flac_verbose_words": transcription(
            s[6],
            "flac",
            "verbose_json",
            **{"timestamp_granularities[]": ["word", "segment"]},
        ),
        "transcribe_opus_srt": transcription(s[7], "opus", "srt"),
        "transcribe_wav_vtt": transcription(s[8], "wav", "vtt"),
        "transcribe_wav_stream": transcription(s[9], "wav", "json", stream="true"),
        "transcribe_mp3_json": transcription(s[12], "mp3", "json"),
        "transcribe_wav_text": transcription(s[13], "wav", "text"),
        "speech_alloy_mp3": speech("tts-1", "alloy", "mp3", s[2]),
        "speech_echo_wav": speech("tts-1", "echo", "wav", s[3]),
        "speech_nova_opus_sse": speech("tts-1-hd", "nova", "opus", s[4], "sse"),
        "speech_onyx_pcm": speech("tts-1", "onyx", "pcm", two),
        "speech_fable_aac": speech("tts-1", "fable", "aac", s[0]),
        "speech_shimmer_flac": speech("tts-1-hd", "shimmer", "flac", s[11]),
        "speech_echo_mp3": speech("tts-1-hd", "echo", "mp3", s[13]),
        "error_not_audio": failing(
            400,
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", b"RIFF\x00\x00\x00\x00WAVEnot audio at all" * 50)},
            data={"model": "whisper-1"},
        ),
        "error_unknown_model": failing(
            404,
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", wav_bytes(*speak(s[0])))},
            data={"model": "no-such-model"},
        ),
        "error_unknown_voice": failing(
            400,
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "no-such-voice", "input": "Hello."},
        ),
        "abandoned_speech_stream": abandoned_speech("tts-1", "alloy", two),
    }


def cycle(names: Sequence[str], seed: int) -> list[str]:
    """One shuffled round of every kind (the order repeats, so every kind recurs evenly)."""
    order = list(names)
    random.Random(seed).shuffle(order)
    return order


# -- the run -----------------------------------------------------------------------------


@dataclass
class Tally:
    by_kind: dict[str, dict[str, int]] = field(default_factory=dict)
    unexpected: list[JSON] = field(default_factory=list)
    unexpected_count: int = 0
    wers: list[float] = field(default_factory=list)

    def add(self, kind: str, answer: Answer) -> None:
        statuses = self.by_kind.setdefault(kind, {})
        statuses[str(answer.status)] = statuses.get(str(answer.status), 0) + 1
        if answer.wer is not None:
            self.wers.append(answer.wer)
        if not answer.ok:
            self.unexpected_count += 1
            if len(self.unexpected) < 5:
                self.unexpected.append(
                    {"kind": kind, "status": answer.status, "detail": answer.detail}
                )


async def load(
    url: str,
    pid: int,
    mix: dict[str, Send],
    order: Sequence[str],
    *,
    requests: int,
    warmup: int,
    concurrency: int,
    sample_every: int,
) -> tuple[Tally, list[tuple[int, float]], list[tuple[int, float]], tuple[float, float], float]:
    """``warmup``, then ``requests`` requests, each phase from ``concurrency`` clients.

    Returns the measured requests' tally; the RSS every ``sample_every`` requests
    done, under load; the RSS every ``DENSE_EVERY`` requests of the measured phase;
    the RSS at the two quiet points (no request in flight: after the warm-up and at
    the end), and the seconds the measured requests took.
    """
    tally = Tally()
    rss: list[tuple[int, float]] = [(0, rss_mb(pid))]
    dense: list[tuple[int, float]] = []
    issued = done = 0
    limits = httpx.Limits(max_connections=concurrency + 2)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        async def one_client(until: int, measured: bool) -> None:
            nonlocal issued, done
            while issued < until:
                n = issued
                issued += 1
                kind = order[n % len(order)]
                try:
                    answer = await mix[kind](client, url)
                except httpx.HTTPError as exc:
                    answer = Answer(0, False, repr(exc))
                done += 1
                if measured:
                    tally.add(kind, answer)
                if done % sample_every == 0:
                    rss.append((done, rss_mb(pid)))
                    log(f"{done}/{warmup + requests} requests, RSS {rss[-1][1]:.1f} MiB")
                if measured and done % DENSE_EVERY == 0:
                    dense.append((done, rss[-1][1] if rss[-1][0] == done else rss_mb(pid)))

        async def phase(until: int, measured: bool) -> float:
            await asyncio.gather(*(one_client(until, measured) for _ in range(concurrency)))
            await asyncio.sleep(QUIET_SECONDS)  # let the last answers' work wind down
            quiet = rss_mb(pid)
            log(f"{done} requests, none in flight: RSS {quiet:.1f} MiB")
            return quiet

        after_warmup = await phase(warmup, measured=False)
        started = time.monotonic()
        final = await phase(warmup + requests, measured=True)
        seconds = time.monotonic() - started - QUIET_SECONDS
    return tally, rss, dense, (after_warmup, final), seconds


def run(
    *,
    requests: int,
    warmup: int,
    concurrency: int = 4,
    sample_every: int = 50,
    max_growth_mb: float = 100.0,
    seed: int = 1,
    malloc_arena_max: int | None = None,
) -> JSON:
    """Start the server, send ``warmup + requests`` requests; the report (see the module)."""
    started = time.monotonic()
    log("making the clips")
    mix = build_mix()
    order = cycle(sorted(mix), seed)
    with tempfile.TemporaryDirectory() as directory:
        log_path = Path(directory) / "server.log"
        env = {} if malloc_arena_max is None else {"MALLOC_ARENA_MAX": str(malloc_arena_max)}
        with serving(Path(directory), log_path=log_path, env=env, **SETTINGS) as (process, url):
            log(f"server ready at {url}, pid {process.pid} (log: {log_path})")
            tally, rss, dense, (after_warmup, final), seconds = asyncio.run(
                load(
                    url,
                    process.pid,
                    mix,
                    order,
                    requests=requests,
                    warmup=warmup,
                    concurrency=concurrency,
                    sample_every=sample_every,
                )
            )
    peak = max([final, *(mb for _, mb in dense)])
    growth = final - after_warmup
    quarter = requests / 4
    first = [mb for n, mb in dense if n <= warmup + quarter] or [after_warmup]
    last = [mb for n, mb in dense if n > warmup + 3 * quarter] or [final]
    settled_start, settled_end = statistics.median(first), statistics.median(last)
    statuses: dict[str, int] = {}
    for by_status in tally.by_kind.values():
        for status, count in by_status.items():
            statuses[status] = statuses.get(status, 0) + count
    return {
        "setup": {
            "settings": {k: v for k, v in SETTINGS.items() if v is not None},
            "speech_models": "default (tts-1, tts-1-hd: the embedded voices)",
            "requests": requests,
            "warmup": warmup,
            "concurrency": concurrency,
            "sample_every": sample_every,
            "kinds": len(mix),
            "seed": seed,
            "malloc_arena_max": malloc_arena_max,
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rss_mb": [[n, round(mb, 1)] for n, mb in rss],
        "rss_start_mb": round(rss[0][1], 1),
        "rss_after_warmup_mb": round(after_warmup, 1),
        "rss_final_mb": round(final, 1),
        "rss_peak_after_warmup_mb": round(peak, 1),
        "growth_mb": round(growth, 1),
        "peak_growth_mb": round(peak - after_warmup, 1),
        "rss_settled_start_mb": round(settled_start, 1),
        "rss_settled_end_mb": round(settled_end, 1),
        "settled_growth_mb": round(settled_end - settled_start, 1),
        "requests_by_status": dict(sorted(statuses.items())),
        "by_kind": dict(sorted(tally.by_kind.items())),
        "unexpected": tally.unexpected_count,
        "unexpected_examples": tally.unexpected,
        "transcription_wer": rounded(sum(tally.wers) / len(tally.wers)) if tally.wers else None,
        "measured_seconds": round(seconds, 1),
        "requests_per_s": round(requests / seconds, 2),
        "ok": growth < max_growth_mb
        and settled_end - settled_start < max_growth_mb
        and tally.unexpected_count == 0,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak",
        description="A long mixed load on a real server; its RSS over time.",
    )
    parser.add_argument("--requests", type=int, default=1000, help="measured requests")
    parser.add_argument("--warmup", type=int, default=100, help="requests before measuring")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--sample-every", type=int, default=50, help="requests between samples")
    parser.add_argument("--max-growth-mb", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1, help="seed of the order of the mix")
    parser.add_argument(
        "--malloc-arena-max",
        type=int,
        help="MALLOC_ARENA_MAX for the server (default: glibc's own, 8 per core)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 + 100 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.warmup, args.requests, args.sample_every = 40, 100, 20
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(
        requests=args.requests,
        warmup=args.warmup,
        concurrency=args.concurrency,
        sample_every=args.sample_every,
        max_growth_mb=args.max_growth_mb,
        seed=args.seed,
        malloc_arena_max=args.malloc_arena_max,
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
