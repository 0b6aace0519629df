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

A model may also answer to *aliases*: OpenAI's newer names (``gpt-4o-transcribe``,
``gpt-4o-mini-tts``) are what clients and docs default to now, and a server that only
knows ``whisper-1`` and ``tts-1-hd`` would answer them 404. :func:`catalog_names` is
the one index of every name a client may send and the model each one means.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Literal

import msgspec

from models.registry import ModelSpec
from models.voices import EMBEDDED_VOICES, VoiceSpec

ModelAlias = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
"""Another name of a model; as long as the names the wire accepts (``protocol.Name``)."""

OPENAI_ALIASES: dict[str, tuple[str, ...]] = {
    "whisper-1": ("gpt-4o-transcribe", "gpt-4o-mini-transcribe"),
    "tts-1-hd": ("gpt-4o-mini-tts",),
}
"""The aliases of an entry that sets none, by its id: OpenAI's newer model names on the
models that do their job here. ``gpt-4o-transcribe-diarize`` is left out on purpose:
a client asking for it expects speaker labels (``diarized_json``), which Whisper
cannot give, so a 404 is more honest than a transcript without them."""


class CatalogModel(ModelSpec, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A catalog entry: how to load the model and how to schedule its work."""

    aliases: tuple[ModelAlias, ...] | None = None
    """Other names clients may send for it; unset: :data:`OPENAI_ALIASES` of its id."""
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    max_queue_size: int | None = None
    max_queue_time: float | None = None


DEFAULT_CATALOG = (
    CatalogModel(id="whisper-1", weights="embedded:tiny.en", multilingual_weights="embedded:base"),
)
"""whisper-1 hears every language, as OpenAI's does: English on tiny.en (about twice as
fast as base, and about as accurate on English), the rest (detection and translation
too) on the multilingual base (models.whisper_routed; benchmarks/languages.py)."""

VOICE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class SpeechModel(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """A speech model of the catalog: a name clients send and the voices it has."""

    id: str
    voices: dict[Annotated[str, msgspec.Meta(pattern=VOICE_NAME)], VoiceSpec]
    aliases: tuple[ModelAlias, ...] | None = None
    """Other names clients may send for it; unset: :data:`OPENAI_ALIASES` of its id."""

    def __post_init__(self) -> None:
        if not self.voices:
            raise ValueError(f"speech model {self.id!r} must have at least one voice")
        folded = [name.casefold() for name in self.voices]
        if len(set(folded)) != len(folded):  # clients' voice names match in any case
            raise ValueError(
                f"speech model {self.id!r} has voices whose names differ only in case: "
                f"{sorted(self.voices)}"
            )


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
    "ash": "am_michael",
    "ballad": "bm_george",
    "coral": "af_heart",
    "sage": "af_bella",
    "verse": "am_puck",
    "marin": "af_kore",
    "cedar": "am_fenrir",
}
"""OpenAI's 13 voices on Kokoro-82M's English ones. The first six have a Kokoro voice
of their own name (``fable`` is British, as OpenAI's is); the seven newer names take
a distinct Kokoro voice of the same gender as OpenAI's (see ``models.voices``), the
female ones among Kokoro's best graded (``af_heart``, ``af_bella``)."""


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


Kind = Literal["transcription", "speech"]


@dataclass(frozen=True, slots=True)
class CatalogName:
    """A name a client may send: the catalog id it means and which kind of model that is."""

    id: str
    kind: Kind
    alias: bool


def catalog_names(
    models: Iterable[CatalogModel], speech_models: Iterable[SpeechModel]
) -> dict[str, CatalogName]:
    """Every model id and alias, in catalog order (each id followed by its aliases).

    Repeated ids, and an alias set in the catalog that is already a name, are refused
    (``ValueError``). A default alias (:data:`OPENAI_ALIASES`) gives way instead, to an
    id or an alias the catalog sets: a catalog with a model really named
    ``gpt-4o-mini-tts``, or one that puts ``gpt-4o-transcribe`` on a larger Whisper,
    keeps it.
    """
    entries: list[tuple[str, Kind, tuple[str, ...] | None]] = [
        (m.id, "transcription", m.aliases) for m in models
    ] + [(m.id, "speech", m.aliases) for m in speech_models]
    ids = [model_id for model_id, _, _ in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"model ids must be unique, got {ids}")
    owner: dict[str, str] = {model_id: model_id for model_id in ids}
    for model_id, _, aliases in entries:
        for alias in aliases or ():
            if alias in owner:
                taken = "the id of a model" if alias in ids else f"an alias of {owner[alias]!r}"
                raise ValueError(
                    f"model alias {alias!r} of {model_id!r} must be unique: it is already {taken}"
                )
            owner[alias] = model_id
    for model_id, _, aliases in entries:
        if aliases is None:
            for alias in OPENAI_ALIASES.get(model_id, ()):
                owner.setdefault(alias, model_id)
    names: dict[str, CatalogName] = {}
    for model_id, kind, _ in entries:
        names[model_id] = CatalogName(model_id, kind, alias=False)
        for alias, of in owner.items():
            if of == model_id and alias != model_id:
                names[alias] = CatalogName(model_id, kind, alias=True)
    return names
