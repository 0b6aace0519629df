"""Speech encoders: every format decodes back to the input, whole or chunked."""

from __future__ import annotations

import io
import struct
import wave
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import numpy.typing as npt
import pytest

from server.encoding import (
    CONTENT_TYPES,
    OUTPUT_SAMPLE_RATE,
    WAV_HEADER,
    SpeechFormat,
    StreamEncoder,
    encode_all,
)

FORMATS: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac", "flac", "wav", "pcm")
LOSSLESS: tuple[SpeechFormat, ...] = ("flac", "wav", "pcm")
LOSSY: tuple[SpeechFormat, ...] = ("mp3", "opus", "aac")
SECONDS = 1.7
# Encoder priming and end padding that the container cannot tell a decoder to
# trim: raw MP3 frames (no LAME tag on a stream) and ADTS. Ogg Opus trims both.
MAX_EXTRA_SECONDS: dict[SpeechFormat, float] = {"mp3": 0.060, "aac": 0.060, "opus": 0.001}


def sine(rate: int, seconds: float = SECONDS, amplitude: float = 0.5) -> npt.NDArray[np.float32]:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def decode(data: bytes, fmt: SpeechFormat) -> tuple[npt.NDArray[np.float32], int, int]:
    """Decoded samples as float in [-1, 1], the decoded rate and channel count."""
    if fmt == "pcm":
        return _as_float(np.frombuffer(data, "<i2")), OUTPUT_SAMPLE_RATE, 1
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        # One plane (planar) or one interleaved row (packed): mono either way.
        chunks = [frame.to_ndarray()[0] for frame in container.decode(audio=0)]
    return _as_float(np.concatenate(chunks) if chunks else np.zeros(0)), rate, channels


def _as_float(samples: npt.NDArray[np.generic]) -> npt.NDArray[np.float32]:
    if samples.dtype == np.int16:
        return (samples.astype(np.float32) / 32768).astype(np.float32)
    return samples.astype(np.float32)


def encode_chunked(fmt: SpeechFormat, samples: npt.NDArray[np.float32], rate: int) -> list[bytes]:
    """Encode in odd sizes, empty and single-sample chunks included."""
    encoder = StreamEncoder(fmt, rate)
    sizes = [0, 1, 1, 7, 0, 333, 1024, 1151, 4999, 2]
    parts, start, i = [], 0, 0
    while start < len(samples):
        size = sizes[i % len(sizes)]
        parts.append(encoder.encode(samples[start : start + size]))
        start, i = start + size, i + 1
    parts.append(encoder.finish())
    return parts


def dominant_frequency(samples: npt.NDArray[np.float32], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def opus_input_rate(data: bytes) -> int:
    """The input sample rate field of the OpusHead packet in the first Ogg page."""
    head = data.index(b"OpusHead")
    return int(struct.unpack_from("<I", data, head + 12)[0])


@pytest.mark.parametrize("input_rate", [22050, 24000])
@pytest.mark.parametrize("fmt", FORMATS)
def test_whole_and_chunked_decode_to_24_khz_mono_of_the_same_length(
    fmt: SpeechFormat, input_rate: int
) -> None:
    samples = sine(input_rate)
    for data in (
        encode_all(fmt, samples, input_rate),
        b"".join(encode_chunked(fmt, samples, input_rate)),
    ):
        decoded, rate, channels = decode(data, fmt)
        assert channels == 1
        if fmt == "opus":
            # Opus decoders always run at 48 kHz; the stream says it was 24 kHz.
            assert rate == 48_000 and opus_input_rate(data) == OUTPUT_SAMPLE_RATE
        else:
            assert rate == OUTPUT_SAMPLE_RATE
        extra = len(decoded) / rate - len(samples) / input_rate
        if fmt in LOSSLESS:
            assert len(decoded) == round(len(samples) * OUTPUT_SAMPLE_RATE / input_rate)
        else:
            assert -0.001 <= extra < MAX_EXTRA_SECONDS[fmt]
            assert abs(dominant_frequency(decoded, rate) - 440) < 2


@pytest.mark.parametrize("input_rate", [22050, 24000])
@pytest.mark.parametrize("fmt", LOSSLESS)
def test_lossless_formats_keep_the_resampled_signal(fmt: SpeechFormat, input_rate: int) -> None:
    samples = sine(input_rate)
    whole, _, _ = decode(encode_all(fmt, samples, input_rate), fmt)
    chunked, _, _ = decode(b"".join(encode_chunked(fmt, samples, input_rate)), fmt)
    # The resampler carries its state across chunks: chunking changes nothing.
    np.testing.assert_array_equal(chunked, whole)
    expected = sine(OUTPUT_SAMPLE_RATE)
    # Within about one int16 step of the ideal 24 kHz sine; the band-limited
    # resampler rings a little more in the first and last few samples.
    assert np.abs(whole - expected)[48:-48].max() < 1.5 / 32768
    assert np.abs(whole - expected).max() < 0.01


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac"])
def test_streaming_formats_emit_bytes_before_finish(fmt: SpeechFormat) -> None:
    samples = sine(22050, seconds=4.0)
    encoder = StreamEncoder(fmt, 22050)
    half_second = 22050 // 2
    parts = [
        encoder.encode(samples[start : start + half_second])
        for start in range(0, len(samples), half_second)
    ]
    tail = encoder.finish()
    assert all(parts), "every half second of input should bring out audio"
    assert len(tail) < sum(map(len, parts)) / 4
    decoded, _, _ = decode(b"".join([*parts, tail]), fmt)
    assert len(decoded) > 0


def test_wav_has_a_streaming_header_of_unknown_length() -> None:
    data = encode_all("wav", sine(22050), 22050)
    riff, riff_size, wave_id, fmt_id, fmt_size = struct.unpack_from("<4sI4s4sI", data)
    assert (riff, riff_size, wave_id, fmt_id, fmt_size) == (
        b"RIFF",
        0xFFFFFFFF,
        b"WAVE",
        b"fmt ",
        16,
    )
    tag, channels, rate, byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", data, 20)
    assert (tag, channels, rate, byte_rate, block_align, bits) == (1, 1, 24000, 48000, 2, 16)
    assert struct.unpack_from("<4sI", data, 36) == (b"data", 0xFFFFFFFF)
    assert data[:44] == WAV_HEADER
    assert data[44:] == encode_all("pcm", sine(22050), 22050)
    # Python's wave takes the sizes at their word but reads only what is there.
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getnchannels(), reader.getsampwidth(), reader.getframerate()) == (
            1,
            2,
            24000,
        )
        assert len(reader.readframes(reader.getnframes())) == len(data) - 44


def test_pcm_is_two_bytes_per_sample_at_24_khz_and_clips() -> None:
    assert len(encode_all("pcm", sine(24000, 1.0), 24000)) == 2 * 24000
    assert len(encode_all("pcm", sine(22050, 1.0), 22050)) == 2 * 24000
    loud = np.array([2.0, -2.0, 1.0, -1.0, 0.5, 0.0], dtype=np.float32)
    pcm = np.frombuffer(encode_all("pcm", loud, 24000), "<i2")
    np.testing.assert_array_equal(pcm, [32767, -32768, 32767, -32768, 16384, 0])


def test_an_encoder_knows_its_content_type() -> None:
    # The table itself is checked on the wire, in tests/api/test_speech.py.
    for fmt, content_type in CONTENT_TYPES.items():
        assert StreamEncoder(fmt, 24000).content_type == content_type


@pytest.mark.parametrize("fmt", FORMATS)
def test_no_audio_at_all_does_not_raise(fmt: SpeechFormat) -> None:
    encoder = StreamEncoder(fmt, 22050)
    data = encoder.encode(np.zeros(0, dtype=np.float32)) + encoder.finish()
    assert encoder.finish() == b""
    if fmt in ("flac", "wav"):  # the formats whose header alone is a valid file
        decoded, rate, _ = decode(data, fmt)
        assert rate == OUTPUT_SAMPLE_RATE and len(decoded) == 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_single_samples_add_up(fmt: SpeechFormat) -> None:
    samples = sine(24000, seconds=0.1)
    encoder = StreamEncoder(fmt, 24000)
    data = b"".join(encoder.encode(samples[i : i + 1]) for i in range(len(samples)))
    decoded, rate, _ = decode(data + encoder.finish(), fmt)
    assert len(decoded) / rate >= 0.1 - 1 / rate


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamEncoder("ogg", 24000)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        StreamEncoder("mp3", 0)
    encoder = StreamEncoder("mp3", 24000)
    with pytest.raises(ValueError):
        encoder.encode(np.zeros((2, 10), dtype=np.float32))
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.encode(np.zeros(10, dtype=np.float32))


def test_encoders_in_parallel_threads_do_not_interfere() -> None:
    samples = sine(22050)
    expected = {fmt: encode_all(fmt, samples, 22050) for fmt in LOSSLESS}
    jobs = [fmt for fmt in LOSSLESS for _ in range(4)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda fmt: encode_all(fmt, samples, 22050), jobs))
    assert results == [expected[fmt] for fmt in jobs]
