"""SIGTERM on a real ``voxserve serve`` process: refuse new work, finish the rest, exit 0."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.api.test_errors import assert_error
from tests.ops.test_observability import metric


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def serving(tmp_path: Path, **settings: Any) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = _free_port()
    config = tmp_path / "voxserve.json"
    values = {"port": port, "speech_models": [], "cpu_threads": 2, "log_format": "json"}
    config.write_text(json.dumps({**values, **settings}))
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "voxserve serve did not become ready"
            try:
                if httpx.get(f"{base_url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


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
