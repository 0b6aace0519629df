"""Fields real clients send that the API does not know, and spellings curl users use.

wyoming-openai sends speaches' ``vad_filter``; newer SDKs send ``keywords`` and
``known_speaker_names[]``; LiteLLM adds its own keys to the speech JSON; curl users
write ``-F timestamp_granularities=word`` without the brackets. By default each
unknown field is ignored and named in ``X-Voxserve-Ignored-Fields``; with
``unknown_fields="refuse"`` it is a 400 naming it. Known fields are never lenient
about their values. Everything goes through a real server: the official SDK where it
is the client, httpx for the forms curl sends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol
from urllib.parse import unquote

import httpx
import openai
import pytest

from server.forms import IGNORED_FIELDS_HEADER, MAX_IGNORED_HEADER_CHARS
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import patient_http
from tests.speech import SENTENCES, word_error_rate

TRANSCRIPTIONS = "/v1/audio/transcriptions"
SPEECH = "/v1/audio/speech"


class HasHeaders(Protocol):
    """An httpx response, or the SDK's (its own vendored httpx)."""

    @property
    def headers(self) -> Mapping[str, str]: ...


def ignored(response: HasHeaders) -> list[str]:
    """The names in the response's ignored-fields header, decoded; none without it."""
    value = response.headers.get(IGNORED_FIELDS_HEADER)
    return [unquote(name) for name in value.split(", ")] if value else []


def transcribe(live: LiveServer, wav: bytes, fields: dict[str, Any]) -> httpx.Response:
    """A form as curl sends it; a list value is that field repeated."""
    with patient_http(live) as http:
        return http.post(TRANSCRIPTIONS, data=fields, files={"file": ("a.wav", wav)})


# -- the SDK: unknown fields are ignored, and named ----------------------------------------


def test_the_sdk_with_speaches_and_newer_fields_transcribes_and_names_only_them(
    client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        model="whisper-1",
        file=("a.wav", sentence_wavs[1]),
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
        language="en",
        temperature=0.0,
        extra_body={"vad_filter": "true", "keywords": ["Stella"]},
    )
    transcript = raw.parse()
    assert transcript.text.strip() == SENTENCES[1] and transcript.words
    assert sorted(ignored(raw.http_response)) == ["keywords[]", "vad_filter"]


def test_speech_json_with_extra_keys_speaks_and_names_them(client: openai.OpenAI) -> None:
    raw = client.audio.speech.with_raw_response.create(
        model="tts-1",
        voice="alloy",
        input="Hello there.",
        response_format="wav",
        extra_body={"stream": False, "metadata": {"user": "litellm"}},
    )
    assert raw.http_response.status_code == 200
    assert raw.content[:4] == b"RIFF"
    assert sorted(ignored(raw.http_response)) == ["metadata", "stream"]


def test_an_error_response_names_the_ignored_fields_too(server: LiveServer) -> None:
    """The misspelt ``temprature`` is why the bad file was not the only surprise."""
    response = transcribe(server, b"RIFF", {"model": "whisper-1", "temprature": "0.2"})
    assert_error(response, 400, "file", "")
    assert ignored(response) == ["temprature"]


def test_an_unknown_file_part_is_ignored_too(
    server: LiveServer, sentence_wavs: list[bytes]
) -> None:
    """As OpenAI's diarization sends ``known_speaker_references[]``: here, not used."""
    files = {
        "file": ("a.wav", sentence_wavs[3]),
        "known_speaker_references[]": ("ann.wav", sentence_wavs[0]),
    }
    with patient_http(server) as http:
        response = http.post(TRANSCRIPTIONS, data={"model": "whisper-1"}, files=files)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == SENTENCES[3]
    assert ignored(response) == ["known_speaker_references[]"]


# -- curl's spellings of list fields ---------------------------------------------------------


def test_timestamp_granularities_without_brackets_gives_words(
    server: LiveServer, sentence_wavs: list[bytes]
) -> None:
    fields = {
        "model": "whisper-1",
        "response_format": "verbose_json",
        "timestamp_granularities": "word",
    }
    response = transcribe(server, sentence_wavs[4], fields)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [w["word"] for w in body["words"]][:3] == ["The", "boy", "was"]
    assert "segments" not in body  # word alone, exactly as with the [] spelling
    assert IGNORED_FIELDS_HEADER not in response.headers


def test_both_spellings_repeated_and_mixed_make_one_list(
    server: LiveServer, sentence_wavs: list[bytes]
) -> None:
    bare_twice = {"timestamp_granularities": ["segment", "word"]}
    mixed = {"timestamp_granularities": "segment", "timestamp_granularities[]": "word"}
    for spelling in (bare_twice, mixed):
        fields = {"model": "whisper-1", "response_format": "verbose_json", **spelling}
        body = transcribe(server, sentence_wavs[4], fields).json()
        assert body["words"] and body["segments"], body


def test_include_without_brackets_gives_logprobs(
    server: LiveServer, sentence_wavs: list[bytes]
) -> None:
    response = transcribe(server, sentence_wavs[4], {"model": "whisper-1", "include": "logprobs"})
    assert response.status_code == 200, response.text
    logprobs = response.json()["logprobs"]
    assert logprobs and all(entry["logprob"] <= 0 for entry in logprobs)


@pytest.mark.parametrize(
    ("fields", "param", "says"),
    [
        # One value is one value: a comma-joined list is not split into a guess.
        (
            {"timestamp_granularities": "word,segment", "response_format": "verbose_json"},
            "timestamp_granularities",
            "invalid enum value 'word,segment'",
        ),
        ({"timestamp_granularities": "word"}, "timestamp_granularities", "verbose_json"),
        ({"include": "tokens"}, "include", "invalid enum value 'tokens'"),
        ({"temperature": "warm", "vad_filter": "true"}, "temperature", "float"),
    ],
    ids=["comma-joined", "bare-without-verbose-json", "bare-bad-value", "bad-known-field"],
)
def test_known_fields_keep_their_400s_in_either_spelling(
    server: LiveServer, fields: dict[str, str], param: str, says: str
) -> None:
    response = transcribe(server, b"RIFF", {"model": "whisper-1", **fields})
    assert_error(response, 400, param, says)


# -- the header stays a header, whatever the names -------------------------------------------


def test_odd_names_are_percent_encoded_in_alphabetical_order(
    server: LiveServer, sentence_wavs: list[bytes]
) -> None:
    odd = ["naïve", "a, b", "100%", "semi;colon"]
    fields = {"model": "whisper-1", **dict.fromkeys(odd, "1")}
    response = transcribe(server, sentence_wavs[2], fields)
    assert response.status_code == 200, response.text
    assert response.json()["text"] == SENTENCES[2]
    assert response.headers[IGNORED_FIELDS_HEADER].isascii()
    assert ignored(response) == sorted(odd)


def test_a_flood_of_names_is_cut_to_a_bounded_header(
    server: LiveServer, sentence_wavs: list[bytes]
) -> None:
    flood = ["q" * 3000, *(f"made_up_{n:03}" for n in range(300))]
    fields = {"model": "whisper-1", **dict.fromkeys(flood, "1")}
    response = transcribe(server, sentence_wavs[2], fields)
    assert response.status_code == 200, response.text
    value = response.headers[IGNORED_FIELDS_HEADER]
    assert len(value) <= MAX_IGNORED_HEADER_CHARS + len(", ...")
    names = ignored(response)
    assert names[0] == "made_up_000" and names[-1] == "..."  # the long name sorts last, cut
    assert names[:-1] == sorted(flood)[: len(names) - 1]


# -- files named as people name them --------------------------------------------------------


def test_our_own_opus_output_saved_as_opus_transcribes(client: openai.OpenAI) -> None:
    sentence = SENTENCES[9]
    opus = client.audio.speech.create(
        model="tts-1", voice="onyx", input=sentence, response_format="opus"
    ).read()
    assert opus[:4] == b"OggS"
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.opus", opus)).text
    wer = word_error_rate([(sentence, text)])
    assert wer is not None and wer <= 0.15, text


# -- unknown_fields = "refuse" ---------------------------------------------------------------


@pytest.fixture(scope="module")
def strict() -> Iterator[LiveServer]:
    with LiveServer(make_settings(unknown_fields="refuse", speech_models=())) as live:
        yield live


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"vad_filter": "true"}, "vad_filter"),
        ({"keywords[]": "Stella"}, "keywords[]"),
        ({"known_speaker_names[]": "Ann"}, "known_speaker_names[]"),
        ({"hotwords": ""}, "hotwords"),  # empty is "not given" for a known field only
        ({"diarization[min]": "1"}, "diarization"),
        ({"x" * 3000: "1"}, "x" * 99 + "\u2026"),
    ],
    ids=["vad_filter", "keywords", "known_speaker_names", "empty", "object", "3000-char-name"],
)
def test_refuse_makes_each_unknown_field_a_400_naming_it(
    strict: LiveServer, sentence_wavs: list[bytes], fields: dict[str, str], param: str
) -> None:
    response = transcribe(strict, sentence_wavs[0], {"model": "whisper-1", **fields})
    assert_error(response, 400, param, "unknown field")
    assert 'unknown_fields = "refuse"' in response.json()["error"]["message"]
    assert len(response.content) < 2048


def test_refuse_still_takes_the_sdk_fields_and_curl_spellings(
    strict: LiveServer, sentence_wavs: list[bytes]
) -> None:
    fields = {
        "model": "whisper-1",
        "response_format": "verbose_json",
        "timestamp_granularities": "word",
        "temperature": "0",
        "language": "en",
        "prompt": "",
    }
    response = transcribe(strict, sentence_wavs[4], fields)
    assert response.status_code == 200, response.text
    assert response.json()["words"][0]["word"] == "The"
    sdk = strict.openai().audio.transcriptions.create(
        model="whisper-1", file=("a.wav", sentence_wavs[4]), include=["logprobs"]
    )
    assert sdk.text == SENTENCES[4] and sdk.logprobs


def test_refuse_names_an_unknown_speech_key_before_anything_else(strict: LiveServer) -> None:
    with patient_http(strict) as http:
        response = http.post(SPEECH, json={"model": "tts-1", "input": "Hi.", "voise": "alloy"})
    assert_error(response, 400, "voise", "unknown field 'voise'")
