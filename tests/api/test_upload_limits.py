"""Upload limits over real HTTP: the size of the file, of the request, of the audio inside.

A limit must hold at its edge (the largest file allowed is transcribed, one byte
more is a 413), must not cost the server the thing it limits (a request claiming
500 MB is refused before its body is sent), and a file that is small on the wire
but long in time (an hour of silence) must neither be refused nor slow.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import numpy as np
import pytest
from openai.types.audio.transcription import UsageDuration

from tests.api.test_errors import assert_error, post
from tests.conftest import LiveServer, make_settings
from tests.speech import SENTENCES, speak, spoken_wav, wav_bytes
from tests.unit.test_audio_limits import silent_flac, tone, wav_file

UPLOAD_LIMIT = 100_000
WAV_HEADER_BYTES = 44


@pytest.fixture(scope="module")
def upload_limited() -> Iterator[LiveServer]:
    with LiveServer(make_settings(speech_models=(), max_upload_bytes=UPLOAD_LIMIT)) as live:
        yield live


@pytest.fixture(scope="module")
def largest_allowed() -> tuple[bytes, str]:
    """A spoken sentence padded with silence to a WAV of exactly ``UPLOAD_LIMIT`` bytes."""
    text = SENTENCES[2]
    samples, rate = speak(text)
    room = (UPLOAD_LIMIT - WAV_HEADER_BYTES) // 2
    assert len(samples) < room
    padded = np.concatenate([samples, np.zeros(room - len(samples), dtype=np.int16)])
    data = wav_bytes(padded, rate)
    assert len(data) == UPLOAD_LIMIT
    return data, text


def test_a_file_of_exactly_the_limit_is_transcribed(
    upload_limited: LiveServer, largest_allowed: tuple[bytes, str]
) -> None:
    data, text = largest_allowed
    response = post(upload_limited, {"file": ("edge.wav", data)})
    assert response.status_code == 200, response.text
    assert response.json()["text"] == text


def test_one_byte_over_the_limit_is_413_for_the_file(
    upload_limited: LiveServer, largest_allowed: tuple[bytes, str]
) -> None:
    response = post(upload_limited, {"file": ("edge.wav", largest_allowed[0] + b"\x00")})
    assert_error(response, 413, "file", f"larger than the {UPLOAD_LIMIT} bytes")


def raw_exchange(server: LiveServer, request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send ``request`` as is and read one response: its status and body."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(request)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed before a response: {received!r}"
            received += chunk
        head, body = received.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = int({k.lower(): v for k, v in headers.items()}["content-length"])
        while len(body) < length:
            chunk = sock.recv(65536)
            assert chunk, "connection closed mid-body"
            body += chunk
    return int(lines[0].split()[1]), body


def test_a_request_announcing_500_mb_is_413_before_its_body(upload_limited: LiveServer) -> None:
    request = (
        b"POST /v1/audio/transcriptions HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: 500000000\r\n"
        b"\r\n"
    )
    started = time.monotonic()
    status, body = raw_exchange(upload_limited, request, timeout=30.0)  # no body is ever sent
    assert time.monotonic() - started < 20.0  # answered at once: nothing more is coming
    assert status == 413
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert "too large" in error["message"]


@pytest.mark.parametrize(
    ("files", "fields"),
    [
        ({"file": ("a" * 10_000 + ".wav", b"RIFF")}, {}),  # a 10,000-character filename
        ({"file": ("a.wav", b"RIFF")}, {"x" * 100_000: "y"}),  # a 100 KB part header
    ],
    ids=["filename-10k-chars", "part-header-100kb"],
)
def test_an_oversized_part_header_is_413_saying_so(
    upload_limited: LiveServer, files: dict[str, tuple[str, bytes]], fields: dict[str, str]
) -> None:
    response = post(upload_limited, files, **fields)
    assert_error(response, 413, None, "part header")
    message = response.json()["error"]["message"]
    assert "filename" in message and "4224 bytes" in message
    assert "too many parts" not in message  # the form has two or three parts


def test_too_long_audio_is_400_naming_the_limit() -> None:
    with LiveServer(make_settings(speech_models=(), max_audio_seconds=10)) as live:
        twenty = wav_file(tone(20.0, 16_000), 16_000)
        assert_error(post(live, {"file": ("long.wav", twenty)}), 400, "file", "at most 10 seconds")
        short = post(live, {"file": ("short.wav", spoken_wav(SENTENCES[4]))})
        assert short.status_code == 200, short.text
        assert short.json()["text"] == SENTENCES[4]


def test_an_hour_of_silence_is_quick_and_empty_and_harmless() -> None:
    hour = silent_flac(3600)
    settings = make_settings(speech_models=())
    assert len(hour) < settings.max_upload_bytes
    with LiveServer(settings) as live:
        client = live.openai()
        started = time.monotonic()
        result = client.audio.transcriptions.create(model="whisper-1", file=("silence.flac", hour))
        assert time.monotonic() - started < 10.0
        assert result.text == ""
        assert isinstance(result.usage, UsageDuration)
        assert result.usage.seconds == 3600  # all of it was decoded, none of it refused
        spoken = client.audio.transcriptions.create(
            model="whisper-1", file=("speech.wav", spoken_wav(SENTENCES[0]))
        )
        assert spoken.text == SENTENCES[0]
