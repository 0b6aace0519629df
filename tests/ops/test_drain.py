"""SIGTERM on a real ``voxserve serve`` process: refuse new work, finish the rest, exit 0."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.server_process import metric, serving
from tests.api.test_errors import assert_error


def _post_in_background(base_url: str, wav: bytes) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []

    def post() -> None:
        try:
            answers.append(
                httpx.post(
                    f"{base_url}/v1/audio/transcriptions",
                    files={"file": ("a.wav", wav)},
                    data={"model": "whisper-1", "response_format": "text"},
                    timeout=60,
                )
            )
        except httpx.TransportError as exc:
            answers.append(exc)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{base_url}/metrics").text, "voxserve_requests_in_flight") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return thread, answers


def test_sigterm_drains_in_flight_work_then_exits_zero(
    tmp_path: Path, long_wav: tuple[bytes, str]
) -> None:
    wav, text = long_wav
    with serving(tmp_path, drain_seconds=60, max_batch_size=1) as (process, base_url):
        thread, answers = _post_in_background(base_url, wav)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        ready = httpx.get(f"{base_url}/ready")
        refused = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
        )
        assert process.poll() is None  # still draining
        thread.join()
        code = process.wait(timeout=30)
        log = process.stdout.read() if process.stdout else ""
    assert_error(ready, 503, None, "draining")
    assert_error(refused, 503, None, "shutting down")
    assert refused.json()["error"]["code"] == "draining" and "retry-after" in refused.headers
    (answer,) = answers
    assert isinstance(answer, httpx.Response) and answer.status_code == 200
    assert len(answer.text.split()) > 0.8 * len(text.split())
    assert code == 0, log
    messages = [json.loads(line)["message"] for line in log.splitlines() if line.startswith("{")]
    assert any(m.startswith("draining: 1 requests in flight") for m in messages), log
    assert "drained; shutting down" in messages


def test_the_drain_is_bounded_by_drain_seconds(tmp_path: Path, long_wav: tuple[bytes, str]) -> None:
    wav, _ = long_wav
    with serving(tmp_path, drain_seconds=0.5, max_batch_size=1) as (process, base_url):
        thread, answers = _post_in_background(base_url, wav)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        took = time.monotonic() - signalled
        thread.join()
    assert code == 0
    assert took < 5, took
    (answer,) = answers  # cut off: answered with a retryable 503, not a dropped connection
    assert isinstance(answer, httpx.Response), answer
    assert_error(answer, 503, None, "shutting down")
    assert answer.json()["error"]["code"] == "draining"
