"""A realtime session's input audio: pcm16 at 24 kHz and G.711 at 8 kHz, to 16 kHz int16.

Streamed in 20 ms chunks (or cut anywhere, odd bytes included), the decoder must give
exactly the samples the file endpoints' decoder gives for the same audio in a WAV,
so that a live utterance and the same recording uploaded are heard identically.
"""

from __future__ import annotations

import struct
import warnings
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from server.audio import AudioLimits, decode_pcm16
from server.realtime.audio_in import (
    ALAW,
    BYTES_PER_SAMPLE,
    FORMATS,
    INPUT_RATES,
    ULAW,
    InputAudio,
    InputFormat,
)
from tests.realtime import pieces
from tests.speech import wav_bytes

LIMITS = AudioLimits(3600, 8 << 30)
CODES = ("pcmu", "pcma")
TABLES = {"pcmu": ULAW, "pcma": ALAW}
WAVE_FORMAT_TAG = {"pcmu": 7, "pcma": 6}
"""WAVE_FORMAT_MULAW and WAVE_FORMAT_ALAW: a WAV holding the G.711 bytes themselves."""


def signal(seconds: float, rate: int) -> npt.NDArray[np.int16]:
    """A sweep plus noise: energy across the whole band, so resampling has work to do."""
    t = np.arange(int(seconds * rate)) / rate
    sweep = np.sin(2 * np.pi * (100 + 1500 * t) * t) * 8000
    noise = np.random.default_rng(int(seconds * rate)).normal(0, 2000, len(t))
    return np.clip(sweep + noise, -32768, 32767).astype(np.int16)


def g711_bytes(seconds: float, rng_seed: int = 7) -> bytes:
    return np.random.default_rng(rng_seed).integers(0, 256, int(seconds * 8000), np.uint8).tobytes()


def g711_wav(data: bytes, fmt: str) -> bytes:
    """A WAV file of G.711 bytes (format tag 7 or 6), as telephony recorders write them."""
    fmt_chunk = struct.pack("<HHIIHHH", WAVE_FORMAT_TAG[fmt], 1, 8000, 8000, 1, 8, 0)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk
    body += b"fact" + struct.pack("<II", 4, len(data)) + b"data" + struct.pack("<I", len(data))
    body += data + b"\0" * (len(data) % 2)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def streamed(fmt: InputFormat, data: bytes, sizes: Sequence[int]) -> npt.NDArray[np.int16]:
    decoder = InputAudio(fmt)
    parts = [decoder.decode(piece) for piece in pieces(data, sizes)]
    parts.append(decoder.flush())
    for part in parts:
        assert part.dtype == np.int16
    return np.concatenate(parts)


def twenty_ms(fmt: InputFormat) -> int:
    return INPUT_RATES[fmt] * BYTES_PER_SAMPLE[fmt] // 50


def test_g711_tables_are_audioops() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # gone in Python 3.13
    every_byte = bytes(range(256))
    np.testing.assert_array_equal(ULAW, np.frombuffer(audioop.ulaw2lin(every_byte, 2), "<i2"))
    np.testing.assert_array_equal(ALAW, np.frombuffer(audioop.alaw2lin(every_byte, 2), "<i2"))
    # Known values of ITU-T G.711: silence codes and the extremes.
    assert (ULAW[0xFF], ULAW[0x7F], ULAW[0x00], ULAW[0x80]) == (0, 0, -32124, 32124)
    assert (ALAW[0xD5], ALAW[0x55], ALAW[0xAA], ALAW[0x2A]) == (8, -8, 32256, -32256)


@pytest.mark.parametrize("sizes", [(960,), (7, 333, 1001, 2), (1,), (10**6,)])
def test_pcm16_streamed_equals_the_file_decoder(sizes: Sequence[int]) -> None:
    samples = signal(1.37, 24_000)
    whole = decode_pcm16(wav_bytes(samples, 24_000), LIMITS)
    data = samples.astype("<i2").tobytes()
    np.testing.assert_array_equal(streamed("pcm16", data, sizes), whole)


@pytest.mark.parametrize("fmt", CODES)
def test_g711_streamed_equals_the_file_decoder(fmt: InputFormat) -> None:
    data = g711_bytes(1.37)
    # ffmpeg's own G.711 decoder, on a WAV of the same bytes ...
    from_g711_wav = decode_pcm16(g711_wav(data, fmt), LIMITS)
    # ... and on a 16-bit WAV of the samples the tables give.
    linear = TABLES[fmt][np.frombuffer(data, np.uint8)]
    from_linear_wav = decode_pcm16(wav_bytes(linear, 8000), LIMITS)
    np.testing.assert_array_equal(from_g711_wav, from_linear_wav)
    np.testing.assert_array_equal(streamed(fmt, data, (twenty_ms(fmt),)), from_linear_wav)
    np.testing.assert_array_equal(streamed(fmt, data, (1, 77, 500)), from_linear_wav)


def test_an_odd_trailing_byte_waits_for_the_next_chunk() -> None:
    data = signal(0.06, 24_000).astype("<i2").tobytes()
    decoder = InputAudio("pcm16")
    out = [decoder.decode(data[:1])]
    assert out[0].shape == (0,)
    assert decoder.input_samples == 0  # half a sample is not a sample yet
    out.append(decoder.decode(data[1:4]))
    assert decoder.input_samples == 2
    out.append(decoder.decode(data[4:]))
    assert decoder.input_samples == len(data) // 2
    out.append(decoder.flush())
    np.testing.assert_array_equal(np.concatenate(out), streamed("pcm16", data, (len(data),)))


@pytest.mark.parametrize("fmt", ["pcm16", *CODES])
def test_each_format_gives_16_khz_with_little_held_back(fmt: InputFormat) -> None:
    seconds = 2.0
    data = np.random.default_rng(3).integers(
        0, 256, int(seconds * INPUT_RATES[fmt] * BYTES_PER_SAMPLE[fmt]), np.uint8
    )
    decoder = InputAudio(fmt)
    received = 0
    step = twenty_ms(fmt)
    for position in range(0, len(data), step):
        received += len(decoder.decode(data[position : position + step].tobytes()))
        sent = (position + step) // BYTES_PER_SAMPLE[fmt] * 16_000 // INPUT_RATES[fmt]
        assert sent - 32 <= received <= sent  # at most 2 ms wait in the resampler
    received += len(decoder.flush())
    assert received == seconds * 16_000


def test_flush_starts_afresh_and_empty_chunks_are_nothing() -> None:
    decoder = InputAudio("pcmu")
    assert decoder.decode(b"").shape == (0,)
    assert decoder.flush().shape == (0,)
    data = g711_bytes(0.5)
    first = np.concatenate([decoder.decode(data), decoder.flush()])
    second = np.concatenate([decoder.decode(data), decoder.flush()])
    np.testing.assert_array_equal(first, second)
    assert len(first) == 8000


def test_format_names() -> None:
    assert dict(FORMATS) == {
        "audio/pcm": "pcm16",
        "audio/pcmu": "pcmu",
        "audio/pcma": "pcma",
        "pcm16": "pcm16",
        "g711_ulaw": "pcmu",
        "g711_alaw": "pcma",
    }
    assert dict(INPUT_RATES) == {"pcm16": 24_000, "pcmu": 8_000, "pcma": 8_000}
