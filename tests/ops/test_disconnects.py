"""A client that goes away takes its queued work with it."""

from __future__ import annotations

import io
import json
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

import httpx
import pytest

from benchmarks.server_process import metric
from server.logs import JsonFormatter, RequestIdFilter
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S, patient_http, wait_for_metric, wait_until
from tests.speech import duration_of, spoken_wav

ITEMS = "voxserve_queue_wait_seconds_count"  # one observation per item computed


def _transcribe(live: LiveServer, wav: bytes, timeout: float = 60) -> httpx.Response:
    with live.http() as http:
        return http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            timeout=timeout,
        )


def _wait_for(live: LiveServer, name: str, at_least: float, **labels: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    metrics_url = f"{live.base_url}/metrics"
    while metric(httpx.get(metrics_url, timeout=PATIENCE_S).text, name, **labels) < at_least:
        assert time.monotonic() < deadline, f"{name} never reached {at_least}"
        time.sleep(0.02)


def test_a_request_whose_client_leaves_while_queued_is_never_computed(
    long_wav: tuple[bytes, str],
) -> None:
    wav, _ = long_wav
    victim = spoken_wav("Nobody will hear this sentence.")
    with LiveServer(make_settings(speech_models=(), max_batch_size=1)) as live:
        before = httpx.get(f"{live.base_url}/metrics").text
        assert _transcribe(live, wav).is_success
        alone = metric(httpx.get(f"{live.base_url}/metrics").text, ITEMS, model="whisper-1")
        items_of_long = alone - metric(before, ITEMS, model="whisper-1")
        assert items_of_long >= 2

        long_answer: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: long_answer.append(_transcribe(live, wav)))
        worker.start()
        _wait_for(live, "voxserve_queue_depth", 1, model="whisper-1")  # its windows queue up
        with pytest.raises(httpx.ReadTimeout):
            _transcribe(live, victim, timeout=0.3)  # gives up while behind the long one
        worker.join()
        time.sleep(0.2)
        after = httpx.get(f"{live.base_url}/metrics").text

        assert long_answer[0].is_success
        assert metric(after, ITEMS, model="whisper-1") - alone == items_of_long
        transcribed = metric(after, "voxserve_audio_transcribed_seconds_total", model="whisper-1")
        assert transcribed == pytest.approx(2 * duration_of(wav), abs=0.01)
        gone = {"route": "/v1/audio/transcriptions", "method": "POST", "status": "499"}
        assert metric(after, "voxserve_requests_total", **gone) == 1
        assert _transcribe(live, victim).status_code == 200  # its queue place was given back


def _hang_up_mid_upload(live: LiveServer, path: str, content_type: str, head: bytes) -> None:
    """Announce a 1 MB body, send ``head`` of it, wait until the server is reading it,
    and close the connection."""
    url = urlsplit(live.base_url)
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000000\r\nX-Request-ID: hung-up\r\n\r\n"
    ).encode()
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(request + head)
        wait_for_metric(live, "voxserve_requests_in_flight", 1)


@pytest.mark.parametrize(
    ("path", "content_type", "head"),
    [
        (
            "/v1/audio/transcriptions",
            "multipart/form-data; boundary=x",
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            + b"RIFF" * 4096,
        ),
        ("/v1/audio/speech", "application/json", b'{"model": "tts-1", "input": "' + b"a" * 4096),
    ],
    ids=["transcription-form", "speech-json"],
)
def test_a_client_hanging_up_mid_upload_is_a_499_not_a_500(
    path: str, content_type: str, head: bytes
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("voxserve.access")
    old_level = access.level
    access.setLevel(logging.INFO)
    access.addHandler(handler)
    try:
        with LiveServer(make_settings(speech_models=())) as live, patient_http(live) as http:
            _hang_up_mid_upload(live, path, content_type, head)
            route = {"route": path, "method": "POST"}
            wait_for_metric(live, "voxserve_request_seconds_count", 1, **route)  # it is done
            wait_until(lambda: '"hung-up"' in stream.getvalue(), "the access line")
            metrics = http.get("/metrics").text
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    assert metric(metrics, "voxserve_requests_total", status="499", **route) == 1
    assert metric(metrics, "voxserve_requests_total", status="500", **route) == 0
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines() if '"hung-up"' in x]
    assert line["status"] == 499 and line["path"] == path
