"""The connection layer: oversized heads are refused at once, slow heads and stalled
bodies are timed out, a client that never reads is cut off and frees its queue place,
and a flood of half-open connections cannot take ``/health`` down.

Everything runs over real sockets against a real server: uvicorn with
``server.connections``' protocol, as ``voxserve serve`` runs it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from benchmarks.server_process import metric
from tests.conftest import LiveServer, make_settings
from tests.ops.rawhttp import connect, read_answer, send_raw, wait_closed
from tests.speech import SENTENCES

CLOSED = "voxserve_connections_closed_total"
HEADER_TIMEOUT = 2.0
BODY_IDLE_TIMEOUT = 2.0
SEND_TIMEOUT = 2.0
SLOW = 30.0
"""A generous bound for what should take milliseconds to a few seconds, on a busy machine."""


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    """Speech only, one queue place, and short connection timeouts."""
    settings = make_settings(
        models=(),
        max_queue_size=1,
        header_timeout_seconds=HEADER_TIMEOUT,
        body_idle_timeout_seconds=BODY_IDLE_TIMEOUT,
        send_timeout_seconds=SEND_TIMEOUT,
    )
    with LiveServer(settings) as server:
        yield server


def _closed(live: LiveServer, reason: str) -> float:
    return metric(httpx.get(f"{live.base_url}/metrics").text, CLOSED, reason=reason)


def _health_seconds(live: LiveServer) -> float:
    started = time.monotonic()
    assert httpx.get(f"{live.base_url}/health", timeout=SLOW).status_code == 200
    return time.monotonic() - started


def _assert_envelope(body: bytes, code: str) -> None:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code


def _speech_request(text: str) -> bytes:
    body = json.dumps(
        {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    ).encode()
    head = (
        "POST /v1/audio/speech HTTP/1.1\r\nHost: voxserve\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def _speak(live: LiveServer, text: str = "Hello there.") -> int:
    with live.http() as http:
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
        return http.post("/v1/audio/speech", json=body).status_code


# Item 3: head limits


def test_an_oversized_request_target_is_answered_414_at_once(live: LiveServer) -> None:
    before = _closed(live, "line_too_long")
    answer = send_raw(live.base_url, b"GET /" + b"a" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer is not None, "closed without an answer"
    assert answer.status == 414
    assert answer.headers["connection"] == "close"
    _assert_envelope(answer.body, "uri_too_long")
    assert answer.seconds < SLOW
    assert _closed(live, "line_too_long") == before + 1
    assert _health_seconds(live) < SLOW


def test_a_long_target_under_the_limit_is_served(live: LiveServer) -> None:
    answer = send_raw(live.base_url, b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer is not None
    assert answer.status == 404  # routed: the limit (8 KiB) is not in the way


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(b"X-Big: " + b"a" * (1 << 20) + b"\r\n", id="one-huge-header"),
        pytest.param(b"X-Small: b\r\n" * 20_000, id="many-small-headers"),
    ],
)
def test_oversized_headers_are_answered_431(live: LiveServer, headers: bytes) -> None:
    before = _closed(live, "headers_too_large")
    answer = send_raw(live.base_url, b"GET /health HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    assert answer is not None, "closed without an answer"
    assert answer.status == 431
    _assert_envelope(answer.body, "headers_too_large")
    assert _closed(live, "headers_too_large") == before + 1
    assert _health_seconds(live) < SLOW


def test_headers_under_the_limit_are_served(live: LiveServer) -> None:
    many = {f"x-h{i}": "v" * 20 for i in range(1000)}  # about 30 KB
    assert httpx.get(f"{live.base_url}/health", headers=many).status_code == 200
    big = {"x-big": "a" * 60_000}
    assert httpx.get(f"{live.base_url}/health", headers=big).status_code == 200


def test_keep_alive_requests_are_not_counted_as_one_head(live: LiveServer) -> None:
    """The head budget is per request: 100 requests of 2 KB heads on one connection pass."""
    with httpx.Client(base_url=live.base_url) as http:
        for _ in range(100):
            assert http.get("/health", headers={"x-pad": "p" * 2000}).status_code == 200


# Item 4: header and body timeouts, and the connection cap


def test_a_slowloris_is_timed_out_while_health_answers(live: LiveServer) -> None:
    """200 connections each send one byte of head every 0.5 s, which without a header
    timeout would hold them open for ever."""
    before = _closed(live, "header_timeout")
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    sockets = [connect(live.base_url) for _ in range(200)]
    opened = time.monotonic()
    open_ = {sock: 0 for sock in sockets}
    closed_after: list[float] = []
    probes: list[float] = []
    try:
        while open_ and time.monotonic() - opened < SLOW:
            for sock in list(open_):
                try:
                    sock.send(head[open_[sock] : open_[sock] + 1])
                    open_[sock] += 1
                except OSError:
                    closed_after.append(time.monotonic() - opened)
                    del open_[sock]
            probes.append(_health_seconds(live))
            time.sleep(0.5)
        still_open = [sock for sock in open_ if not wait_closed(sock, 0.01)]
    finally:
        for sock in sockets:
            sock.close()
    assert not still_open, f"{len(still_open)} slow connections were never closed"
    assert max(probes) < 5.0
    assert all(seconds >= HEADER_TIMEOUT * 0.9 for seconds in closed_after)
    assert _closed(live, "header_timeout") - before == 200


def test_a_stalled_body_is_cut_after_the_idle_timeout(live: LiveServer) -> None:
    before = _closed(live, "body_timeout")
    request = _speech_request("Hello there.")
    with connect(live.base_url) as sock:
        sock.sendall(request[:-10])  # the head and most of the body; then nothing
        started = time.monotonic()
        assert wait_closed(sock, SLOW), "a stalled body was never cut"
        assert time.monotonic() - started >= BODY_IDLE_TIMEOUT * 0.9
    assert _closed(live, "body_timeout") == before + 1
    assert _speak(live) == 200  # and its queue place is free


def test_a_slow_body_that_keeps_coming_is_not_cut(live: LiveServer) -> None:
    """The body timeout is an idle timeout: an upload taking 3x as long, byte after byte,
    goes through."""
    request = _speech_request(" ".join(SENTENCES[:2]))
    head, _, body = request.partition(b"\r\n\r\n")
    step = max(1, len(body) // 24)
    with connect(live.base_url, timeout=SLOW) as sock:
        started = time.monotonic()
        sock.sendall(head + b"\r\n\r\n")
        for offset in range(0, len(body), step):
            time.sleep(BODY_IDLE_TIMEOUT * 3 / 24)
            sock.sendall(body[offset : offset + step])
        assert time.monotonic() - started > BODY_IDLE_TIMEOUT * 2
        data = b""
        while not data.endswith(b"0\r\n\r\n"):  # the chunked body's end
            chunk = sock.recv(65536)
            assert chunk, "the connection closed before the end of the answer"
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")


def test_the_oldest_half_open_connections_are_shed_at_the_cap() -> None:
    settings = make_settings(models=(), speech_models=(), max_connections=32)
    with LiveServer(settings) as live:
        sockets = []
        for _ in range(48):
            sock = connect(live.base_url, timeout=SLOW)
            sock.sendall(b"GET /health HTTP/1.1\r\n")  # and never the rest
            sockets.append(sock)
        try:
            assert _health_seconds(live) < SLOW  # gets in, although the cap is reached
            oldest, newest = sockets[:16], sockets[-8:]
            assert all(wait_closed(sock, SLOW) for sock in oldest)
            for sock in newest:  # still open and served
                sock.sendall(b"Host: x\r\n\r\n")
                answer = read_answer(sock, time.monotonic())
                assert answer is not None and answer.status == 200
            assert _closed(live, "shed") >= 17
        finally:
            for sock in sockets:
                sock.close()


# Item 5: send timeout


def test_a_client_that_never_reads_is_cut_off_and_frees_its_queue_place(
    live: LiveServer,
) -> None:
    before = _closed(live, "send_timeout")
    text = " ".join(SENTENCES * 40)[:4000]  # minutes of audio: more than the socket buffers
    with connect(live.base_url, receive_buffer=4096, timeout=SLOW) as stuck:
        stuck.sendall(_speech_request(text))
        assert stuck.recv(12) == b"HTTP/1.1 200"  # its stream has begun; then it reads no more
        assert _speak(live) == 429  # it holds the one queue place
        deadline = time.monotonic() + SLOW
        while _speak(live) != 200:  # once cut off, its place is free again
            assert time.monotonic() < deadline, "the unread response was never cut off"
            time.sleep(0.25)
        assert wait_closed(stuck, SLOW)
    assert _closed(live, "send_timeout") == before + 1


def test_a_slow_reader_that_keeps_reading_is_not_cut(live: LiveServer) -> None:
    """Reading 16 KiB every 50 ms is progress: a response taking many send timeouts to read
    arrives whole."""
    before = _closed(live, "send_timeout")
    text = " ".join(SENTENCES)  # 650 characters: about 2 MB of PCM
    received = 0
    with connect(live.base_url, receive_buffer=16384, timeout=SLOW) as sock:
        sock.sendall(_speech_request(text))
        started = time.monotonic()
        head = tail = b""
        while not tail.endswith(b"0\r\n\r\n"):
            chunk = sock.recv(16384)
            assert chunk, "the connection closed before the end of the answer"
            received += len(chunk)
            tail = (tail + chunk)[-8:]
            time.sleep(0.05)
            head = head or chunk
        elapsed = time.monotonic() - started
    assert head.startswith(b"HTTP/1.1 200 ")
    assert elapsed > SEND_TIMEOUT * 2, f"read in {elapsed:.1f} s: too fast to prove anything"
    assert _closed(live, "send_timeout") == before
