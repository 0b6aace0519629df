"""A client that goes away takes its queued work with it."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from benchmarks.server_process import metric
from tests.conftest import LiveServer, make_settings
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
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{live.base_url}/metrics").text, name, **labels) < at_least:
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
