"""HTTP/1.1 over plain sockets, for what httpx cannot do: answers before the body, heads
and bodies that never finish, clients that never read.

httpx always finishes sending a body before it reads the answer, so these tests speak
HTTP/1.1 over a plain socket: headers with a large ``Content-Length`` and a few bytes
of body, then read whatever the server answers.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    seconds: float


def post_without_body(
    base_url: str,
    path: str,
    content_length: int,
    headers: dict[str, str] | None = None,
    sent_body: bytes = b"--x\r\n",
    timeout: float = 5.0,
) -> RawAnswer:
    """POST announcing ``content_length`` bytes, send ``sent_body`` only, read the answer."""
    url = urlsplit(base_url)
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {url.netloc}",
        "Content-Type: multipart/form-data; boundary=x",
        f"Content-Length: {content_length}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
        "",
        "",
    ]
    started = time.monotonic()
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as sock:
        sock.sendall("\r\n".join(lines).encode() + sent_body)
        answer = read_answer(sock, started)
    if answer is None:
        raise ConnectionError("the server closed the connection without an answer")
    return answer


def read_answer(sock: socket.socket, started: float) -> RawAnswer | None:
    """The response on ``sock`` (a ``Content-Length`` body, read in full); ``None`` when the
    server closed the connection before a status line."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer_headers = {
        k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)
    }
    length = int(answer_headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return RawAnswer(int(status_line.split()[1]), answer_headers, body, time.monotonic() - started)


def connect(
    base_url: str, *, receive_buffer: int | None = None, timeout: float = 10.0
) -> socket.socket:
    """A TCP connection to the server; ``receive_buffer`` sets ``SO_RCVBUF`` before the
    connect (where it bounds the window the client advertises), for clients that read slowly
    or not at all."""
    url = urlsplit(base_url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(timeout)
    sock.connect((url.hostname or "127.0.0.1", url.port or 80))
    return sock


def send_raw(base_url: str, data: bytes, timeout: float = 10.0) -> RawAnswer | None:
    """Send ``data`` as is and read the answer; the server may answer and close before all
    of ``data`` is sent (as it should for an oversized head), which is not an error here.
    ``None`` when the connection closed without an answer."""
    started = time.monotonic()
    with connect(base_url, timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        try:
            return read_answer(sock, started)
        except ConnectionResetError:
            return None


def wait_closed(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``timeout`` seconds; what it
    sent before is read and dropped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False
