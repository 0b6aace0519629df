"""Named weights on the model hub that catalogs can use and ``voxserve models pull`` fetches.

A catalog refers to these by name (``weights = "whisper-large-v3-turbo"``); the
name stands for a hub repository at a revision and the files of it that are
needed. A Whisper entry is a directory in one of two formats: a CTranslate2
conversion (``model.bin``; the CTranslate2 engine's) or a Hugging Face transformers
checkpoint (``model.safetensors``; the torch engine's). A Kokoro entry is
kokoro-onnx's graph and its voice file, two files of one repository.

Any other hub repository works too, by its id (``owner/name`` or
``owner/name@revision``), for Whisper in either format: the files either format
needs are fetched, and what arrived decides the format
(:func:`models.registry.weights_format`). Speech weights outside this list are
given as file paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from models.hub import HubError, HubSource, Snapshot, locate, pull

WHISPER_FILES = ("config.json", "model.bin", "tokenizer.json", "vocabulary.*")
"""What faster-whisper fetches of a CTranslate2 Whisper repository, less the
optional preprocessor config (only multilingual large-v3 conversions have one)."""
PREPROCESSOR = "preprocessor_config.json"
GENERATION = "generation_config.json"
"""transformers' decoding defaults; the torch engine reads its ``alignment_heads``
(word timestamps) and does without it."""
SAFETENSORS = "model.safetensors"
SHARD_INDEX = "model.safetensors.index.json"
SHARDS = "model-*.safetensors"
"""A checkpoint too large for one file: the index and its shards
(``model-00001-of-00002.safetensors``). Not ``model.fp32-*``: openai's repositories
carry a float32 copy beside the float16 ``model.safetensors``, twice the download."""
TRANSFORMERS_FILES = ("config.json", GENERATION, SAFETENSORS, "tokenizer.json", PREPROCESSOR)
"""What the torch engine loads of a transformers Whisper repository (single file)."""

WEIGHT_SETS = (("model.bin",), (SAFETENSORS,), (SHARD_INDEX, SHARDS))
"""The weights of either format; a repository named by id must hold one of these sets."""
ANY_FORMAT_FILES = (
    "config.json",
    "tokenizer.json",
    "model.bin",
    "vocabulary.*",
    GENERATION,
    SAFETENSORS,
    SHARD_INDEX,
    SHARDS,
    PREPROCESSOR,
)
"""What is fetched of a repository named by id: what either format needs. Only
``config.json`` and ``tokenizer.json`` are common to both, so only they are required
by name; :data:`WEIGHT_SETS` requires the weights."""


class LibraryEntry(msgspec.Struct, kw_only=True, frozen=True):
    kind: Literal["whisper", "kokoro"]
    source: HubSource
    summary: str
    approx_mb: int
    roles: dict[str, str] = {}
    """Kokoro: which file is the ``model`` and which the ``voices``."""


def _whisper(repo: str, summary: str, approx_mb: int) -> LibraryEntry:
    """A CTranslate2 conversion."""
    source = HubSource(repo=repo, files=(*WHISPER_FILES, PREPROCESSOR), optional=(PREPROCESSOR,))
    return LibraryEntry(kind="whisper", source=source, summary=summary, approx_mb=approx_mb)


def _whisper_hf(repo: str, summary: str, approx_mb: int) -> LibraryEntry:
    """A transformers checkpoint in one ``model.safetensors`` (float16 in openai's repos)."""
    source = HubSource(repo=repo, files=TRANSFORMERS_FILES, optional=(GENERATION, PREPROCESSOR))
    return LibraryEntry(kind="whisper", source=source, summary=summary, approx_mb=approx_mb)


KOKORO_FILES = {"model": "kokoro-v1.0.onnx", "voices": "voices-v1.0.bin"}

LIBRARY: dict[str, LibraryEntry] = {
    "whisper-small.en": _whisper(
        "Systran/faster-whisper-small.en", "Whisper small.en, English, 244M parameters", 484
    ),
    "whisper-medium.en": _whisper(
        "Systran/faster-whisper-medium.en", "Whisper medium.en, English, 769M parameters", 1530
    ),
    "whisper-large-v3": _whisper(
        "Systran/faster-whisper-large-v3", "Whisper large-v3, 99 languages, 1.55B", 3090
    ),
    "whisper-large-v3-turbo": _whisper(
        "mobiuslabsgmbh/faster-whisper-large-v3-turbo",
        "Whisper large-v3-turbo (4 decoder layers), 99 languages, 809M",
        1620,
    ),
    "whisper-large-v3-hf": _whisper_hf(
        "openai/whisper-large-v3",
        "Whisper large-v3, 99 languages, 1.55B; transformers float16 (torch engine)",
        3090,
    ),
    "whisper-large-v3-turbo-hf": _whisper_hf(
        "openai/whisper-large-v3-turbo",
        "Whisper large-v3-turbo (4 decoder layers), 99 languages, 809M; transformers "
        "float16 (torch engine)",
        1620,
    ),
    "kokoro-82m": LibraryEntry(
        kind="kokoro",
        source=HubSource(repo="fastrtc/kokoro-onnx", files=tuple(KOKORO_FILES.values())),
        summary="Kokoro-82M v1.0 (kokoro-onnx export, fp32) and its 54 voices, "
        "English ones included (af_alloy, am_echo, bm_fable, am_onyx, af_nova, af_shimmer)",
        approx_mb=337,
        roles=KOKORO_FILES,
    ),
}
"""The catalog names ``voxserve models pull`` knows, with what each stands for."""


def hub_source(reference: str) -> HubSource | None:
    """The hub files a Whisper ``weights`` reference names, if it names any.

    A repository of the library named by its id is fetched as the library fetches
    it: the verified manifest is kept per repository and commit and records the
    patterns, so one repository under two pattern sets would make each pull
    invalidate the other's.
    """
    if reference in LIBRARY:
        return LIBRARY[reference].source
    owner, slash, rest = reference.partition("/")
    if not slash or not owner or reference.startswith((".", "/", "~")):
        return None
    repo, _, revision = rest.partition("@")
    if not repo or "/" in repo:
        return None
    repo_id = f"{owner}/{repo}"
    for entry in LIBRARY.values():
        if entry.kind == "whisper" and entry.source.repo == repo_id:
            return msgspec.structs.replace(entry.source, revision=revision or entry.source.revision)
    required = ("config.json", "tokenizer.json")
    return HubSource(
        repo=repo_id,
        revision=revision or "main",
        files=ANY_FORMAT_FILES,
        optional=tuple(p for p in ANY_FORMAT_FILES if p not in required),
        any_of=WEIGHT_SETS,
    )


def fetch(source: HubSource, cache_dir: Path) -> Snapshot:
    """The verified snapshot in the cache, pulled first if it is not there yet.

    Pulling at load time is for a box with a network; with ``HF_HUB_OFFLINE=1`` (or
    no route to the hub) a missing model fails to load and says to pull it.
    """
    found = locate(source, cache_dir)
    if found is not None:
        return found
    try:
        return pull(source, cache_dir)
    except HubError as exc:
        raise HubError(f"{exc}; run `voxserve models pull` where the hub is reachable") from exc
