"""Health, readiness with a failed model, metrics, request ids and what the logs hold."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.server_process import metric, serving
from server.catalog import CatalogModel
from server.logs import JsonFormatter, RequestIdFilter
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S, wait_until
from tests.speech import duration_of, spoken_wav


def test_a_model_that_fails_to_load_leaves_the_rest_serving(tmp_path: object) -> None:
    catalog = (
        CatalogModel(id="whisper-1", weights="embedded:tiny.en"),
        CatalogModel(id="broken", weights="/nonexistent/whisper"),
    )
    settings = make_settings(models=catalog, speech_models=())
    with LiveServer(settings, wait_until_ready=False) as live, live.http() as http:
        live.wait_until_loaded()
        assert http.get("/health").json() == {"status": "ok"}
        ready = http.get("/ready")
        broken = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", spoken_wav("Hello there."))},
            data={"model": "broken"},
        )
        working = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", spoken_wav("Hello there."))},
            data={"model": "whisper-1"},
        )
        metrics = http.get("/metrics").text
    assert_error(ready, 503, None, "broken failed")
    assert ready.headers["retry-after"] == "5"
    assert_error(broken, 503, None, "failed to load")
    assert broken.json()["error"]["code"] == "model_unavailable"
    assert working.status_code == 200 and working.json()["text"] == "Hello there."
    assert metric(metrics, "voxserve_model_state", model="broken", state="failed") == 1
    assert metric(metrics, "voxserve_model_state", model="broken", state="ready") == 0
    assert metric(metrics, "voxserve_model_state", model="whisper-1", state="ready") == 1


def test_metrics_count_requests_audio_and_model_work(server: LiveServer) -> None:
    wav = spoken_wav("The metrics count this request.")
    with server.http() as http:
        before = http.get("/metrics").text
        assert http.post(
            "/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data={"model": "whisper-1"}
        ).is_success
        speech = http.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "input": "Counted.",
                "voice": "alloy",
                "response_format": "pcm",
            },
        )
        assert http.post("/v1/audio/speech", json={"model": "tts-1"}).status_code == 400

        def counted() -> bool:  # a request is counted once its middleware returns
            text = http.get("/metrics").text
            speech_count = {"route": "/v1/audio/speech", "method": "POST"}
            return metric(text, "voxserve_request_seconds_count", **speech_count) - metric(
                before, "voxserve_request_seconds_count", **speech_count
            ) >= 2 and metric(text, "voxserve_requests_total", **route) > metric(
                before, "voxserve_requests_total", **route
            )

        route = {"route": "/v1/audio/transcriptions", "method": "POST", "status": "200"}
        wait_until(counted, "all three requests counted")
        after = http.get("/metrics").text

    def grew(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert grew("voxserve_requests_total", **route) == 1
    assert (
        grew("voxserve_requests_total", route="/v1/audio/speech", method="POST", status="400") == 1
    )
    assert grew("voxserve_audio_transcribed_seconds_total", model="whisper-1") == pytest.approx(
        duration_of(wav), abs=0.01
    )
    spoken_seconds = len(speech.content) / 2 / 24_000  # pcm: 16-bit mono at 24 kHz
    assert grew("voxserve_audio_synthesized_seconds_total", model="tts-1") == pytest.approx(
        spoken_seconds, rel=0.05
    )
    assert grew("voxserve_batch_size_count", model="whisper-1") >= 1
    assert grew("voxserve_request_seconds_count", route="/v1/audio/speech", method="POST") == 2
    for name in ("voxserve_queue_depth", "voxserve_queue_wait_seconds_bucket"):
        assert name in after
    assert metric(after, "voxserve_model_state", model="tts-1", state="ready") == 1


def test_a_request_id_is_taken_or_made_and_always_echoed(server: LiveServer) -> None:
    with server.http() as http:
        given = http.get("/v1/models", headers={"X-Request-ID": "gateway-7f3a:1"})
        made = http.get("/v1/models")
        unsafe = http.get("/v1/models", headers={"X-Request-ID": "a b\tc" + "x" * 200})
        failed = http.post("/v1/audio/speech", json={}, headers={"X-Request-ID": "req-400"})
    assert given.headers["x-request-id"] == "gateway-7f3a:1"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])
    assert failed.status_code == 400 and failed.headers["x-request-id"] == "req-400"


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the process would write with ``log_format = "json"``, from INFO up."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.INFO)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def test_logs_are_json_with_request_ids_and_no_text_at_info(
    server: LiveServer, json_log: io.StringIO
) -> None:
    secret_speech = "Zanzibar quartz lemonade tastes of purple."
    secret_input = "Confidential merger with Initech closes Friday."
    with server.http() as http:
        transcribed = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", spoken_wav(secret_speech))},
            data={"model": "whisper-1", "prompt": "Zanzibar"},
            headers={"X-Request-ID": "trace-transcribe"},
        )
        spoken = http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "input": secret_input, "voice": "alloy"},
            headers={"X-Request-ID": "trace-speech"},
        )
    assert transcribed.is_success and spoken.is_success
    deadline = time.monotonic() + PATIENCE_S  # the access line follows the last byte sent
    while '"trace-speech"' not in json_log.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "lemonade" in transcribed.json()["text"].lower()  # the words were heard...
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    by_id = {line["request_id"]: line for line in lines if line["logger"] == "voxserve.access"}
    access = by_id["trace-transcribe"]
    assert access["route"] == "/v1/audio/transcriptions" and access["status"] == 200
    assert access["method"] == "POST" and access["duration_ms"] > 0
    assert by_id["trace-speech"]["status"] == 200
    everything = json_log.getvalue().lower()  # ...and are nowhere in the log
    for word in ("zanzibar", "lemonade", "initech", "merger"):
        assert word not in everything


TEXT_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+ \[[^\]]*\] ")
"""The start of every record in the text log; a traceback's lines are indented."""


def test_a_line_break_in_a_path_does_not_forge_a_text_log_line(tmp_path: Path) -> None:
    forged = "2026-01-01 00:00:00,000 INFO voxserve.access [admin] GET /v1/admin 200"
    with serving(tmp_path, log_format="text") as (process, base_url):
        with httpx.Client(base_url=base_url, timeout=600) as http:
            injected = http.get(
                "/v1/models/x%0A" + forged.replace(" ", "%20") + "%0D%1B[31m",
                headers={"X-Request-ID": "inject-1"},
            )
        process.send_signal(signal.SIGTERM)  # drains (nothing in flight) and exits
        assert process.wait(timeout=600) == 0
        log = process.stdout.read() if process.stdout else ""
    assert injected.status_code == 404  # the model "x\n..." does not exist
    lines = log.splitlines()
    assert lines, log
    for line in lines:
        assert TEXT_RECORD.match(line) or line.startswith("    "), line
    assert not any(line.startswith(forged) for line in lines), log
    (access,) = [line for line in lines if "[inject-1]" in line and "voxserve.access" in line]
    assert "GET /v1/models/x\\n2026-01-01" in access and "\\r\\x1b[31m 404 " in access
