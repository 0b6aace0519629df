"""A request whose body is announced but never sent: proves an answer came before the body.

httpx always finishes sending a body before it reads the answer, so these tests speak
HTTP/1.1 over a plain socket: headers with a large ``Content-Length`` and a few bytes
of body, then read whatever the server answers.
"""

from __future__ import annotations

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
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
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
