"""OpenAI's newer names, as clients and docs now default to them, over real HTTP.

``gpt-4o-mini-tts`` with ``coral``, ``gpt-4o-transcribe``, the 13 voices, names in
any case, the wrong endpoint named as such, and ``/v1/audio/voices`` read the way
Open WebUI reads it.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from models.voices import EMBEDDED_VOICES, HEART
from server.catalog import SpeechModel
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import patient_http
from tests.speech import SENTENCES, decode_native, spoken_wav, words

OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
"""Every voice OpenAI's speech models take (``openai.types.audio.SpeechCreateParams``)."""
FEMALE = {"alloy", "coral", "marin", "nova", "sage", "shimmer"}
"""Spoken by hibari's "heart"; the others by Piper's "joe" (see ``models.voices``)."""
HELLO = "Hello there."


def pcm(client: openai.OpenAI, model: str, voice: str, text: str = HELLO) -> bytes:
    response = client.audio.speech.create(
        model=model,
        voice=voice,
        input=text,
        response_format="pcm",
    )
    return response.content


@pytest.fixture(scope="module")
def reference(client: openai.OpenAI) -> dict[str, bytes]:
    """``HELLO`` in each of the two embedded voices, by the six names that always worked."""
    return {"heart": pcm(client, "tts-1", "alloy"), "joe": pcm(client, "tts-1", "echo")}


def test_gpt_4o_mini_tts_with_coral_speaks(client: openai.OpenAI) -> None:
    """The SDK's own example: model gpt-4o-mini-tts, voice coral."""
    response = client.audio.speech.create(
        model="gpt-4o-mini-tts",
        voice="coral",
        input="Today is a wonderful day to build something people love!",
        response_format="wav",
    )
    samples, rate, channels = decode_native(response.content)
    assert (rate, channels) == (24_000, 1)
    assert 1.0 < len(samples) / rate < 10.0


def test_gpt_4o_mini_tts_is_tts_1_hd(client: openai.OpenAI) -> None:
    """The alias is the model: the same voice, the same samples."""
    assert pcm(client, "gpt-4o-mini-tts", "alloy") == pcm(client, "tts-1-hd", "alloy")


@pytest.mark.parametrize("voice", OPENAI_VOICES)
def test_each_of_openais_13_voices_speaks_as_its_kind(
    client: openai.OpenAI, reference: dict[str, bytes], voice: str
) -> None:
    expected = reference["heart" if voice in FEMALE else "joe"]
    assert pcm(client, "tts-1", voice) == expected


@pytest.mark.parametrize("voice", ["Alloy", "ECHO", "Coral"])
def test_voice_names_match_in_any_case(
    client: openai.OpenAI, reference: dict[str, bytes], voice: str
) -> None:
    expected = reference["heart" if voice.lower() in FEMALE else "joe"]
    assert pcm(client, "tts-1", voice) == expected


def test_an_unknown_voice_still_lists_the_choices(server: LiveServer) -> None:
    with patient_http(server) as http:
        response = http.post(
            "/v1/audio/speech", json={"model": "tts-1", "voice": "Alloys", "input": HELLO}
        )
    assert_error(response, 400, "voice", "Voice 'Alloys' is not available")
    assert "cedar" in response.json()["error"]["message"]


@pytest.mark.parametrize("model", ["gpt-4o-transcribe", "gpt-4o-mini-transcribe"])
def test_gpt_4o_transcription_names_transcribe(client: openai.OpenAI, model: str) -> None:
    text = SENTENCES[0]
    result = client.audio.transcriptions.create(
        model=model, file=("fox.wav", spoken_wav(text), "audio/wav")
    )
    assert words(result.text) == words(text)


def test_an_upper_case_language_code_is_taken(server: LiveServer, client: openai.OpenAI) -> None:
    text = SENTENCES[3]
    result = client.audio.transcriptions.create(
        model="gpt-4o-mini-transcribe",
        file=("rice.wav", spoken_wav(text), "audio/wav"),
        language="EN",
        response_format="verbose_json",
    )
    assert words(result.text) == words(text)
    assert result.language == "english"
    with patient_http(server) as http:  # a code that is not one is still refused, as sent
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("rice.wav", spoken_wav(text))},
            data={"model": "whisper-1", "language": "XX"},
        )
    assert_error(response, 400, "language", "Language 'XX' is not a supported")


def test_aliases_are_listed_as_models(client: openai.OpenAI) -> None:
    ids = [model.id for model in client.models.list()]
    assert ids == [
        "whisper-1",
        "gpt-4o-transcribe",
        "gpt-4o-mini-transcribe",
        "tts-1",
        "tts-1-hd",
        "gpt-4o-mini-tts",
    ]
    assert client.models.retrieve("gpt-4o-mini-tts").id == "gpt-4o-mini-tts"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o-transcribe-diarize")  # no speaker labels here


@pytest.mark.parametrize("model", ["tts-1", "gpt-4o-mini-tts"])
@pytest.mark.parametrize("route", ["/v1/audio/transcriptions", "/v1/audio/translations"])
def test_a_speech_model_on_a_transcription_route_names_the_speech_route(
    server: LiveServer, model: str, route: str
) -> None:
    with patient_http(server) as http:
        response = http.post(route, files={"file": ("a.wav", b"RIFF")}, data={"model": model})
    assert_error(response, 400, "model", f"Model '{model}' is a text-to-speech model")
    assert "/v1/audio/speech" in response.json()["error"]["message"]


@pytest.mark.parametrize("model", ["whisper-1", "gpt-4o-transcribe"])
def test_a_transcription_model_on_the_speech_route_names_the_transcription_route(
    client: openai.OpenAI, model: str
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.audio.speech.create(model=model, voice="alloy", input=HELLO)
    assert raised.value.status_code == 400
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["param"] == "model"
    assert f"Model '{model}' is a speech-to-text model" in error["message"]
    assert "/v1/audio/transcriptions" in error["message"]


def test_a_configured_alias_works_and_replaces_the_default_ones() -> None:
    catalog = (
        SpeechModel(id="tts-1", voices={"alloy": HEART}, aliases=("house-voice",)),
        SpeechModel(id="tts-1-hd", voices={"alloy": HEART}, aliases=()),
    )
    settings = make_settings(models=(), speech_models=catalog)
    with LiveServer(settings) as live, patient_http(live) as http:
        client = live.openai()
        ids = [model.id for model in client.models.list()]
        spoken = pcm(client, "house-voice", "alloy")
        plain = pcm(client, "tts-1", "alloy")
        default_alias = http.post(
            "/v1/audio/speech", json={"model": "gpt-4o-mini-tts", "voice": "alloy", "input": HELLO}
        )
        voices = http.get("/v1/audio/voices", params={"model": "house-voice"}).json()
    assert ids == ["tts-1", "house-voice", "tts-1-hd"]
    assert spoken == plain
    assert_error(default_alias, 404, "model", "does not exist")
    assert [group["model"] for group in voices["data"]] == ["tts-1"]


# -- /v1/audio/voices as Open WebUI reads it --------------------------------------------

OPEN_WEBUI_FALLBACK = {name: name for name in ("alloy", "echo", "fable", "onyx", "nova", "shimmer")}


def open_webui_voices(base_url: str) -> dict[str, str]:
    """Open WebUI's ``get_available_voices`` for the ``openai`` engine on a base URL that
    is not api.openai.com (backend/open_webui/routers/audio.py): a GET without a model
    or a key, ``data["voices"]`` as ``[{"id", "name"}]``, its six names on any failure."""
    try:
        response = httpx.get(f"{base_url}/audio/voices", timeout=600)
        response.raise_for_status()
        data = response.json()
        voices_list = data.get("voices", [])
        return {voice["id"]: voice["name"] for voice in voices_list}
    except Exception:
        return OPEN_WEBUI_FALLBACK


def test_open_webui_reads_every_voice(server: LiveServer) -> None:
    voices = open_webui_voices(f"{server.base_url}/v1")
    assert voices != OPEN_WEBUI_FALLBACK
    assert set(voices) == set(OPENAI_VOICES) == set(EMBEDDED_VOICES)
    assert all(voices[name] == name for name in voices)


OPEN_WEBUI_MODELS_FALLBACK = [{"id": "tts-1"}, {"id": "tts-1-hd"}]


def open_webui_speech_models(base_url: str) -> list[dict[str, str]]:
    """Open WebUI's ``get_available_models`` for the ``openai`` engine on a base URL that
    is not api.openai.com: ``GET {base}/audio/models``, ``data["models"]``, and its own two
    names on any failure."""
    try:
        response = httpx.get(f"{base_url}/audio/models", timeout=600)
        response.raise_for_status()
        models: list[dict[str, str]] = response.json().get("models", [])
        return models
    except Exception:
        return OPEN_WEBUI_MODELS_FALLBACK


def test_open_webui_reads_the_speech_models_and_their_aliases(server: LiveServer) -> None:
    models = open_webui_speech_models(f"{server.base_url}/v1")
    assert models != OPEN_WEBUI_MODELS_FALLBACK
    assert [model["id"] for model in models] == ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    with patient_http(server) as http:
        listing = http.get("/v1/audio/models").json()
    assert [model["id"] for model in listing["data"]] == [model["id"] for model in models]
    assert listing["object"] == "list"


def test_voices_report_the_rate_responses_carry(server: LiveServer) -> None:
    """Piper's joe speaks at 22050 Hz, but every response is 24 kHz."""
    with patient_http(server) as http:
        listing = http.get("/v1/audio/voices").json()
    details = [voice for group in listing["data"] for voice in group["voices"]]
    assert {voice["backend"] for voice in details} == {"hibari", "piper"}
    assert {voice["sample_rate"] for voice in details} == {24_000}


def test_the_voice_list_narrows_by_model_or_alias(server: LiveServer) -> None:
    with patient_http(server) as http:
        by_alias = http.get("/v1/audio/voices", params={"model": "gpt-4o-mini-tts"}).json()
        wrong = http.get("/v1/audio/voices", params={"model": "whisper-1"})
        missing = http.get("/v1/audio/voices", params={"model": "nope"})
    assert [group["model"] for group in by_alias["data"]] == ["tts-1-hd"]
    assert {voice["id"] for voice in by_alias["voices"]} == set(OPENAI_VOICES)
    assert_error(wrong, 400, "model", "speech-to-text model")
    assert_error(missing, 404, "model", "does not exist")


def test_open_webui_reads_the_voices_behind_a_key_once_the_list_is_public() -> None:
    """Open WebUI asks for the list without the API key it has for speech: behind keys,
    the list must be made public (``public_paths``) or Open WebUI shows its six names."""
    guarded = make_settings(models=(), api_keys=("key-one",))
    public = make_settings(
        models=(),
        api_keys=("key-one",),
        public_paths=("/health", "/ready", "/metrics", "/v1/audio/voices"),
    )
    with LiveServer(guarded) as live:
        assert open_webui_voices(f"{live.base_url}/v1") == OPEN_WEBUI_FALLBACK
    with LiveServer(public) as live:
        assert set(open_webui_voices(f"{live.base_url}/v1")) == set(OPENAI_VOICES)
        with patient_http(live) as http:  # the rest stays guarded
            refused = http.post(
                "/v1/audio/speech", json={"model": "tts-1", "voice": "coral", "input": HELLO}
            )
    assert refused.status_code == 401
