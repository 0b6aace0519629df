"""API keys: which bearer tokens may call the API, checked in constant time.

Keys are kept only as SHA-256 digests. A presented token is hashed and compared
with ``hmac.compare_digest`` against every digest, with no early exit, so neither
the time taken nor the order of the keys tells a caller how close a guess came or
which key matched. Hashing first makes every comparison the same length, which
``compare_digest`` needs to be constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from pathlib import Path


class KeyRing:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(key) for key in dict.fromkeys(keys) if key]

    def __bool__(self) -> bool:
        """Whether any key is configured (no keys: the API is open)."""
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def allows(self, token: str) -> bool:
        presented = _digest(token)
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def read_key_file(path: str) -> list[str]:
    """One key per line; blank lines and ``#`` comments are skipped."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None``."""
    if authorization is None:
        return None
    scheme, _, token = authorization.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
