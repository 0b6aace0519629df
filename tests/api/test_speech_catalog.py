"""The voice catalog: other backends behind model names, load failures, disconnects."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

import pytest

from models.voices import VoiceSpec
from server.catalog import SpeechModel
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S
from tests.speech import decode_native

KOKORO = VoiceSpec(
    backend="kokoro",
    weights="embedded:kokoro-int8",
    voices="embedded:kokoro-ja",
    speaker="jf_alpha",
)


def test_a_catalog_puts_kokoro_behind_a_model_name() -> None:
    catalog = (SpeechModel(id="tts-1-hd", voices={"alloy": KOKORO, "sage": KOKORO}),)
    with LiveServer(make_settings(models=(), speech_models=catalog)) as live, live.http() as http:
        response = http.post(
            "/v1/audio/speech",
            json={"model": "tts-1-hd", "voice": "sage", "input": "Good morning, everyone."},
        )
        voices = http.get("/v1/audio/voices").json()
        models = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert response.status_code == 200
    samples, rate, _ = decode_native(response.content)
    assert rate == 24_000
    assert 0.8 < len(samples) / rate < 6.0
    assert voices["voices"] == [{"id": name, "name": name} for name in ("alloy", "sage")]
    assert voices["data"] == [
        {
            "model": "tts-1-hd",
            "voices": [
                {
                    "id": name,
                    "name": name,
                    "backend": "kokoro",
                    "speaker": "jf_alpha",
                    "sample_rate": 24_000,
                }
                for name in ("alloy", "sage")
            ],
        }
    ]
    assert models == ["tts-1-hd", "gpt-4o-mini-tts"]  # tts-1-hd's default alias


@pytest.mark.parametrize(
    ("voice", "message"),
    [
        (
            VoiceSpec(
                backend="kokoro",
                weights="embedded:kokoro-int8",
                voices="embedded:kokoro-ja",
                speaker="af_nobody",
            ),
            "voice 'alloy'",
        ),
        (VoiceSpec(backend="piper", weights="/nonexistent/voice.onnx"), "/nonexistent/voice.onnx"),
        (VoiceSpec(backend="hibari", weights="embedded:nothing"), "embedded:heart"),
        (VoiceSpec(backend="piper", weights="embedded:joe", speaker=3), "voice 'alloy'"),
    ],
)
def test_a_wrong_catalog_fails_that_model_saying_what_is_wrong(
    voice: VoiceSpec, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The process stays up: ``/health`` answers, ``/ready`` and the model give 503."""
    settings = make_settings(
        models=(), speech_models=(SpeechModel(id="m", voices={"alloy": voice}),)
    )
    with (
        caplog.at_level(logging.ERROR, logger="voxserve"),
        LiveServer(settings, wait_until_ready=False) as live,
        live.http() as http,
    ):
        live.wait_until_loaded()
        assert http.get("/health").status_code == 200
        ready = http.get("/ready")
        response = http.post(
            "/v1/audio/speech", json={"model": "m", "input": "Hi.", "voice": "alloy"}
        )
    assert_error(ready, 503, None, "m failed")
    assert_error(response, 503, None, "failed to load")
    assert response.json()["error"]["code"] == "model_unavailable"
    assert any(message in r.getMessage() for r in caplog.records), caplog.text


def items_computed(server: LiveServer, engine: str) -> float:
    with server.http() as http:
        text = http.get("/metrics").text
    match = re.search(rf'voxserve_batch_size_sum\{{model="{re.escape(engine)}"\}} (\S+)', text)
    return float(match[1]) if match else 0.0


def test_a_client_that_goes_away_stops_the_synthesis_of_the_rest(server: LiveServer) -> None:
    engine = "piper:embedded:joe"
    text = " ".join(f"This is sentence number {n} of a long reading." for n in range(40))
    before = items_computed(server, engine)
    with server.http() as http:
        body = {"model": "tts-1", "voice": "echo", "input": text, "response_format": "pcm"}
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            next(response.iter_raw())
    computed = _settled(lambda: items_computed(server, engine) - before)
    assert 1 <= computed <= 12, computed  # of 40: the rest were withdrawn


def _settled(count: Callable[[], float], quiet_s: float = 5.0) -> float:
    """``count()`` once it has not changed for ``quiet_s`` (the server noticed the hang-up
    and its last sentence is done); waits on the count, not on a guess of how long."""
    deadline = time.monotonic() + PATIENCE_S
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "the count never settled"
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


def test_a_full_engine_answers_429_with_retry_after_before_any_audio() -> None:
    long_text = " ".join(f"This is sentence number {n} of a long reading." for n in range(30))
    with LiveServer(make_settings(models=(), max_queue_size=1)) as live, live.http() as http:
        body = {"model": "tts-1", "voice": "echo", "response_format": "pcm"}
        with http.stream("POST", "/v1/audio/speech", json={**body, "input": long_text}) as first:
            chunks = first.iter_raw()  # kept: dropping the iterator would close the stream
            next(chunks)  # the first request now holds the engine's only place
            refused = http.post("/v1/audio/speech", json={**body, "input": "Hello."})
            other_engine = http.post(
                "/v1/audio/speech", json={**body, "voice": "alloy", "input": "Hello."}
            )
        deadline = time.monotonic() + PATIENCE_S  # the server notices the hang-up, then frees it
        while (
            after := http.post("/v1/audio/speech", json={**body, "input": "Hello."})
        ).status_code == 429:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["type"] == "server_error"
    assert other_engine.status_code == 200  # each engine has its own queue
    assert after.status_code == 200  # the place is given back when the stream ends
