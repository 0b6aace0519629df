"""Language routing (the embedded whisper-1): English windows on tiny.en, the others on
base, each with exactly the result its model gives it alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from models.base import DecodingOptions, TranscriptionItem
from models.registry import ModelLoadError, ModelSpec, build_backend, build_engine, resolve_weights
from models.whisper_ct2 import WhisperCT2Backend
from models.whisper_routed import (
    GLANCE_MAX_SECONDS,
    TRUST_ENGLISH,
    LanguageRoutedWhisper,
    NotMultilingual,
)
from server.settings import SettingsError, load_settings
from tests.models.conftest import to_16k
from tests.speech import FOREIGN, SENTENCES, error_rate, foreign_wav, spoken_wav


@pytest.fixture(scope="module")
def base() -> WhisperCT2Backend:
    spec = ModelSpec(id="base", weights="embedded:base", device="cpu", cpu_threads=2)
    backend = build_backend(spec, resolve_weights(spec.weights))
    assert isinstance(backend, WhisperCT2Backend)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def routed(whisper: WhisperCT2Backend, base: WhisperCT2Backend) -> LanguageRoutedWhisper:
    """Over the very backends the expectations are computed on (both already loaded)."""
    return LanguageRoutedWhisper(whisper, base)


def item(wav: bytes, **options: Any) -> TranscriptionItem:
    return TranscriptionItem(to_16k(wav), options=DecodingOptions(**options))


def with_language(window: TranscriptionItem, language: str) -> TranscriptionItem:
    return dataclasses.replace(
        window, options=dataclasses.replace(window.options, language=language)
    )


def test_the_multilingual_model_detects_each_window_on_its_own(
    whisper: WhisperCT2Backend, base: WhisperCT2Backend
) -> None:
    windows = [item(foreign_wav("es")).audio, item(spoken_wav(SENTENCES[0])).audio]
    assert base.detect_languages(base.encode(windows)) == ["es", "en"]
    assert [base.detect_languages(base.encode([w]))[0] for w in windows[::-1]] == ["en", "es"]
    # English-only: no question to ask.
    assert whisper.detect_languages(whisper.encode(windows)) == ["en", "en"]
    assert whisper.english_probabilities(windows) == [1.0, 1.0]


def test_the_glance_is_sure_of_some_english_and_of_no_other_language(
    base: WhisperCT2Backend,
) -> None:
    """The glance (the encoder over the window's own length) trusts English only when
    sure; the English windows of the routing test below take both ways."""
    english = [item(spoken_wav(SENTENCES[n])).audio for n in (0, 3, 5)]
    foreign = [item(foreign_wav(language)).audio for language in FOREIGN]
    sure, unsure, also_sure = base.english_probabilities(english)
    assert sure >= TRUST_ENGLISH and also_sure >= TRUST_ENGLISH and unsure < TRUST_ENGLISH
    assert max(base.english_probabilities(foreign)) < 0.2
    alone = [base.english_probabilities([window])[0] for window in english]
    assert alone == [sure, unsure, also_sure]


def test_each_window_gets_what_its_own_model_gives_it_alone_in_any_batch(
    routed: LanguageRoutedWhisper, whisper: WhisperCT2Backend, base: WhisperCT2Backend
) -> None:
    """Batch invariance across routes: a mixed batch, split over two models, gives every
    window the result of its model on that window alone."""
    english = [item(spoken_wav(SENTENCES[n])) for n in (0, 3)]
    spanish, german = item(foreign_wav("es")), item(foreign_wav("de"))
    given = item(foreign_wav("es"), language="es")
    translate = item(foreign_wav("es"), task="translate")
    english_given = item(spoken_wav(SENTENCES[5]), language="en")
    long_english = item(spoken_wav(*SENTENCES[6:12]))  # past the glance: detected in full
    assert len(long_english.audio) > GLANCE_MAX_SECONDS * 16_000
    batch = [english[0], spanish, translate, english[1], german, english_given, given]
    batch.append(long_english)
    expected = [
        whisper.transcribe_batch([english[0]])[0],
        base.transcribe_batch([with_language(spanish, "es")])[0],
        base.transcribe_batch([translate])[0],
        whisper.transcribe_batch([english[1]])[0],
        base.transcribe_batch([with_language(german, "de")])[0],
        whisper.transcribe_batch([english_given])[0],
        base.transcribe_batch([given])[0],
        whisper.transcribe_batch([long_english])[0],
    ]
    assert routed.transcribe_batch(batch) == expected
    assert routed.transcribe_batch(batch[::-1]) == expected[::-1]
    # Detection before routing is the detection base does itself: no second opinion.
    assert base.transcribe_batch([spanish])[0] == expected[1]
    assert [r.language for r in expected] == ["en", "es", "es", "en", "de", "en", "es", "en"]
    assert [expected[i].text for i in (0, 3, 5)] == [SENTENCES[0], SENTENCES[3], SENTENCES[5]]
    long_wer = error_rate([(" ".join(SENTENCES[6:12]), expected[7].text)])
    assert long_wer is not None and long_wer < 0.1  # tiny.en hears one "please" as "police"
    assert "parque" in expected[1].text and "park" in expected[2].text.lower()


def test_a_batch_is_one_key_of_both_models(
    routed: LanguageRoutedWhisper, whisper: WhisperCT2Backend, base: WhisperCT2Backend
) -> None:
    plain = item(spoken_wav(SENTENCES[1]))
    prompted = item(spoken_wav(SENTENCES[1]), prompt="Stella, the store.")
    assert routed.batch_key(prompted) == (whisper.batch_key(prompted), base.batch_key(prompted))
    assert routed.batch_key(plain) != routed.batch_key(prompted)
    with pytest.raises(ValueError, match="batch keys"):
        routed.transcribe_batch([plain, prompted])
    assert routed.transcribe_batch([]) == []
    assert routed.multilingual and routed.window_seconds == 30.0


def test_english_only_weights_on_the_multilingual_side_fail_to_load(
    whisper: WhisperCT2Backend,
) -> None:
    with pytest.raises(NotMultilingual, match="English-only"):
        LanguageRoutedWhisper(whisper, whisper).load()
    # A directory says nothing by its name: build_engine takes it, loading refuses it.
    tiny_dir = resolve_weights("embedded:tiny.en")
    spec = ModelSpec(id="w", device="cpu", cpu_threads=1, multilingual_weights=tiny_dir)
    engine = build_engine(spec, rows=1)
    assert isinstance(engine.model, LanguageRoutedWhisper) and engine.whole is engine.model
    with pytest.raises(ModelLoadError, match=r"model 'w'.*English-only"):
        engine.load()


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ({"engine": "torch"}, 'engine "torch" cannot'),
        ({"multilingual_weights": "embedded:tiny.en"}, "are the weights themselves"),
        ({"multilingual_weights": "whisper-small.en"}, "English-only"),
        ({"multilingual_weights": "Systran/faster-whisper-base.en@main"}, "English-only"),
    ],
)
def test_routing_that_cannot_work_is_a_settings_error(entry: dict[str, str], says: str) -> None:
    model = {"id": "whisper-1", "multilingual_weights": "embedded:base", **entry}
    with pytest.raises(SettingsError, match=says):
        load_settings(env={}, overrides={"models": [model]})


def test_routing_needs_ctranslate2_weights_on_both_sides(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    for weights, other in ((str(tmp_path), "embedded:base"), ("embedded:tiny.en", str(tmp_path))):
        spec = ModelSpec(id="w", device="cpu", weights=weights, multilingual_weights=other)
        with pytest.raises(ModelLoadError, match="transformers weights; routing by language"):
            build_engine(spec, rows=1)
