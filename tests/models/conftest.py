from __future__ import annotations

import numpy as np
import pytest

from models.registry import ModelSpec, build_backend, resolve_weights
from models.whisper_ct2 import WhisperCT2Backend
from server.audio import AudioLimits, decode_audio


@pytest.fixture(scope="session")
def whisper() -> WhisperCT2Backend:
    spec = ModelSpec(id="whisper-1", device="cpu", cpu_threads=2)
    backend = build_backend(spec, resolve_weights(spec.weights))
    assert isinstance(backend, WhisperCT2Backend)
    backend.load()
    return backend


def to_16k(wav: bytes) -> np.ndarray:
    return decode_audio(wav, AudioLimits(max_seconds=3600, max_decoded_bytes=1 << 32))
