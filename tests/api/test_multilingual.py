"""Language detection and translation on a real multilingual Whisper (``embedded:base``),
with real Japanese speech from Kokoro-82M."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from server.catalog import CatalogModel
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.speech import SENTENCES, japanese_wav, spoken_wav

# The SDK marks translations deprecated; OpenAI still serves them, and so do we.
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def multilingual(tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    settings = make_settings(
        speech_models=(),
        model_cache_dir=str(tmp_path_factory.mktemp("models")),
        models=(
            CatalogModel(id="whisper-1", weights="embedded:tiny.en"),
            CatalogModel(id="whisper-base", weights="embedded:base"),
        ),
    )
    with LiveServer(settings) as live:
        yield live.openai()


def test_the_language_is_detected_and_reported_by_name(multilingual: openai.OpenAI) -> None:
    result = multilingual.audio.transcriptions.create(
        model="whisper-base", file=("ja.wav", japanese_wav()), response_format="verbose_json"
    )
    assert result.language == "japanese"
    assert "公園" in result.text and "天気" in result.text  # park, weather
    english = multilingual.audio.transcriptions.create(
        model="whisper-base",
        file=("en.wav", spoken_wav(SENTENCES[0])),
        response_format="verbose_json",
    )
    assert english.language == "english"


def test_a_given_language_is_used(multilingual: openai.OpenAI) -> None:
    result = multilingual.audio.transcriptions.create(
        model="whisper-base",
        file=("ja.wav", japanese_wav()),
        language="ja",
        response_format="verbose_json",
    )
    assert result.language == "japanese" and "公園" in result.text


def test_translation_gives_english_in_every_format(multilingual: openai.OpenAI) -> None:
    audio = japanese_wav()
    result = multilingual.audio.translations.create(model="whisper-base", file=("ja.wav", audio))
    text = result.text.lower()
    assert "morning" in text and "park" in text
    assert not any("\u3040" <= ch <= "\u30ff" or "\u4e00" <= ch <= "\u9fff" for ch in text)
    verbose = multilingual.audio.translations.create(
        model="whisper-base", file=("ja.wav", audio), response_format="verbose_json"
    )
    assert verbose.language == "english" and verbose.text == result.text
    assert verbose.model_dump()["task"] == "translate"
    assert verbose.segments and verbose.segments[0].start >= 0.0
    srt = multilingual.audio.translations.create(
        model="whisper-base", file=("ja.wav", audio), response_format="srt"
    )
    assert isinstance(srt, str) and srt.startswith("1\n00:00:")
    assert "park" in srt.lower()


def test_translation_fields_are_openais(multilingual: openai.OpenAI) -> None:
    with_prompt = multilingual.audio.translations.create(
        model="whisper-base",
        file=("ja.wav", japanese_wav()),
        prompt="Good morning.",
        temperature=0.0,
        response_format="text",
    )
    assert isinstance(with_prompt, str) and "park" in with_prompt.lower()
    with pytest.raises(openai.BadRequestError) as refused:
        multilingual.audio.translations.create(
            model="whisper-base",
            file=("ja.wav", japanese_wav()),
            extra_body={"language": "ja"},  # not a translation field
        )
    assert refused.value.body["param"] == "language"  # type: ignore[index]


def test_an_english_only_model_cannot_translate(server: LiveServer) -> None:
    with server.http() as http:
        response = http.post(
            "/v1/audio/translations",
            files={"file": ("a.wav", spoken_wav(SENTENCES[0]))},
            data={"model": "whisper-1"},
        )
    assert_error(response, 400, "model", "English-only and cannot translate")
