"""``POST /v1/audio/transcriptions`` over real HTTP, through the official openai SDK."""

from __future__ import annotations

import math

import openai
import pytest
from openai.types.audio.transcription import UsageDuration

from server.catalog import OPENAI_ALIASES
from tests.conftest import LiveServer
from tests.speech import SENTENCES, duration_of, word_error_rate

WHISPER_ALIASES = OPENAI_ALIASES["whisper-1"]


def test_json_gives_the_exact_text_and_usage_in_seconds(
    stt_client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    wav = sentence_wavs[1]
    result = stt_client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
    assert result.text == SENTENCES[1]
    assert result.usage is not None and result.usage.type == "duration"
    assert isinstance(result.usage, UsageDuration)
    assert result.usage.seconds == math.ceil(duration_of(wav))


def test_text_format_is_the_plain_transcript(
    stt_client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    text = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", sentence_wavs[0]), response_format="text"
    )
    assert text == SENTENCES[0] + "\n"


def test_every_form_field_of_this_issue_is_accepted(
    stt_client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    result = stt_client.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", sentence_wavs[1]),
        language="en",
        prompt="Stella went to the store.",
        temperature=0.0,
        response_format="json",
    )
    assert result.text == SENTENCES[1]


def test_a_file_longer_than_a_window_is_transcribed_in_order(
    stt_client: openai.OpenAI, long_wav: tuple[bytes, str]
) -> None:
    wav, expected = long_wav
    assert duration_of(wav) > 60
    result = stt_client.audio.transcriptions.create(model="whisper-1", file=("long.wav", wav))
    wer = word_error_rate([(expected, result.text)])
    assert wer is not None and wer <= 0.05
    # Order is kept: the first and last sentences are where they belong.
    assert result.text.startswith(SENTENCES[0]) and result.text.endswith(SENTENCES[-1])
    assert isinstance(result.usage, UsageDuration)
    assert result.usage.seconds == math.ceil(duration_of(wav))


def test_a_second_resident_model_from_a_local_directory(sentence_wavs: list[bytes]) -> None:
    from models.registry import resolve_weights
    from server.catalog import CatalogModel
    from tests.conftest import make_settings

    local = resolve_weights("embedded:tiny.en")
    catalog = (
        CatalogModel(id="whisper-1"),
        CatalogModel(id="acme/tiny-local", weights=local, beam_size=1, max_batch_size=2),
    )
    with LiveServer(make_settings(models=catalog, speech_models=())) as live:
        client = live.openai()
        ids = [m.id for m in client.models.list()]
        assert ids == ["whisper-1", *WHISPER_ALIASES, "acme/tiny-local"]
        assert client.models.retrieve("acme/tiny-local").id == "acme/tiny-local"
        for model in ("whisper-1", "acme/tiny-local"):
            result = client.audio.transcriptions.create(
                model=model, file=("a.wav", sentence_wavs[0])
            )
            assert result.text == SENTENCES[0]


def test_models_are_listed_in_openais_shape(server: LiveServer, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models] == [
        "whisper-1",
        *WHISPER_ALIASES,
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",  # aliases are listed as models (tests/api/test_openai_names.py)
    ]
    model = client.models.retrieve("whisper-1")
    assert (model.object, model.owned_by) == ("model", "voxserve")
    with server.http() as http:
        body = http.get("/v1/models").json()
    assert body["object"] == "list" and set(body["data"][0]) == {
        "id",
        "object",
        "created",
        "owned_by",
    }
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("whisper-9")
    assert missing.value.body["param"] == "model"  # type: ignore[index]


def test_a_very_long_prompt_is_cut_to_its_last_tokens(
    stt_client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    prompt = "Meeting notes about the store. " * 3000  # ~93,000 characters
    result = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", sentence_wavs[1]), prompt=prompt
    )
    assert result.text == SENTENCES[1]
