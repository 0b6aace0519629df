"""SIGTERM on a real ``voxserve serve`` process: refuse new work, finish the rest, exit 0.

The drain's deadline holds whatever is in flight: a model batch that runs on, a
stream under way, an upload still arriving. Each of those clients is answered
(200, or 503 ``draining`` with ``Retry-After``) and the process exits 0 within
``drain_seconds`` + 2 s; the asserts allow 10 s, for a busy machine.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.server_process import metric, serving
from tests.api.test_errors import assert_error
from tests.patience import PATIENCE_S, wait_until
from tests.speech import SENTENCES

EXIT_MARGIN_S = 10.0
"""The target is ``drain_seconds`` + 2 s (measured: see the report); a busy machine
gets five times that."""


@dataclass
class Call:
    """One request made in a background thread, read as a stream."""

    thread: threading.Thread | None = None
    started: threading.Event = field(default_factory=threading.Event)
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: Exception | None = None

    def response(self) -> httpx.Response:
        assert self.status is not None, self.error
        return httpx.Response(self.status, headers=self.headers, content=self.body)


def _call(base_url: str, path: str, **kwargs: Any) -> Call:
    call = Call()

    def run() -> None:
        try:
            with httpx.stream("POST", base_url + path, timeout=PATIENCE_S, **kwargs) as response:
                call.status, call.headers = response.status_code, dict(response.headers)
                call.started.set()
                for chunk in response.iter_raw():
                    call.body += chunk
        except httpx.HTTPError as exc:  # a stream broken off at the deadline
            call.error = exc
        finally:
            call.started.set()

    call.thread = threading.Thread(target=run)
    call.thread.start()
    return call


def _in_flight(base_url: str) -> float:
    return metric(
        httpx.get(f"{base_url}/metrics", timeout=PATIENCE_S).text, "voxserve_requests_in_flight"
    )


def _transcribe(base_url: str, wav: bytes, **fields: str) -> Call:
    return _call(
        base_url,
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", wav)},
        data={"model": "whisper-1", "response_format": "text", **fields},
    )


def _assert_draining(answer: httpx.Response) -> None:
    assert_error(answer, 503, None, "shutting down")
    assert answer.json()["error"]["code"] == "draining"
    assert answer.headers["retry-after"] == "1"


def _sigterm_and_time_the_exit(process: Any) -> tuple[int, float]:
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code: int = process.wait(timeout=PATIENCE_S)
    return code, time.monotonic() - signalled


def test_sigterm_drains_in_flight_work_then_exits_zero(
    tmp_path: Path, long_wav: tuple[bytes, str]
) -> None:
    wav, text = long_wav
    with serving(tmp_path, drain_seconds=PATIENCE_S, max_batch_size=1) as (process, base_url):
        call = _transcribe(base_url, wav)
        wait_until(lambda: _in_flight(base_url) >= 1, "the request in flight")
        process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{base_url}/ready").status_code == 503, "draining")
        ready = httpx.get(f"{base_url}/ready", timeout=PATIENCE_S)
        refused = httpx.post(
            f"{base_url}/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            timeout=PATIENCE_S,
        )
        assert call.thread is not None
        call.thread.join()
        code = process.wait(timeout=PATIENCE_S)
        log = process.stdout.read() if process.stdout else ""
    assert_error(ready, 503, None, "draining")
    _assert_draining(refused)
    assert refused.headers["connection"] == "close"
    answer = call.response()
    assert answer.status_code == 200, answer.text
    assert len(answer.text.split()) > 0.8 * len(text.split())
    assert code == 0, log
    messages = [json.loads(line)["message"] for line in log.splitlines() if line.startswith("{")]
    assert any(m.startswith("draining: 1 requests in flight") for m in messages), log
    assert "drained; shutting down" in messages


def test_the_deadline_holds_while_a_model_batch_and_streams_run_on(
    tmp_path: Path, long_wav: tuple[bytes, str]
) -> None:
    """Three long transcriptions in one model batch that takes longer than the drain,
    a transcription stream and a speech stream under way: the process still exits 0
    by the deadline, each client is answered 200 or 503 ``draining``, and nothing is
    logged as a traceback."""
    wav, _ = long_wav
    drain = 1.5
    log_path = tmp_path / "voxserve.log"
    settings: dict[str, Any] = {"drain_seconds": drain, "max_batch_size": 8, "speech_models": None}
    with serving(tmp_path, log_path=log_path, **settings) as (process, base_url):
        plain = [_transcribe(base_url, wav) for _ in range(3)]
        stream = _transcribe(base_url, wav, stream="true")
        speech = _call(
            base_url,
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "alloy",
                "input": " ".join(SENTENCES * 20)[:4000],
                "response_format": "pcm",
            },
        )
        for started in (stream.started, speech.started):
            assert started.wait(PATIENCE_S)
        wait_until(lambda: _in_flight(base_url) >= 5, "five requests in flight")
        code, took = _sigterm_and_time_the_exit(process)
        for call in (*plain, stream, speech):
            assert call.thread is not None
            call.thread.join(PATIENCE_S)
    log = log_path.read_text()
    assert code == 0, log
    assert took < drain + EXIT_MARGIN_S, (took, log)
    answers = [call.response() for call in plain]
    for answer in answers:
        if answer.status_code != 200:
            _assert_draining(answer)
    assert any(a.status_code == 503 for a in answers)  # 210 s of audio cannot be done in 1.5 s
    assert stream.status == 200 and b"draining" in stream.body, stream.body[-300:]
    assert speech.status == 200 and speech.body  # broken off, or finished
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert not [r for r in records if "exception" in r], log  # no traceback
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert any(r["message"].startswith("drain time is up") for r in records), log
    # An audio stream still under way is broken off (the client must see an incomplete
    # transfer, not a short file that looks whole), and that is no error either.
    assert not [r for r in records if r["level"] == "error"], log


def test_a_request_still_uploading_at_the_deadline_gets_503_draining(
    tmp_path: Path, long_wav: tuple[bytes, str]
) -> None:
    wav, _ = long_wav
    head = (
        b'--x\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    )
    body = head + wav + b"\r\n--x--\r\n"
    drain = 0.5
    with serving(tmp_path, drain_seconds=drain) as (process, base_url):
        url = urlsplit(base_url)
        request = (
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {url.netloc}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection((url.hostname, url.port), timeout=PATIENCE_S) as sock:
            sock.sendall(request + body[:65536])
            wait_until(lambda: _in_flight(base_url) >= 1, "the upload in flight")
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            sent = 65536
            while not select.select([sock], [], [], 0.05)[0]:  # dribble until answered
                assert sent < len(body), "the whole body went out before the deadline"
                try:
                    sock.sendall(body[sent : sent + 4096])
                except OSError:
                    break
                sent += 4096
            answer = _read_response(sock)
        code = process.wait(timeout=PATIENCE_S)
        took = time.monotonic() - signalled
    _assert_draining(answer)
    assert answer.headers["connection"] == "close"
    assert code == 0
    assert took < drain + EXIT_MARGIN_S, took


def _read_response(sock: socket.socket) -> httpx.Response:
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if rest and b"content-length" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            if len(rest) >= length:
                break
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return httpx.Response(int(status_line.split()[1]), headers=headers, content=rest)
