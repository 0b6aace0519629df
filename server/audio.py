"""Decode uploads to 16 kHz mono float32, with a cap on decoded length.

Runs in a worker thread, never on the event loop. The cap is checked as frames
come out of the decoder, so a small file that claims hours of audio is refused
after decoding only as much as the limit allows.
"""

from __future__ import annotations

import io

import av
import numpy as np

from models.base import SAMPLE_RATE, AudioArray
from server.errors import InvalidAudio


def decode_audio(data: bytes, *, max_seconds: float) -> AudioArray:
    """Every audio sample in ``data``, mono at 16 kHz, or :class:`InvalidAudio`."""
    if not data:
        raise InvalidAudio("The uploaded file is empty (0 bytes).")
    max_samples = int(max_seconds * SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    total = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise InvalidAudio("The uploaded file has no audio stream.")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    total += _append(chunks, out)
                if total > max_samples:
                    raise InvalidAudio(
                        f"The audio is longer than the {max_seconds:g} seconds this server accepts."
                    )
            for out in resampler.resample(None):
                total += _append(chunks, out)
    except InvalidAudio:
        raise
    except (av.error.FFmpegError, ValueError, IndexError) as exc:
        raise InvalidAudio(
            "The uploaded file could not be decoded as audio; supported formats are "
            "flac, mp3, mp4, mpeg, mpga, m4a, ogg, wav and webm."
        ) from exc
    if total == 0:
        raise InvalidAudio("The uploaded file contains no audio samples.")
    audio = np.concatenate(chunks)[:max_samples]
    return np.ascontiguousarray(audio, dtype=np.float32)


def _append(chunks: list[np.ndarray], frame: av.AudioFrame) -> int:
    samples = frame.to_ndarray().reshape(-1)
    chunks.append(samples)
    return len(samples)
