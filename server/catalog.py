"""The catalogs' entries (what a client may name, how each is loaded) and the presets.

A preset is a pair of catalogs for a kind of machine, chosen with the ``preset``
setting when the settings give no ``models`` or ``speech_models`` of their own:

- ``embedded``: the weights inside the wheels; nothing to pull (the default);
- ``cpu``: Whisper small.en in CTranslate2 int8 and Kokoro-82M with its English
  voices, on the CPU;
- ``gpu``: Whisper large-v3-turbo (openai's transformers checkpoint) on the torch
  engine in float16, continuous batching over 64 rows, and Kokoro-82M on CUDA for
  both speech tiers until a heavier ``tts-1-hd`` backend exists.

``voxserve models pull cpu`` fetches what a preset names; see :mod:`models.library`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from models.registry import ModelSpec
from models.voices import EMBEDDED_VOICES, VoiceSpec


class CatalogModel(ModelSpec, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A catalog entry: how to load the model and how to schedule its work."""

    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    max_queue_time: float | None = None


DEFAULT_CATALOG = (CatalogModel(id="whisper-1", weights="embedded:tiny.en"),)

VOICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SpeechModel(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A speech model of the catalog: a name clients send and the voices it has."""

    id: str
    voices: dict[Annotated[str, msgspec.Meta(pattern=VOICE_NAME)], VoiceSpec]

    def __post_init__(self) -> None:
        if not self.voices:
            raise ValueError(f"speech model {self.id!r} must have at least one voice")


DEFAULT_SPEECH_CATALOG = (
    SpeechModel(id="tts-1", voices=EMBEDDED_VOICES),
    SpeechModel(id="tts-1-hd", voices=EMBEDDED_VOICES),
)
"""Both tiers speak with the embedded voices until a catalog says otherwise."""


OPENAI_TO_KOKORO = {
    "alloy": "af_alloy",
    "echo": "am_echo",
    "fable": "bm_fable",
    "onyx": "am_onyx",
    "nova": "af_nova",
    "shimmer": "af_shimmer",
}
"""Kokoro-82M has a voice of each OpenAI name; ``fable`` is British, as OpenAI's is."""


def _kokoro_voices(device: Literal["cpu", "cuda"]) -> dict[str, VoiceSpec]:
    return {
        name: VoiceSpec(
            backend="kokoro",
            weights="kokoro-82m",
            voices="kokoro-82m",
            speaker=speaker,
            device=device,
        )
        for name, speaker in OPENAI_TO_KOKORO.items()
    }


def _tiers(voices: dict[str, VoiceSpec]) -> tuple[SpeechModel, ...]:
    return (SpeechModel(id="tts-1", voices=voices), SpeechModel(id="tts-1-hd", voices=voices))


PresetName = Literal["embedded", "cpu", "gpu"]

PRESETS: dict[str, tuple[tuple[CatalogModel, ...], tuple[SpeechModel, ...]]] = {
    "embedded": (DEFAULT_CATALOG, DEFAULT_SPEECH_CATALOG),
    "cpu": (
        (
            CatalogModel(
                id="whisper-1", weights="whisper-small.en", device="cpu", compute_type="int8"
            ),
        ),
        _tiers(_kokoro_voices("cpu")),
    ),
    "gpu": (
        (
            CatalogModel(
                id="whisper-1",
                weights="whisper-large-v3-turbo-hf",
                engine="torch",
                device="cuda",
                # On an H200, float16 gave the CPU float32 text on every test window;
                # bfloat16 differed by a word in one window of eight.
                compute_type="float16",
                batching="continuous",
                # Rows of the running batch. Their KV caches take ~2.6 GB of GPU memory
                # on large-v3-turbo (helm/voxserve/values.yaml has the arithmetic).
                max_batch_size=64,
            ),
        ),
        _tiers(_kokoro_voices("cuda")),
    ),
}
"""Each preset's transcription catalog and speech catalog."""
