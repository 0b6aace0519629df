"""ONNX Runtime sessions built the same way for every ONNX backend.

The text-to-speech packages each open their own session with their own choices
(hibari hardcodes the CPU provider, piper uses every core); the server sizes
thread pools itself (see :func:`models.hardware.available_cpus`), so backends
build their sessions here instead.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

_ERRORS_ONLY = 3
"""ORT's severity 3 is "error": its warnings (unused initializers, ...) are noise."""


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
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, not {device!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, cpu_threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = _ERRORS_ONLY
    providers: list[str | tuple[str, dict[str, str]]] = ["CPUExecutionProvider"]
    if device == "cuda":
        cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
        providers = [cuda, *providers]
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=providers)
