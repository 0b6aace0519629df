"""The torch Whisper engine on a GPU: correctness, throughput, and what a step costs.

One command, JSON out, for a box with torch, transformers, tokenizers and numpy
and nothing else (no network, no faster-whisper, CTranslate2, PyAV or server)::

    python -m benchmarks.gpu_whisper --bundle .gpu --out result.json

``--bundle`` is what ``python -m benchmarks.gpu_prepare`` wrote on a full install
(``make gpu-bundle``): Whisper tiny.en as CTranslate2 int8 (the packaged weights,
quantized as CTranslate2 quantizes them, to halve what is carried), Whisper base's
tokenizer, a few windows of real test speech, and the text the CPU engine wrote
for each (float32). Sections of the JSON:

``correctness``
    tiny.en converted from the bundle's CTranslate2 weights by our converter, run
    on the device in each ``--dtypes`` precision through the running batch; its
    text per window must equal the CPU float32 text (``text_equal``).

``throughput``
    Random weights (std 0.02, labelled so) in large-v3's and large-v3-turbo's
    shapes, float16 (``--throughput-dtype``) with SDPA and CUDA graphs. Each
    window's length is drawn from a log-uniform distribution over 10-150 tokens
    (median 39, mean 52; most real requests are short utterances): the end of
    text is suppressed until then, and forced there. A closed loop of C clients
    (C = ``--concurrency``) each keep one 30-s window in flight; windows are
    admitted first come, first served into free rows by the server scheduler's
    rule. Two modes on the
    same engine and rows: ``continuous`` (a window joins at the next step, leaves
    as it ends) and ``whole`` (a batch is formed only when the engine is idle,
    and runs until its longest window ends). Reported: windows/s and the p50/p95
    latency from a window's submission to its result.

``mixed``
    The real tiny.en weights on the bundle's speech, C=8 clients, half sending
    short windows (a sentence, about 3 s) and half 30-s windows: the short
    windows' p50 latency and the throughput, continuous against whole.

``kernels``
    Encoder milliseconds per window and decode-step milliseconds, at batch 1, 8,
    32 and 64, for each shape.

``--shapes tiny --device cpu`` runs every section end to end on a CPU with toy
shapes in seconds; a test does exactly that.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.base import SAMPLE_RATE, DecodingOptions, TranscriptionItem, WindowTranscript
from models.ct2_convert import convert_whisper
from models.whisper_tokenizer import WhisperTokenizer
from models.whisper_torch import WhisperTorchEngine, resolve_dtype

LARGE_V3: dict[str, Any] = {
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 32,
    "encoder_attention_heads": 20,
    "decoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "vocab_size": 51866,
}
SHAPES: dict[str, dict[str, Any]] = {
    "large-v3": LARGE_V3,
    "large-v3-turbo": {**LARGE_V3, "decoder_layers": 4},
    "tiny": {
        "d_model": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "encoder_attention_heads": 4,
        "decoder_attention_heads": 4,
        "encoder_ffn_dim": 128,
        "decoder_ffn_dim": 128,
        "num_mel_bins": 80,
        "vocab_size": 51865,
    },
}
"""Model shapes for the random-weight runs; ``tiny`` is for a CPU smoke run."""

MIN_TOKENS, MAX_TOKENS = 10, 150


STARTED = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- a closed loop over the engine ---------------------------------------------------------


@dataclass
class LoopResult:
    windows: int
    seconds: float
    latencies: list[float]
    steps: int
    mean_rows: float

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.latencies)
        return {
            "windows": self.windows,
            "windows_per_s": round(self.windows / self.seconds, 2),
            "latency_p50_s": round(statistics.median(ordered), 4),
            "latency_p95_s": round(ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)], 4),
            "steps": self.steps,
            "ms_per_step": round(1000 * self.seconds / max(self.steps, 1), 3),
            "mean_rows_per_step": round(self.mean_rows, 2),
        }


def closed_loop(
    engine: WhisperTorchEngine,
    clients: Sequence[Callable[[int], TranscriptionItem]],
    windows: int,
    *,
    continuous: bool,
    on_done: Callable[[int, TranscriptionItem, WindowTranscript, float], None] | None = None,
    delay: float = 0.005,
) -> LoopResult:
    """Each client keeps one window in flight until ``windows`` have been submitted.

    ``clients[c](n)`` is client c's n-th window. Queued windows enter free rows in
    arrival order, by the server's rule (``server.scheduler.rows``): at once into an
    idle engine, else once ``admission_batch`` (or as many as there are free rows)
    are queued or the oldest has waited ``delay`` seconds; in whole mode only when
    no row is running.
    """
    queue: deque[tuple[int, TranscriptionItem, float]] = deque()
    submitted = 0
    sent = [0] * len(clients)

    def submit(client: int, now: float) -> None:
        nonlocal submitted
        if submitted < windows:
            queue.append((client, clients[client](sent[client]), now))
            sent[client] += 1
            submitted += 1

    start = time.perf_counter()
    for client in range(len(clients)):
        submit(client, start)
    running: dict[int, tuple[int, TranscriptionItem, float]] = {}
    latencies: list[float] = []
    steps = rows_total = 0
    while queue or running:
        if queue and (not running or (continuous and _admit(engine, queue, delay))):
            free = engine.free_rows()
            batch = [(row, queue.popleft()) for row in free[: len(queue)]]
            failed = engine.admit([(row, item) for row, (_, item, _) in batch])
            if failed:
                raise RuntimeError(f"admission failed: {failed[0][1]!r}")
            running.update(batch)
        rows_total += engine.running
        finished = engine.step()
        steps += 1
        now = time.perf_counter()
        for row, outcome in finished:
            if isinstance(outcome, BaseException):
                raise outcome
            client, item, at = running.pop(row)
            latencies.append(now - at)
            if on_done is not None:
                on_done(client, item, outcome, now - at)
            submit(client, now)
    seconds = time.perf_counter() - start
    return LoopResult(len(latencies), seconds, latencies, steps, rows_total / max(steps, 1))


def _admit(
    engine: WhisperTorchEngine, queue: deque[tuple[int, TranscriptionItem, float]], delay: float
) -> bool:
    free = engine.rows - engine.running
    if not free:
        return False
    waited = time.perf_counter() - queue[0][2]
    return len(queue) >= min(engine.admission_batch, free) or waited >= delay


# -- throughput on random weights ----------------------------------------------------------


def random_model(shape: str, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    config = WhisperConfig(**SHAPES[shape], init_std=0.02, max_target_positions=448)
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = WhisperForConditionalGeneration(config)
    return model.to(dtype).eval()


class Lengths:
    """Each window's target length, log-uniform over 10-150 tokens, by window index."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.by_window: dict[int, int] = {}

    def draw(self, window: int) -> int:
        if window not in self.by_window:
            value = math.exp(self.rng.uniform(math.log(MIN_TOKENS), math.log(MAX_TOKENS)))
            self.by_window[window] = round(value)
        return self.by_window[window]

    def limits(self, item: TranscriptionItem) -> tuple[int, int]:
        target = self.draw(int(item.offset))
        return target, target + 1


def noise_window(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.05 * rng.standard_normal(30 * SAMPLE_RATE)).astype(np.float32)


def throughput(
    shape: str,
    tokenizer: WhisperTokenizer,
    device: torch.device,
    *,
    dtype: torch.dtype,
    rows: int,
    concurrency: Sequence[int],
    windows_per_client: int,
    graphs: bool,
) -> dict[str, Any]:
    started = time.perf_counter()
    model = random_model(shape, device, dtype)
    lengths = Lengths(seed=1)
    engine = WhisperTorchEngine.from_model(
        model, tokenizer, rows=rows, cuda_graphs=graphs, length_limits=lengths.limits
    )
    log(f"{shape}: model and graphs ready in {time.perf_counter() - started:.1f} s")
    audio = [noise_window(k) for k in range(8)]
    counter = [0]
    options = DecodingOptions(language="en")

    def client(_: int) -> Callable[[int], TranscriptionItem]:
        def next_window(_: int) -> TranscriptionItem:
            index = counter[0]
            counter[0] += 1
            return TranscriptionItem(audio[index % len(audio)], float(index), options)

        return next_window

    closed_loop(engine, [client(c) for c in range(4)], 8, continuous=True)  # warm-up
    result: dict[str, Any] = {
        "weights": "random (std 0.02), not a trained model",
        "shape": SHAPES[shape],
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows,
        "cuda_graphs": graphs and device.type == "cuda",
        "target_tokens": f"log-uniform {MIN_TOKENS}-{MAX_TOKENS}, end of text forced there",
        "levels": {},
    }
    for level in concurrency:
        windows = max(level * windows_per_client, 2 * windows_per_client)
        row: dict[str, Any] = {}
        for mode in ("continuous", "whole"):
            counter[0] = 0
            clients = [client(c) for c in range(level)]
            outcome = closed_loop(engine, clients, windows, continuous=mode == "continuous")
            row[mode] = outcome.summary()
            log(f"{shape} C={level} {mode}: {row[mode]}")
        row["continuous_over_whole"] = round(
            row["continuous"]["windows_per_s"] / row["whole"]["windows_per_s"], 2
        )
        result["levels"][str(level)] = row
    result["kernels"] = kernels(engine, device, [b for b in (1, 8, 32, 64) if b <= rows])
    del engine, model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def kernels(engine: WhisperTorchEngine, device: torch.device, batches: Sequence[int]) -> Any:
    """Milliseconds: one encoder pass per window, and one decode step, per batch size."""
    encoder = engine.model.model.encoder
    mels = engine.model.config.num_mel_bins
    out: dict[str, dict[str, float]] = {
        "encoder_ms_per_window": {},
        "decode_step_ms": {},
        "decode_step_ms_without_graph": {},
    }
    runner = engine._runner
    for batch in batches:
        features = torch.randn(batch, mels, 3000, device=device, dtype=engine.dtype)
        with torch.inference_mode():
            encoder(input_features=features)
            sync(device)
            repeats = 3
            start = time.perf_counter()
            for _ in range(repeats):
                encoder(input_features=features)
            sync(device)
        seconds = (time.perf_counter() - start) / repeats
        out["encoder_ms_per_window"][str(batch)] = round(1000 * seconds / batch, 3)
        if batch <= 8 and engine._encoder._graphs:
            with torch.inference_mode():
                start = time.perf_counter()
                rows = torch.arange(batch, device=device)
                for _ in range(repeats):
                    engine._encoder.admit(features, rows)
                sync(device)
            seconds = (time.perf_counter() - start) / repeats
            graphed = out.setdefault("encoder_ms_per_window_graph", {})
            graphed[str(batch)] = round(1000 * seconds / batch, 3)
        with torch.inference_mode():
            runner.positions[:batch] = 100
            runner.step(batch)
            sync(device)
            repeats = 20
            start = time.perf_counter()
            for _ in range(repeats):
                runner.step(batch)
            sync(device)
        out["decode_step_ms"][str(batch)] = round(1000 * (time.perf_counter() - start) / repeats, 3)
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(repeats):
                runner._step(runner.bucket(batch))
            sync(device)
        eager = 1000 * (time.perf_counter() - start) / repeats
        out["decode_step_ms_without_graph"][str(batch)] = round(eager, 3)
    with torch.inference_mode():
        runner.positions.zero_()
    return out


# -- correctness and the mixed workload on real weights ----------------------------------------


def load_bundle(bundle: Path) -> tuple[Path, list[np.ndarray], dict[str, Any]]:
    speech = np.load(bundle / "speech.npz")
    windows = [speech[key].astype(np.float32) for key in sorted(speech.files)]
    expected = json.loads((bundle / "expected.json").read_text())
    return bundle / "tiny.en-int8", windows, expected


def correctness(
    weights: Path,
    windows: list[np.ndarray],
    expected: dict[str, Any],
    device: torch.device,
    dtypes: Sequence[str],
    cache: Path,
    graphs: bool,
) -> dict[str, Any]:
    converted = convert_whisper(weights, cache)
    items = [TranscriptionItem(audio) for audio in windows]
    report: dict[str, Any] = {"windows": len(items), "reference": expected["reference"]}
    for dtype in dtypes:
        engine = WhisperTorchEngine(
            converted, device=str(device), dtype=dtype, rows=len(items), cuda_graphs=graphs
        )
        engine.load()
        texts = Texts()
        clients = [lambda _, i=i: items[i] for i in range(len(items))]
        closed_loop(engine, clients, len(items), continuous=True, on_done=texts.record)
        got = [texts.by_client[i] for i in range(len(items))]
        mismatched = [
            {"window": i, "cpu": want, "device": have}
            for i, (want, have) in enumerate(zip(expected["texts"], got, strict=True))
            if want != have
        ]
        report[dtype] = {"text_equal": not mismatched, "mismatched": mismatched}
        log(f"correctness {dtype}: {mismatched or 'equal'}")
    return report


class Texts:
    """Each client's last text."""

    def __init__(self) -> None:
        self.by_client: dict[int, str] = {}

    def record(
        self, client: int, _: TranscriptionItem, outcome: WindowTranscript, __: float
    ) -> None:
        self.by_client[client] = outcome.text


class ShortLatencies:
    """Latencies of the windows that were short."""

    def __init__(self, short: set[int]) -> None:
        self.short = short
        self.seconds: list[float] = []

    def record(self, _: int, item: TranscriptionItem, __: WindowTranscript, seconds: float) -> None:
        if id(item) in self.short:
            self.seconds.append(seconds)


def mixed(
    weights: Path,
    windows: list[np.ndarray],
    device: torch.device,
    cache: Path,
    *,
    clients: int,
    windows_total: int,
    graphs: bool,
) -> dict[str, Any]:
    """Half the clients send a sentence, half a 30-s window; short-window latency matters."""
    converted = convert_whisper(weights, cache)
    engine = WhisperTorchEngine(converted, device=str(device), rows=clients, cuda_graphs=graphs)
    engine.load()
    shorts = [w for w in windows if len(w) < 10 * SAMPLE_RATE]
    longs = [w for w in windows if len(w) >= 25 * SAMPLE_RATE]
    short_ids: set[int] = set()

    def client(c: int) -> Callable[[int], TranscriptionItem]:
        pool = shorts if c % 2 == 0 else longs

        def next_window(n: int) -> TranscriptionItem:
            item = TranscriptionItem(pool[(c + n) % len(pool)])
            if pool is shorts:
                short_ids.add(id(item))
            return item

        return next_window

    result: dict[str, Any] = {"clients": clients, "windows": windows_total}
    closed_loop(engine, [client(c) for c in range(2)], 2, continuous=True)  # warm-up
    for mode in ("continuous", "whole"):
        shorts_done = ShortLatencies(short_ids)
        outcome = closed_loop(
            engine,
            [client(c) for c in range(clients)],
            windows_total,
            continuous=mode == "continuous",
            on_done=shorts_done.record,
        )
        result[mode] = {
            **outcome.summary(),
            "short_latency_p50_s": round(statistics.median(shorts_done.seconds), 4),
        }
        log(f"mixed {mode}: {result[mode]}")
    result["short_p50_whole_over_continuous"] = round(
        result["whole"]["short_latency_p50_s"] / result["continuous"]["short_latency_p50_s"], 2
    )
    result["throughput_continuous_over_whole"] = round(
        result["continuous"]["windows_per_s"] / result["whole"]["windows_per_s"], 2
    )
    return result


# -- the command -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path(".gpu"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float16"])
    parser.add_argument(
        "--throughput-dtype", default="auto", help="auto: float16 on CUDA, float32 on the CPU"
    )
    parser.add_argument("--shapes", nargs="+", default=["large-v3", "large-v3-turbo"])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--windows-per-client", type=int, default=4)
    parser.add_argument("--mixed-windows", type=int, default=48)
    parser.add_argument("--no-graphs", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/voxserve-gpu-bench"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["correctness", "mixed"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    graphs = not args.no_graphs
    report: dict[str, Any] = {
        "benchmark": "gpu_whisper",
        "date": time.strftime("%Y-%m-%d"),
        "device": _device_name(device),
        "torch": torch.__version__,
        "attention": "SDPA",
    }
    weights, windows, expected = load_bundle(args.bundle)
    if "correctness" not in args.skip:
        report["correctness"] = correctness(
            weights, windows, expected, device, args.dtypes, args.cache, graphs
        )
    if "mixed" not in args.skip:
        report["mixed"] = mixed(
            weights,
            windows,
            device,
            args.cache,
            clients=8,
            windows_total=args.mixed_windows,
            graphs=graphs,
        )
    tokenizer = WhisperTokenizer.from_file(args.bundle / "base-tokenizer.json", multilingual=True)
    report["throughput"] = {
        shape: throughput(
            shape,
            tokenizer,
            device,
            dtype=resolve_dtype(args.throughput_dtype, device),
            rows=args.rows,
            concurrency=args.concurrency,
            windows_per_client=args.windows_per_client,
            graphs=graphs,
        )
        for shape in args.shapes
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


if __name__ == "__main__":
    main()
