"""Bad speech requests get a 400/404 in OpenAI's envelope, and never harm the next one."""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from tests.conftest import LiveServer
from tests.patience import patient_http

GOOD = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", "response_format": "pcm"}


def post(server: LiveServer, content: bytes) -> tuple[int, dict[str, Any]]:
    with patient_http(server) as http:
        response = http.post(
            "/v1/audio/speech", content=content, headers={"content-type": "application/json"}
        )
    return response.status_code, response.json()


def post_json(server: LiveServer, **changes: Any) -> tuple[int, dict[str, Any] | None]:
    """The status and, for an error, its JSON envelope."""
    with patient_http(server) as http:
        response = http.post("/v1/audio/speech", json={**GOOD, **changes})
    return response.status_code, None if response.status_code == 200 else response.json()


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": "a" * 4097}, "input"),
        ({"input": 42}, "input"),
        ({"speed": 0.2}, "speed"),
        ({"speed": 4.5}, "speed"),
        ({"response_format": "ogg"}, "response_format"),
        ({"stream_format": "chunks"}, "stream_format"),
        ({"voice": {"name": "alloy"}}, "voice"),
        ({"speed": "fast"}, "speed"),
        ({"input": "\U0001f600\U0001f44d\u200b\n\t**"}, "input"),
    ],
)
def test_invalid_fields_are_400_naming_the_param(
    server: LiveServer, changes: dict[str, Any], param: str
) -> None:
    status, body = post_json(server, **changes)
    assert status == 400 and body is not None, body
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param, body


def test_input_of_exactly_4096_characters_is_accepted(server: LiveServer) -> None:
    status, _ = post_json(server, input=("Go on. " * 586)[:4096])
    assert status == 200


def test_an_unknown_voice_lists_the_choices(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", voice="gravel", input="Hi.")
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == "voice"
    for voice in ("alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "shimmer"):
        assert voice in error["message"]


def test_an_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.audio.speech.create(model="tts-9", voice="alloy", input="Hi.")
    assert isinstance(caught.value.body, dict) and caught.value.body["param"] == "model"


def test_a_transcription_model_is_not_a_speech_model(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="whisper-1", voice="alloy", input="Hi.")
    error = caught.value.body
    assert isinstance(error, dict) and error["param"] == "model"
    assert "/v1/audio/transcriptions" in error["message"]


@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "tts-1", "voice": "alloy", "input": "caf\xe9"}',  # Latin-1, not UTF-8
        b'{"model": "tts-1", "voice": "alloy", "input": "Hi."',
        b"",
        b"[1, 2, 3]",
        b"[" * 150_000 + b"]" * 150_000,
    ],
    ids=["invalid-utf8", "truncated", "empty", "not-an-object", "nested-150000-deep"],
)
def test_malformed_bodies_are_400(server: LiveServer, content: bytes) -> None:
    status, body = post(server, content)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


HOSTILE_INPUTS = [
    "\U0001f469\u200d\U0001f469\u200d\U0001f467 family! \U0001f1fa\U0001f1f8 flag.",
    "Null\x00bytes\x07and\x1bescapes.",
    "x" * 4096,
    "." * 4096,
    "Supercalifragilistic " * 190,
    "# Title\n\n**bold** and `code` and [a link](http://example.com).",
    "\u6771\u4eac\u306f\u65e5\u672c\u306e\u9996\u90fd\u3067\u3059\u3002",
    "\u0627\u0644\u0633\u0644\u0627\u0645 \u0639\u0644\u064a\u0643\u0645",
    "1234567890" * 50,
    "\u202eright-to-left override\u202c and \ufeff BOM.",
    "a\u0301\u0302\u0303\u0304\u0305\u0306\u0307\u0308" * 200,
]


PCM_BYTES_PER_SECOND = 24_000 * 2
"""The speech route's raw ``pcm``: 24 kHz, 16-bit, mono."""
MAX_SECONDS_PER_CHARACTER = 1.0
"""A runaway synthesis (a loop that never stops, a word spelled out forever) shows in
the length of the audio, which no busy machine changes: even spelled out letter by
letter or digit by digit, a character is well under a second of speech."""


@pytest.mark.parametrize("voice", ["alloy", "echo"])
def test_hostile_inputs_never_break_the_voice(server: LiveServer, voice: str) -> None:
    # No clock: synthesizing 4,096 characters took 74.5 s on a busy 2-core machine. A
    # hang fails on the client's PATIENCE_S timeout, a runaway on the audio's length.
    with patient_http(server) as http:
        for text in HOSTILE_INPUTS:
            response = http.post("/v1/audio/speech", json={**GOOD, "voice": voice, "input": text})
            assert response.status_code in (200, 400), (text[:40], response.status_code)
            if response.status_code == 400:
                assert response.json()["error"]["param"] == "input", response.text
                continue
            seconds = len(response.content) / PCM_BYTES_PER_SECOND
            assert seconds <= MAX_SECONDS_PER_CHARACTER * len(text) + 2, (text[:40], seconds)
    with patient_http(server) as http:
        after = http.post("/v1/audio/speech", json={**GOOD, "voice": voice})
        ready = http.get("/ready")
    assert after.status_code == 200 and len(after.content) > 24_000
    assert ready.status_code == 200


def test_errors_leave_no_request_admitted(server: LiveServer) -> None:
    for _ in range(3):
        post_json(server, voice="nobody")
        post_json(server, input="")
    with patient_http(server) as http:
        metrics = http.get("/metrics").text
    assert re.search(r"voxserve_queue_depth\{[^}]*\} 0\.0", metrics)
