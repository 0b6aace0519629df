"""Hostile input: each case a quick 4xx in OpenAI's envelope, and the server unharmed.

The corpus is what a platform team throws at a new service before letting it near
traffic: empty, truncated, random and mislabelled files, headers that lie, text
that is not UTF-8, JSON nested 150,000 deep, inputs far over their limits, paths
where names belong, forms of thousands of parts. Every request is built here, byte
by byte where a client library would refuse to send it, and sent raw. Each must be
answered with the exact 4xx expected, in the envelope, quickly, without echoing the
hostile input back wholesale; after each the server is still ready, and at the end
it still transcribes and speaks correctly.

"Quickly" is :data:`QUICK_S`: each case takes well under a second alone, and several
seconds on a busy 2-core machine, so the bound catches a hang or a runaway parse
(quadratic, or a 150,000-deep recursion) without timing the machine. Every client
waits up to ``PATIENCE_S``, so a slow answer fails on the bound, with its time, and
only a hang on the timeout.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pytest
from litestar import Litestar, Request, post
from litestar.testing import TestClient

from server.encoding import encode_all
from server.errors import exception_handlers
from server.forms import parse_form, read_form
from server.protocol import TranscriptionForm
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import patient_http, wait_until_ready
from tests.speech import SENTENCES, speak, wav_bytes

TRANSCRIPTIONS = "/v1/audio/transcriptions"
TRANSLATIONS = "/v1/audio/translations"
SPEECH = "/v1/audio/speech"
QUICK_S = 30.0
"""The bound on a hostile request's answer (or a 5 MB prompt's): 6x the 5 s it was,
which was itself tens of times what a case takes on an idle machine."""
MAX_ERROR_BYTES = 2048
"""An error names what is wrong; it never sends a 300 kB field back."""
BOUNDARY = "hostile-boundary"
NOT_UTF8 = b"\xff\xfe\x80"
DEPTH = 150_000
MANY_PARTS = 5_000
"""Five times Litestar's ``multipart_form_part_limit``."""
MP3_FRAME_BYTES = 288
"""One MPEG-2 layer III frame at 96 kbit/s and 24 kHz (the speech encoder's mp3)."""
SPOKEN = SENTENCES[4]


@dataclass(frozen=True)
class Raw:
    """A request as sent: path, body, Content-Type."""

    path: str
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Case:
    id: str
    request: Callable[[], Raw]
    status: int
    param: str | None
    says: str
    marks: tuple[pytest.MarkDecorator, ...] = field(default=())


Part = tuple[bytes, bytes | None, bytes]
"""A multipart part: field name, filename (``None`` for a text field), content."""


def text(name: bytes, value: bytes) -> Part:
    return (name, None, value)


def upload(filename: bytes, data: bytes) -> Part:
    return (b"file", filename, data)


def multipart(*parts: Part, path: str = TRANSCRIPTIONS) -> Raw:
    boundary = BOUNDARY.encode()
    body = bytearray()
    for name, filename, value in parts:
        disposition = b'form-data; name="' + name + b'"'
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + value + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    return Raw(path, bytes(body), f"multipart/form-data; boundary={BOUNDARY}")


def form(*parts: Part, model: bytes = b"whisper-1", path: str = TRANSCRIPTIONS) -> Raw:
    """A transcription form: ``model``, then ``parts``."""
    return multipart(text(b"model", model), *parts, path=path)


def speech(**overrides: Any) -> Raw:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello there.", **overrides}
    return Raw(SPEECH, json.dumps(body).encode(), "application/json")


def speech_of(**overrides: Any) -> Callable[[], Raw]:
    return lambda: speech(**overrides)


def raw_speech(body: bytes, content_type: str = "application/json") -> Raw:
    return Raw(SPEECH, body, content_type)


@cache
def wav() -> bytes:
    """A spoken sentence, 16-bit mono, with the canonical 44-byte header."""
    return wav_bytes(*speak(SPOKEN))


@cache
def mp3() -> bytes:
    """The same sentence as the speech route encodes mp3: frames from the first byte."""
    samples, rate = speak(SPOKEN)
    return encode_all("mp3", (samples / 32768).astype(np.float32), rate)


def wav_claiming(offset: int, value: int, fmt: str = "<I") -> bytes:
    """A one-second WAV whose header says ``value`` at ``offset`` (24: sample rate,
    22: channels, 34: bits per sample)."""
    samples, rate = speak(SPOKEN)
    header = bytearray(wav_bytes(samples[:rate], rate))
    struct.pack_into(fmt, header, offset, value)
    return bytes(header)


def random_bytes() -> bytes:
    return np.random.default_rng(2024).bytes(20_000)


def file_named(filename: bytes, data: Callable[[], bytes]) -> Callable[[], Raw]:
    return lambda: form(upload(filename, data()))


def with_wav(
    *parts: Part, model: bytes = b"whisper-1", path: str = TRANSCRIPTIONS
) -> Callable[[], Raw]:
    return lambda: form(*parts, upload(b"a.wav", wav()), model=model, path=path)


def deep_array() -> bytes:
    return b"[" * DEPTH + b"]" * DEPTH


def deep_object(key: bytes = b"a", leaf: bytes = b"1") -> bytes:
    return (b'{"' + key + b'":') * DEPTH + leaf + b"}" * DEPTH


def many_parts(name: Callable[[int], bytes], value: bytes) -> Callable[[], Raw]:
    return lambda: form(
        upload(b"a.wav", b"RIFF"), *(text(name(n), value) for n in range(MANY_PARTS))
    )


def cut_off_form() -> Raw:
    whole = form(upload(b"a.wav", wav()))
    return Raw(whole.path, whole.body[:500], whole.content_type)


CASES = [
    # -- the file ---------------------------------------------------------------------
    Case("zero-byte-file", lambda: form(upload(b"a.wav", b"")), 400, "file", "empty (0 bytes)"),
    Case(
        "mp3-cut-to-100-bytes",
        lambda: form(upload(b"a.mp3", mp3()[:100])),
        400,
        "file",
        "could not be decoded",
    ),
    Case(
        "mp3-cut-to-200-bytes",
        lambda: form(upload(b"a.mp3", mp3()[:200])),
        400,
        "file",
        "could not be decoded",
    ),
    *(
        Case(
            f"random-bytes-named-{ext}",
            file_named(b"noise." + ext.encode(), random_bytes),
            400,
            "file",
            "could not be decoded",
        )
        for ext in ("wav", "mp3", "flac")
    ),
    Case(
        "playlist-of-a-local-file-named-wav",
        lambda: form(upload(b"a.wav", b"#EXTM3U\n#EXTINF:1.0,\nfile:///etc/passwd\n")),
        400,
        "file",
        "could not be decoded",
    ),
    Case(
        "wav-claiming-4000000000-hz",
        lambda: form(upload(b"a.wav", wav_claiming(24, 4_000_000_000))),
        400,
        "file",
        "could not be decoded",  # ffmpeg refuses it before the rate check sees it
    ),
    Case(
        "wav-claiming-0-hz",
        lambda: form(upload(b"a.wav", wav_claiming(24, 0))),
        400,
        "file",
        "could not be decoded",
    ),
    Case(
        "wav-claiming-1000000-hz",
        lambda: form(upload(b"a.wav", wav_claiming(24, 1_000_000))),
        400,
        "file",
        "sample rate of 1000000 Hz",
    ),
    Case(
        "wav-claiming-65535-channels",
        lambda: form(upload(b"a.wav", wav_claiming(22, 65_535, "<H"))),
        400,
        "file",
        "could not be decoded",
    ),
    Case(
        "wav-claiming-0-bits-per-sample",
        lambda: form(upload(b"a.wav", wav_claiming(34, 0, "<H"))),
        400,
        "file",
        "codec is not supported",
    ),
    # -- text that is not UTF-8 -------------------------------------------------------------
    *(
        Case(
            f"non-utf8-{name.decode()}",
            with_wav(text(name, NOT_UTF8)),
            400,
            None,
            "not valid UTF-8",
        )
        for name in (b"prompt", b"language")
    ),
    Case(
        "non-utf8-model",
        with_wav(model=NOT_UTF8),
        400,
        None,
        "not valid UTF-8",
    ),
    Case(
        "binary-file-sent-without-filename",
        lambda: form((b"file", b"", wav())),
        400,
        None,
        "not valid UTF-8",
    ),
    Case(
        "non-utf8-filename",
        lambda: form(upload(b"\xff\xfe\x80.wav", wav())),
        400,
        None,
        "Invalid multipart/form-data",
    ),
    Case(
        "non-utf8-field-name",
        with_wav(text(b"\xff\xfe", b"x")),
        400,
        None,
        "Invalid multipart/form-data",
    ),
    Case(
        "speech-body-not-utf8",
        lambda: raw_speech(b'{"model":"tts-1","voice":"alloy","input":"' + NOT_UTF8 + b'"}'),
        400,
        None,
        "not valid UTF-8 JSON",
    ),
    # -- nesting ------------------------------------------------------------------------
    Case(
        "speech-body-150000-deep-arrays",
        lambda: raw_speech(deep_array()),
        400,
        None,
        "Expected `object`, got `array`",
    ),
    Case(
        "speech-body-150000-deep-objects",
        lambda: raw_speech(deep_object()),
        400,
        None,
        "nested too deeply",
    ),
    Case(
        "speech-voice-150000-deep",
        lambda: raw_speech(
            b'{"model":"tts-1","input":"Hi.","voice":' + deep_object(b"id", b'"x"') + b"}"
        ),
        400,
        "voice.id",
        "Expected `str`, got `object`",
    ),
    Case(
        "chunking-strategy-150000-deep-arrays",
        lambda: form(text(b"chunking_strategy", deep_array()), upload(b"a.wav", wav())),
        400,
        "chunking_strategy",
        "Invalid enum value",
    ),
    Case(
        "chunking-strategy-150000-deep-objects",
        lambda: form(text(b"chunking_strategy", deep_object()), upload(b"a.wav", wav())),
        400,
        "chunking_strategy",
        "Invalid enum value",
    ),
    Case(
        "chunking-strategy-as-value-and-object",
        with_wav(text(b"chunking_strategy", b"auto"), text(b"chunking_strategy[type]", b"x")),
        400,
        "chunking_strategy",
        "both as a value and as an object",
    ),
    # -- sizes --------------------------------------------------------------------------
    Case(
        "speech-input-100000-chars",
        lambda: speech(input="word " * 20_000),
        400,
        "input",
        "length <= 4096",
    ),
    Case(
        "speech-input-only-control-chars",
        lambda: speech(input="\x00\u200b" * 2048),
        400,
        "input",
        "nothing to speak",
    ),
    Case(
        "model-of-100000-chars",
        with_wav(model=b"m" * 100_000),
        400,
        "model",
        "length <= 256",
    ),
    Case(
        "speech-voice-of-100000-chars",
        lambda: speech(voice="v" * 100_000),
        400,
        "voice",
        "length <= 256",
    ),
    Case(
        "speech-speed-1e999",
        lambda: raw_speech(b'{"model":"tts-1","voice":"alloy","input":"Hi.","speed":1e999}'),
        400,
        "speed",
        "out of range",
    ),
    Case("temperature-nan", with_wav(text(b"temperature", b"nan")), 400, "temperature", ">= 0"),
    Case(
        f"{MANY_PARTS}-distinct-parts",
        many_parts(lambda n: b"x%d" % n, b"y"),
        413,
        None,
        "too many parts",
    ),
    Case(
        f"{MANY_PARTS}-repeated-list-parts",
        many_parts(lambda _: b"timestamp_granularities[]", b"segment"),
        413,
        None,
        "too many parts",
    ),
    # -- names that are paths -------------------------------------------------------------
    Case(
        "speech-voice-etc-passwd",
        lambda: speech(voice="../../etc/passwd"),
        400,
        "voice",
        "Voice '../../etc/passwd' is not available",
    ),
    Case(
        "speech-voice-id-etc-passwd",
        lambda: speech(voice={"id": "../../etc/passwd"}),
        400,
        "voice",
        "is not available",
    ),
    *(
        Case(
            f"{route}-model-{label}",
            build,
            404,
            "model",
            "does not exist",
        )
        for model, label in (("../../etc/passwd", "etc-passwd"), ("a/b\\c", "with-separators"))
        for route, build in (
            ("transcription", with_wav(model=model.encode())),
            ("translation", with_wav(model=model.encode(), path=TRANSLATIONS)),
            ("speech", speech_of(model=model)),
        )
    ),
    Case(
        "language-etc-passwd",
        with_wav(text(b"language", b"../../etc/passwd")),
        400,
        "language",
        "ISO-639-1",
    ),
    # -- malformed requests -----------------------------------------------------------------
    Case(
        "multipart-without-boundary",
        lambda: Raw(TRANSCRIPTIONS, form(upload(b"a.wav", wav())).body, "multipart/form-data"),
        400,
        None,
        "boundary missing",
    ),
    Case("multipart-cut-off-mid-part", cut_off_form, 400, None, "Invalid multipart/form-data"),
    Case("form-without-file", lambda: form(), 400, "file", "must provide a 'file'"),
    Case(
        "json-body-to-transcriptions",
        lambda: Raw(TRANSCRIPTIONS, b'{"model": "whisper-1"}', "application/json"),
        400,
        "file",
        "must provide a 'file'",
    ),
    Case(
        "multipart-form-to-speech",
        lambda: multipart(
            text(b"model", b"tts-1"), text(b"voice", b"alloy"), text(b"input", b"Hi."), path=SPEECH
        ),
        400,
        None,
        "not valid UTF-8 JSON",
    ),
]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(make_settings(), wait_until_ready=False) as server:
        wait_until_ready(server)  # every model loaded: minutes on a busy machine
        yield server


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=case.id, marks=case.marks) for case in CASES]
)
def test_hostile_input_is_a_quick_4xx_and_harmless(live: LiveServer, case: Case) -> None:
    raw = case.request()
    with patient_http(live) as http:
        started = time.monotonic()
        response = http.post(raw.path, content=raw.body, headers={"content-type": raw.content_type})
        elapsed = time.monotonic() - started
        assert elapsed < QUICK_S, f"answered in {elapsed:.1f} s"
        assert_error(response, case.status, case.param, case.says)
        if case.status == 404:
            assert response.json()["error"]["code"] == "model_not_found"
        assert len(response.content) < MAX_ERROR_BYTES
        assert b"root:" not in response.content  # names only: nothing is read from disk
        assert http.get("/ready").status_code == 200


def test_a_half_mp3_is_its_first_half(live: LiveServer) -> None:
    """Cut mid-stream, an mp3 is the frames before the cut: what they say, not an error."""
    data = mp3()
    assert data[:2] == b"\xff\xf3"  # a frame from the first byte: MPEG-2 layer III
    assert len(data) > 10 * MP3_FRAME_BYTES  # so the 100 and 200 byte cuts hold no frame
    with patient_http(live) as http:
        response = http.post(
            TRANSCRIPTIONS,
            data={"model": "whisper-1"},
            files={"file": ("half.mp3", data[: len(data) // 2])},
        )
    assert response.status_code == 200, response.text
    said = response.json()["text"]
    assert said.lower().startswith("the boy was there")
    assert len(said) < len(SPOKEN)


def test_a_prompt_of_5_mb_is_answered_in_time(live: LiveServer) -> None:
    """Whisper keeps the last 223 tokens of a prompt; a long one costs no more than that."""
    with patient_http(live) as http:
        started = time.monotonic()
        response = http.post(
            TRANSCRIPTIONS,
            data={"model": "whisper-1", "prompt": "word " * 1_000_000},
            files={"file": ("a.wav", wav())},
        )
        elapsed = time.monotonic() - started
    assert elapsed < QUICK_S, f"answered in {elapsed:.1f} s"
    assert response.status_code == 200, response.text
    assert response.json()["text"].lower().startswith("the boy was there")


def test_after_the_corpus_the_server_still_transcribes_and_speaks(live: LiveServer) -> None:
    with patient_http(live) as http:
        assert http.get("/ready").status_code == 200
        heard = http.post(
            TRANSCRIPTIONS, data={"model": "whisper-1"}, files={"file": ("a.wav", wav())}
        )
        assert heard.status_code == 200, heard.text
        assert heard.json()["text"] == SPOKEN
        spoken = http.post(
            SPEECH,
            json={"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "wav"},
        )
        assert spoken.status_code == 200, spoken.text
        assert spoken.content[:4] == b"RIFF"
        assert len(spoken.content) > 24_000  # more than a quarter second of 24 kHz audio


@post("/form")
async def _form_echo(request: Request[Any, Any, Any]) -> dict[str, str]:
    parsed = parse_form(await read_form(request), TranscriptionForm)
    return {"model": parsed.fields.model}


@pytest.fixture(scope="module")
def form_app() -> Iterator[TestClient[Litestar]]:
    """``read_form`` alone, behind the project's error handlers."""
    app = Litestar([_form_echo], exception_handlers=exception_handlers())
    with TestClient(app) as client:
        yield client


@pytest.mark.parametrize(
    ("case", "status", "says"),
    [
        (with_wav(model=NOT_UTF8), 400, "not valid UTF-8"),
        (with_wav(text(b"prompt", NOT_UTF8)), 400, "not valid UTF-8"),
        (lambda: form((b"file", b"", b"RIFF" + NOT_UTF8)), 400, "not valid UTF-8"),
        (many_parts(lambda n: b"x%d" % n, b"y"), 413, "at most 1000"),
        (lambda: form(upload(b"a.wav", b"RIFF"), text(b"\xff", b"x")), 400, "Invalid multipart"),
    ],
    ids=["model", "prompt", "file-without-filename", "too-many-parts", "bad-name-passes-through"],
)
def test_read_form_makes_litestar_refusals_a_clear_4xx(
    form_app: TestClient[Litestar], case: Callable[[], Raw], status: int, says: str
) -> None:
    raw = case()
    response = form_app.post("/form", content=raw.body, headers={"content-type": raw.content_type})
    assert_error(response, status, None, says)
    sound = form(upload(b"a.wav", b"RIFF"))
    ok = form_app.post("/form", content=sound.body, headers={"content-type": sound.content_type})
    assert ok.status_code == 201, ok.text
    assert ok.json() == {"model": "whisper-1"}
