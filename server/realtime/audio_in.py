"""A realtime session's appended audio, turned into 16 kHz int16 as it arrives.

Clients send 24 kHz 16-bit PCM (the default) or 8 kHz G.711 (telephony), in chunks
cut wherever their audio callback fires. Whisper and Silero take 16 kHz, so each
chunk is converted on arrival and nothing is decoded twice.

The conversion is the file endpoints' own: PyAV's resampler (ffmpeg's ``aresample``),
fed frames of the input rate with running timestamps exactly as a WAV decoder feeds
it in ``server.audio``. The resampler is stateful (its filter keeps a few input
samples back for the next output), so a stream cut into any chunks gives the very
samples the file decoder gives for the whole: the tests assert equality, sample for
sample. G.711 bytes become 16-bit samples by the ITU-T G.711 tables (the values
ffmpeg's and Python's old ``audioop`` decoders give) before resampling.
"""

from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

import av
import numpy as np
import numpy.typing as npt

from models.base import SAMPLE_RATE

InputFormat = Literal["pcm16", "pcmu", "pcma"]
"""The three encodings, by internal name."""

FORMATS: Mapping[str, InputFormat] = MappingProxyType(
    {
        "audio/pcm": "pcm16",  # GA: {"type": "audio/pcm", "rate": 24000}
        "audio/pcmu": "pcmu",
        "audio/pcma": "pcma",
        "pcm16": "pcm16",  # the beta protocol's names
        "g711_ulaw": "pcmu",
        "g711_alaw": "pcma",
    }
)
"""Format names a session may ask for (GA ``type`` values and beta strings)."""

INPUT_RATES: Mapping[InputFormat, int] = MappingProxyType(
    {"pcm16": 24_000, "pcmu": 8_000, "pcma": 8_000}
)
"""Samples per second of each encoding on the wire."""

BYTES_PER_SAMPLE: Mapping[InputFormat, int] = MappingProxyType({"pcm16": 2, "pcmu": 1, "pcma": 1})
"""Bytes per sample on the wire (``len(data) / (rate * this)`` is the chunk's seconds)."""


def _ulaw_table() -> npt.NDArray[np.int16]:
    """G.711 mu-law byte -> linear 16-bit (the bits are stored inverted; bias 0x84)."""
    code = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(code & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> npt.NDArray[np.int16]:
    """G.711 A-law byte -> linear 16-bit (even bits inverted: XOR 0x55; sign bit 1 is +)."""
    code = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (code >> 4) & 0x07
    mantissa = code & 0x0F
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(code & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW = _ulaw_table()
"""Linear value of each mu-law byte (index: the byte)."""
ALAW = _alaw_table()
"""Linear value of each A-law byte (index: the byte)."""


class InputAudio:
    """Turns appended audio chunks of one session into 16 kHz int16, as they arrive."""

    def __init__(self, fmt: InputFormat) -> None:
        self.format: InputFormat = fmt
        self.rate = INPUT_RATES[fmt]
        self._table = {"pcm16": None, "pcmu": ULAW, "pcma": ALAW}[fmt]
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._time_base = Fraction(1, self.rate)
        self._odd = b""  # a pcm16 chunk's trailing half sample, for the next chunk
        self._position = 0  # input samples so far: the next frame's timestamp

    def decode(self, data: bytes) -> npt.NDArray[np.int16]:
        """The 16 kHz samples this chunk completes (a resampler holds a few back).

        A pcm16 chunk of odd length is not an error: its trailing byte is kept for the
        next chunk, since clients may split anywhere.
        """
        if self._table is None:
            if self._odd:
                data = self._odd + data
            whole = len(data) & ~1
            self._odd = data[whole:]
            samples = np.frombuffer(data, dtype="<i2", count=whole // 2).astype(np.int16)
        else:
            samples = self._table[np.frombuffer(data, dtype=np.uint8)]
        if not len(samples):
            return np.zeros(0, dtype=np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.time_base = self._time_base
        frame.pts = self._position
        self._position += len(samples)
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> npt.NDArray[np.int16]:
        """The samples the resampler still holds (at a commit in manual mode, or the end).

        Afterwards the stream starts afresh: a new resampler, as if a new file began.
        A pcm16 half sample still held is dropped (no whole sample to give).
        """
        out = self._collect(self._resampler.resample(None))
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._odd = b""
        self._position = 0
        return out

    @property
    def input_samples(self) -> int:
        """Samples of the input rate received since the start (or the last flush)."""
        return self._position

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> npt.NDArray[np.int16]:
        if not frames:
            return np.zeros(0, dtype=np.int16)
        parts = [frame.to_ndarray().reshape(-1) for frame in frames]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(np.int16, copy=False)
