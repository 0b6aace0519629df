"""ONNX Runtime sessions built the same way for every ONNX backend, and the size of a pass.

The text-to-speech packages each open their own session with their own choices
(hibari hardcodes the CPU provider, piper uses every core); the server sizes
thread pools itself (see :func:`models.hardware.available_cpus`), so backends
build their sessions here instead.

What one ``session.run`` costs in memory grows with the audio it makes: the
vocoders hold every layer's activations for every output frame (Piper ~20 MiB and
Kokoro ~25 MiB per second of audio, hibari ~5 MiB). Text alone does not bound that:
``speed`` 0.25 makes four times the frames, and a batch of a hundred short clauses
is a hundred rows. So each backend cuts its pieces and plans its passes so that one
run makes at most :data:`MAX_PASS_SECONDS` of audio (rows times the longest row),
estimated before the run by a :class:`Pace`. (The server feeds a model only its voice's
own pace, within :data:`models.tempo.NATIVE_PACE`, and makes a request's ``speed`` by
time-stretching each sentence after the pass; the bounds hold at any pace regardless.)

Sessions have no CPU memory arena (see :func:`onnx_session`), so a pass's buffers go
back to malloc when it ends; but glibc keeps freed heap pages that are not at a heap's
top, and after a long pass RSS stayed ~110-140 MiB up. :func:`release_memory` hands
them back (``malloc_trim``, ~6 ms), after calls that made enough audio to matter.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

_ERRORS_ONLY = 3
"""ORT's severity 3 is "error": its warnings (unused initializers, ...) are noise."""

MAX_PASS_SECONDS = 15.0
"""Default audio one forward pass may make: ~300 MiB at Piper's ~20 MiB a second."""
TRIM_AFTER_SECONDS = 5.0
"""Calls that made less audio than this leave the allocator alone: their buffers are
small, are reused by the next call, and a trim would cost more than it gives back."""


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` on a C library without it (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def release_memory(audio_seconds: float) -> bool:
    """After a call that made ``audio_seconds`` of audio, give freed heap memory back to
    the system if that was enough to matter; whether a trim ran."""
    if _MALLOC_TRIM is None or audio_seconds < TRIM_AFTER_SECONDS:
        return False
    _MALLOC_TRIM(0)
    return True


@dataclass(frozen=True)
class Pace:
    """An upper estimate of how long a model speaks a piece of ``units`` tokens.

    ``base_s + per_unit_s * units`` seconds at speed 1 (a piece has a fixed lead-in and
    tail, then a share per token), divided by the speed, plus ``frame_s`` a token: the
    durations are rounded up to whole frames, so however fast, a token lasts a frame
    (Piper at speed 4 made 0.047 s an id where speed 1 made 0.027). The first two are
    measured per model on hostile text (pauses, single letters, digits) as the worst
    seen, so that the estimate stays above what the model really makes.
    """

    base_s: float
    per_unit_s: float
    frame_s: float

    def seconds(self, units: int, speed: float) -> float:
        """Estimated seconds of audio for a piece of ``units`` tokens at ``speed``."""
        return (self.base_s + self.per_unit_s * units) / speed + self.frame_s * units

    def max_units(self, seconds: float, speed: float, *, least: int = 1) -> int:
        """The most tokens a piece may hold to be spoken in ``seconds`` at ``speed``;
        never under ``least``, so that a tight budget still makes progress."""
        fits = (seconds * speed - self.base_s) / (self.per_unit_s + self.frame_s * speed)
        return max(least, math.floor(fits))


def onnx_cuda_available() -> bool:
    """Whether this onnxruntime build can run on a GPU (``onnxruntime-gpu``)."""
    return "CUDAExecutionProvider" in ort.get_available_providers()


def onnx_session(model: str | Path | bytes, device: str, cpu_threads: int) -> ort.InferenceSession:
    """A session over ``model`` (a path or serialized bytes) on ``device``, cpu or cuda.

    On CUDA the CPU provider stays listed as the fallback for operators the GPU
    provider lacks, and cuDNN picks convolution algorithms by heuristic: its
    default exhaustive search reruns for every new input shape, and in speech
    every sentence is a new shape (piper's own loader makes the same choice).
    One inter-op thread: the scheduler already runs one batch at a time, so
    parallelism belongs inside operators.

    No CPU memory arena: ORT's arena keeps every chunk it grew for the life of the
    session, so one long pass (a 600-character request at speed 0.25 took 3 GB) stayed
    resident for good. Without it a pass's buffers go back to the allocator, and the
    large ones to the system, when the pass ends. Measured on Piper, four ordinary
    sentences on 2 busy cores (``python -m benchmarks.speech_memory --arena-cost``): 5%
    slower than with the arena; shrinking the arena after every run instead
    (``memory.enable_memory_arena_shrinkage``, an option every call must pass) was 12%.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, cpu_threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = _ERRORS_ONLY
    options.enable_cpu_mem_arena = False
    providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
    if device == "cuda":
        cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
        providers = [cuda, *providers]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)
