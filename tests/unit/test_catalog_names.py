"""Model aliases in the settings: what each name means, and catalogs refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.catalog import PRESETS, CatalogModel, catalog_names
from server.settings import SettingsError, load_settings

PIPER = {"backend": "piper", "weights": "x"}


def test_every_preset_answers_to_openais_newer_names() -> None:
    for models, speech_models in PRESETS.values():
        names = catalog_names(models, speech_models)
        assert {alias: names[alias].id for alias in names if names[alias].alias} == {
            "gpt-4o-transcribe": "whisper-1",
            "gpt-4o-mini-transcribe": "whisper-1",
            "gpt-4o-mini-tts": "tts-1-hd",
        }
        assert names["gpt-4o-mini-tts"].kind == "speech"
        assert names["gpt-4o-transcribe"].kind == "transcription"


def test_aliases_from_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "voxserve.toml"
    config.write_text(
        '[[models]]\nid = "whisper-large"\nweights = "/m/large"\n'
        'aliases = ["gpt-4o-transcribe", "large"]\n\n'
        '[[models]]\nid = "whisper-1"\n\n'
        '[[speech_models]]\nid = "tts-1"\naliases = []\n'
        '[speech_models.voices.alloy]\nbackend = "piper"\nweights = "x"\n'
    )
    settings = load_settings(config, env={})
    names = catalog_names(settings.models, settings.speech_models)
    # A configured alias outranks a default one; a default one still fills the gap.
    assert {name: n.id for name, n in names.items()} == {
        "whisper-large": "whisper-large",
        "gpt-4o-transcribe": "whisper-large",
        "large": "whisper-large",
        "whisper-1": "whisper-1",
        "gpt-4o-mini-transcribe": "whisper-1",
        "tts-1": "tts-1",
    }


def test_a_default_alias_gives_way_to_a_model_of_that_name() -> None:
    models = (CatalogModel(id="whisper-1"), CatalogModel(id="gpt-4o-transcribe"))
    names = catalog_names(models, ())
    assert names["gpt-4o-transcribe"].id == "gpt-4o-transcribe"
    assert not names["gpt-4o-transcribe"].alias


def test_catalog_names_refuses_a_repeated_alias() -> None:
    models = (CatalogModel(id="a", aliases=("x",)), CatalogModel(id="b", aliases=("x",)))
    with pytest.raises(ValueError, match="'x' of 'b' must be unique: it is already an alias"):
        catalog_names(models, ())


@pytest.mark.parametrize(
    ("models", "speech_models", "fragment"),
    [
        ([{"id": "whisper-1", "aliases": ["tts-1"]}], [], "already the id of a model"),
        ([{"id": "whisper-1", "aliases": ["whisper-1"]}], [], "already the id of a model"),
        (
            [{"id": "whisper-1", "aliases": ["x"]}],
            [{"id": "tts-1", "voices": {"a": PIPER}, "aliases": ["x"]}],
            "already an alias of 'whisper-1'",
        ),
        ([{"id": "whisper-1", "aliases": [""]}], [], "aliases"),
        ([{"id": "whisper-1", "aliases": "gpt-4o-transcribe"}], [], "aliases"),
        ([], [{"id": "t", "voices": {"Alloy": PIPER, "alloy": PIPER}}], "differ only in case"),
    ],
)
def test_an_invalid_alias_is_refused_at_load(
    models: list[object], speech_models: list[object], fragment: str
) -> None:
    overrides = {"models": models, "speech_models": speech_models or [_tts_1()]}
    with pytest.raises(SettingsError, match=fragment):
        load_settings(env={}, overrides=overrides)


def _tts_1() -> dict[str, object]:
    return {"id": "tts-1", "voices": {"alloy": PIPER}}
