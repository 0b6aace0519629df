"""Bad input: a clear 4xx in OpenAI's envelope, never a 500 or a hang, no harm after."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import LiveServer, make_settings
from tests.patience import wait_until
from tests.speech import SENTENCES, wav_bytes

URL = "/v1/audio/transcriptions"


def post(server: LiveServer, files: Any = None, **fields: str) -> httpx.Response:
    with server.http() as http:
        return http.post(URL, files=files, data={"model": "whisper-1", **fields})


def assert_error(response: httpx.Response, status: int, param: str | None, says: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    server_side = status >= 500 or status == 429  # overload is the server's state, not a fault
    assert body["error"]["type"] == ("server_error" if server_side else "invalid_request_error")
    assert says.lower() in body["error"]["message"].lower()


SILENT_HEADER_ONLY = wav_bytes(np.zeros(0, dtype=np.int16), 16_000)
WAV = {"file": ("a.wav", b"RIFF")}
VAD_THRESHOLD_2 = {"chunking_strategy[type]": "server_vad", "chunking_strategy[threshold]": "2"}


@pytest.mark.parametrize(
    ("files", "fields", "status", "param", "says"),
    [
        (None, {}, 400, "file", "must provide a 'file'"),
        (None, {"file": "not a file"}, 400, "file", "file upload"),
        ({"file": ("a.wav", b"")}, {}, 400, "file", "empty"),
        ({"file": ("a.mp3", b"\x00garbage" * 100)}, {}, 400, "file", "could not be decoded"),
        ({"file": ("a.wav", SILENT_HEADER_ONLY)}, {}, 400, "file", "no audio samples"),
        ({"file": ("a.wav", b"RIFF")}, {"model": "whisper-9"}, 404, "model", "does not exist"),
        ({"file": ("a.wav", b"RIFF")}, {"temperature": "2"}, 400, "temperature", "<= 1.0"),
        ({"file": ("a.wav", b"RIFF")}, {"temperature": "warm"}, 400, "temperature", "float"),
        ({"file": ("a.wav", b"RIFF")}, {"response_format": "xml"}, 400, "response_format", ""),
        # language "fr" on an English-only model: tests/api/test_multilingual.py
        ({"file": ("a.wav", b"RIFF")}, {"language": "xx"}, 400, "language", "ISO-639-1"),
        # unknown fields are ignored (tests/api/test_lenient_forms.py): the file is the fault
        ({"file": ("a.wav", b"RIFF")}, {"speed": "1"}, 400, "file", "could not be decoded"),
        (WAV, {"stream": "true", "response_format": "srt"}, 400, "stream", "'json' or 'text'"),
        (WAV, {"timestamp_granularities[]": "word"}, 400, "timestamp_granularities", "verbose"),
        (WAV, {"timestamp_granularities[]": "phoneme"}, 400, "timestamp_granularities", ""),
        (WAV, {"include[]": "logprobs", "response_format": "text"}, 400, "include", "'json'"),
        (WAV, {"chunking_strategy": "manual"}, 400, "chunking_strategy", ""),
        (WAV, VAD_THRESHOLD_2, 400, "chunking_strategy.threshold", "<= 1.0"),
        (WAV, {"chunking_strategy[type]": "client_vad"}, 400, "chunking_strategy.type", ""),
        ({"file": ("notes.txt", b"hello")}, {}, 400, "file", "flac, m4a, mp3"),
        ({"file": ("a.aiff", b"FORM")}, {}, 400, "file", "could not be decoded"),
        ({"file": ("a.flac", SILENT_HEADER_ONLY)}, {}, 400, "file", "no audio samples"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    server: LiveServer,
    files: Any,
    fields: dict[str, str],
    status: int,
    param: str | None,
    says: str,
) -> None:
    assert_error(post(server, files, **fields), status, param, says)


def test_unknown_routes_and_methods_use_the_envelope_too(server: LiveServer) -> None:
    with server.http() as http:
        assert_error(http.get("/v1/audio/nothing"), 404, None, "not found")
        assert_error(http.get(URL), 405, None, "")


def test_the_server_still_answers_correctly_after_bad_input(
    server: LiveServer, client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    for payload in (b"", b"\xff" * 5000, SILENT_HEADER_ONLY):
        assert post(server, {"file": ("x.wav", payload)}).status_code == 400
    result = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", sentence_wavs[3]))
    assert result.text == SENTENCES[3]


def test_the_sdk_raises_its_own_error_types(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"nonsense"))
    assert bad.value.body["param"] == "file"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.audio.transcriptions.create(model="nope", file=("a.wav", b"nonsense"))


def test_an_upload_over_the_limit_is_413() -> None:
    with LiveServer(make_settings(max_upload_bytes=100_000)) as live:
        response = post(live, {"file": ("big.wav", b"\x00" * 1_300_000)})
        assert_error(response, 413, None, "too large")


def test_a_full_queue_is_429_with_retry_after(
    long_wav: tuple[bytes, str], sentence_wavs: list[bytes]
) -> None:
    long_file = long_wav[0]
    with LiveServer(make_settings(max_queue_size=1)) as live:
        first: list[httpx.Response] = []
        busy = threading.Thread(
            target=lambda: first.append(post(live, {"file": ("l.wav", long_file)}))
        )
        busy.start()
        schedulers = live.app.state.runtime.schedulers("transcription")
        wait_until(lambda: any(s.admitted for s in schedulers), "the long request admitted")
        started = time.monotonic()
        refused = post(live, {"file": ("a.wav", sentence_wavs[0])})
        assert time.monotonic() - started < 10.0  # refused at once, not after 70 s of audio
        assert_error(refused, 429, None, "capacity")
        assert int(refused.headers["retry-after"]) >= 1
        busy.join()
        assert [r.status_code for r in first] == [200]
        # Once the first is answered, the place is free again.
        assert post(live, {"file": ("a.wav", sentence_wavs[0])}).status_code == 200
