"""Where a model runs and at what precision, resolved once at load time."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import ctranslate2

Device = Literal["cpu", "cuda"]


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup quota.

    A container limited to 2 CPUs on a 64-core node still sees 64 cores through
    ``os.cpu_count()``; sizing thread pools from that oversubscribes badly.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    return max(1, min(cores, quota) if quota else cores)


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def resolve_device(requested: str) -> Device:
    """``auto`` picks CUDA when CTranslate2 sees a GPU, else the CPU."""
    if requested == "auto":
        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    return "cuda" if requested == "cuda" else "cpu"


def resolve_compute_type(requested: str, device: Device) -> str:
    """``auto`` is float16 on a GPU and int8 on the CPU."""
    if requested != "auto":
        return requested
    return "float16" if device == "cuda" else "int8"
