"""``voxserve models list`` and ``voxserve models pull``: the catalog against the cache.

``pull`` takes catalog names (``whisper-large-v3-turbo``, ``kokoro-82m``), presets
(``cpu``, ``gpu``; ``embedded`` has nothing to pull) or hub ids (``owner/name``); with
none, it pulls whatever the configured catalogs name, which is what a Kubernetes
init container runs with the server's own settings. Each target is pulled and
verified on its own: one failure is reported and the others still run, and the
exit status is 1 if any failed.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import msgspec

from models.hub import HubError, HubSource, locate, pull
from models.library import LIBRARY, hub_source
from models.registry import ModelLoadError, cache_path, default_engine, weights_format
from server.catalog import PRESETS, CatalogModel, SpeechModel
from server.settings import Settings


class UnknownTarget(ValueError):
    """A ``pull`` argument that is no catalog name, preset or hub id."""


def sources_of(
    models: Iterable[CatalogModel], speech_models: Iterable[SpeechModel]
) -> dict[str, HubSource]:
    """The hub files two catalogs need, by the name they use (library name or repo id)."""
    needed: dict[str, HubSource] = {}
    for model in models:
        source = hub_source(model.weights)
        if source is not None:
            needed[model.weights] = source
    for speech in speech_models:
        for voice in speech.voices.values():
            for reference in (voice.weights, voice.voices):
                if reference in LIBRARY:
                    needed[reference] = LIBRARY[reference].source
    return needed


def targets(names: Sequence[str], settings: Settings) -> dict[str, HubSource]:
    """What ``pull NAME...`` fetches; no names means what ``settings``' catalogs name."""
    if not names:
        return sources_of(settings.models, settings.speech_models)
    chosen: dict[str, HubSource] = {}
    for name in names:
        if name in PRESETS:
            chosen.update(sources_of(*PRESETS[name]))
        elif (source := hub_source(name)) is not None:
            chosen[name] = source
        else:
            known = ", ".join([*PRESETS, *LIBRARY])
            raise UnknownTarget(f"{name!r} is no preset, catalog name or hub id; known: {known}")
    return chosen


def pull_command(names: Sequence[str], settings: Settings, out: TextIO = sys.stdout) -> int:
    """Pull and verify every target; 0 when all are in the cache verified, else 1."""
    try:
        chosen = targets(names, settings)
    except UnknownTarget as exc:
        print(f"voxserve: {exc}", file=sys.stderr)
        return 2
    cache = cache_path(settings.model_cache_dir)
    if not chosen:
        print(
            "nothing to pull: every weight named is embedded in a wheel or a local path", file=out
        )
        return 0
    failed = 0
    for name, source in chosen.items():
        print(f"{name}: pulling {source.repo}@{source.revision} into {cache}", file=out, flush=True)
        try:
            snapshot = pull(source, cache)
        except HubError as exc:
            failed += 1
            print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
            continue
        megabytes = snapshot.size / 1e6
        print(
            f"{name}: verified {megabytes:.1f} MB at {snapshot.commit} in {snapshot.path}"
            f"{_format_note(snapshot.path)}",
            file=out,
            flush=True,
        )
    return 1 if failed else 0


def _format_note(path: Path) -> str:
    """Which Whisper format arrived, and so which engine serves it by default."""
    try:
        found = weights_format(path)
    except ModelLoadError:  # Kokoro's files, not a Whisper directory
        return ""
    return f" ({found} weights: engine {default_engine(found)} by default)"


def list_command(settings: Settings, *, as_json: bool, out: TextIO = sys.stdout) -> int:
    """The library and the configured catalogs, each with what the cache holds of it."""
    cache = cache_path(settings.model_cache_dir)
    library: list[dict[str, Any]] = [
        {
            "name": name,
            "kind": entry.kind,
            "repo": f"{entry.source.repo}@{entry.source.revision}",
            "approx_mb": entry.approx_mb,
            "summary": entry.summary,
            "pulled": _pulled(entry.source, cache),
        }
        for name, entry in LIBRARY.items()
    ]
    catalog = [
        {"id": model.id, "weights": model.weights, "on_disk": _on_disk(model.weights, cache)}
        for model in settings.models
    ] + [
        {
            "id": f"{speech.id}/{name}",
            "weights": voice.weights
            if voice.voices is None
            else f"{voice.weights} + {voice.voices}",
            "on_disk": _on_disk(voice.weights, cache),
        }
        for speech in settings.speech_models
        for name, voice in speech.voices.items()
    ]
    if as_json:
        report: dict[str, Any] = {
            "cache_dir": str(cache),
            "preset": settings.preset,
            "library": library,
            "catalog": catalog,
            "models": msgspec.to_builtins(settings.models),
            "speech_models": msgspec.to_builtins(settings.speech_models),
        }
        print(msgspec.json.format(msgspec.json.encode(report)).decode(), file=out)
        return 0
    print(f"model cache: {cache}", file=out)
    print("\ncatalog (what the server loads):", file=out)
    for row in catalog:
        print(f"  {row['id']:<22} {row['weights']:<40} {row['on_disk']}", file=out)
    print("\nlibrary (what `voxserve models pull NAME` fetches):", file=out)
    for row in library:
        state = row["pulled"] or "not pulled"
        print(f"  {row['name']:<26} {row['repo']:<52} ~{row['approx_mb']} MB  {state}", file=out)
    print(f"\npresets: {', '.join(PRESETS)}", file=out)
    return 0


def _pulled(source: HubSource, cache: Path) -> str | None:
    snapshot = locate(source, cache)
    return None if snapshot is None else f"pulled {snapshot.commit[:12]}"


def _on_disk(reference: str, cache: Path) -> str:
    if reference.startswith("embedded:"):
        return "in a wheel"
    source = LIBRARY[reference].source if reference in LIBRARY else hub_source(reference)
    if source is not None:
        return _pulled(source, cache) or "not pulled"
    return "local path" if Path(reference).expanduser().exists() else "missing"
