"""decode_audio: the right samples for honest files, a fast and cheap refusal for the rest.

Every file here is made in the test, with PyAV or the stdlib ``wave`` module or as
raw bytes, so each one is exactly what its test says it is: a tone of known length
and pitch, hours of digital silence in tens of kilobytes of FLAC, a header that lies.
"""

from __future__ import annotations

import io
import itertools
import struct
import threading
import time
import tracemalloc
import wave
from collections.abc import Callable, Iterable, Iterator

import av
import numpy as np
import numpy.typing as npt
import pytest

from models.windowing import Abandoned
from server.audio import AudioLimits, decode_audio, decode_pcm16
from server.errors import InvalidAudio
from tests.cancel import StopAfter

OUT_RATE = 16_000
DEFAULT = AudioLimits(4 * 3600, 8 << 30)
"""The server's defaults: four hours, 8 GiB out of the decoder."""
TEN_HOURS = 10 * 3600
FLAC_MAX_BLOCK = 65_535
"""FLAC's largest block: ten hours of 8 kHz silence in about 70 kB."""
PEAK_BYTES_ALLOWED = 50 << 20
"""What refusing a huge file may allocate; decoding four hours would allocate ~920 MB."""

Samples = npt.NDArray[np.float32]


def tone(seconds: float, rate: int, hz: float = 440.0, amplitude: float = 0.5) -> Samples:
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def chunks(samples: Samples, size: int = 4096) -> Iterator[Samples]:
    for start in range(0, len(samples), size):
        yield samples[start : start + size]


def encode(
    container_format: str,
    codec: str,
    rate: int,
    parts: Iterable[Samples],
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
) -> bytes:
    """Mono float ``parts`` encoded by PyAV (FLAC as 16-bit) into one in-memory file."""
    sample_format = {"flac": "s16", "libmp3lame": "fltp", "libopus": "flt", "aac": "fltp"}[codec]
    buffer = io.BytesIO()
    with av.open(
        buffer, "w", format=container_format, options=container_options or {}
    ) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono", options=options or {})
        assert isinstance(stream, av.AudioStream)
        pts = 0
        for part in parts:
            array: npt.NDArray[np.float32] | npt.NDArray[np.int16] = part
            if sample_format == "s16":
                array = np.round(part * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(
                array.reshape(1, -1), format=sample_format, layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = pts
            pts += len(part)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def silent_flac(seconds: int, rate: int = 8_000) -> bytes:
    """Exactly ``seconds`` of digital silence, in FLAC's largest blocks."""
    whole, rest = divmod(seconds * rate, FLAC_MAX_BLOCK)
    parts = itertools.chain(
        itertools.repeat(np.zeros(FLAC_MAX_BLOCK, dtype=np.float32), whole),
        [np.zeros(rest, dtype=np.float32)] if rest else [],
    )
    return encode("flac", "flac", rate, parts, {"frame_size": str(FLAC_MAX_BLOCK)})


def without_total_samples(flac: bytes) -> bytes:
    """The FLAC with STREAMINFO's 36-bit total-samples field zeroed: it declares no length.

    'fLaC', the 4-byte block header, then min/max block size (2+2) and min/max frame
    size (3+3); the next 8 bytes are rate (20 bits), channels (3), bits (5), total (36).
    """
    assert flac[:4] == b"fLaC"
    at = 4 + 4 + 10
    packed = int.from_bytes(flac[at : at + 8], "big") & ~((1 << 36) - 1)
    return flac[:at] + packed.to_bytes(8, "big") + flac[at + 8 :]


def with_lying_packets(m4a: bytes) -> bytes:
    """The MP4 with every duration in its boxes (movie, track, media, sample table) set to 1.

    Its header then declares 125 microseconds and its packets sum to a few hundredths
    of a second, while the AAC inside still decodes to every sample it was made from.
    Version-0 boxes: size, type, version and flags, then the fields at fixed offsets.
    """
    patched = bytearray(m4a)
    stts = patched.find(b"stts")
    for entry in range(int.from_bytes(patched[stts + 8 : stts + 12], "big")):
        delta_at = stts + 16 + 8 * entry  # each entry: sample count, then sample delta
        patched[delta_at : delta_at + 4] = (1).to_bytes(4, "big")
    for box, duration_at in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):
        at = patched.find(box)
        assert at > 0
        assert patched[at + 4] == 0  # version 0: 32-bit fields
        patched[at + duration_at : at + duration_at + 4] = (1).to_bytes(4, "big")
    return bytes(patched)


def wav_file(samples: Samples, rate: int, channels: int = 1) -> bytes:
    """16-bit PCM by the stdlib; ``samples`` interleaved when ``channels`` > 1."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def forged_wav(rate: int, channels: int, frames: int = 1_000) -> bytes:
    """A PCM WAV written byte by byte, so its header can claim anything."""
    block_align = 2 * channels
    fmt = struct.pack(
        "<4sIHHIIHH",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        rate,
        (rate * block_align) & 0xFFFF_FFFF,
        block_align,
        16,
    )
    data = struct.pack("<4sI", b"data", frames * block_align) + bytes(frames * block_align)
    body = b"WAVE" + fmt + data
    return struct.pack("<4sI", b"RIFF", len(body)) + body


def peak_hz(samples: Samples, rate: int = OUT_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * rate / len(samples))


def rms(samples: Samples) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))


def refused(data: bytes, limits: AudioLimits = DEFAULT, filename: str | None = None) -> str:
    """The message ``decode_audio`` refuses ``data`` with (any other outcome fails)."""
    with pytest.raises(InvalidAudio) as refusal:
        decode_audio(data, limits, filename)
    assert refusal.value.param == "file"
    assert refusal.value.status_code == 400
    return refusal.value.message


def refused_cheaply(data: bytes, limits: AudioLimits) -> tuple[str, float, int]:
    """The refusal's message, its wall time and the peak of traced allocations (numpy's too)."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        message = refused(data, limits, "long.flac")
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return message, elapsed, peak


@pytest.fixture(scope="module")
def ten_hours_flac() -> bytes:
    return silent_flac(TEN_HOURS)


# -- honest files come back as the same sound at 16 kHz ------------------------------------

SECONDS = 3.0


@pytest.mark.parametrize(
    ("name", "make", "slack_ms"),
    [
        ("tone.wav", lambda: wav_file(tone(SECONDS, 22_050), 22_050), 3),
        ("tone.flac", lambda: encode("flac", "flac", 44_100, chunks(tone(SECONDS, 44_100))), 3),
        (
            "tone.mp3",
            lambda: encode("mp3", "libmp3lame", 24_000, chunks(tone(SECONDS, 24_000))),
            50,  # the encoder's priming and padding
        ),
        (
            "tone.ogg",
            lambda: encode("ogg", "libopus", 48_000, chunks(tone(SECONDS, 48_000))),
            5,
        ),
    ],
    ids=["wav", "flac", "mp3", "ogg-opus"],
)
def test_a_normal_file_round_trips_at_16_khz(
    name: str, make: Callable[[], bytes], slack_ms: int
) -> None:
    audio = decode_audio(make(), DEFAULT, name)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(len(audio) - SECONDS * OUT_RATE) <= slack_ms * OUT_RATE / 1000, len(audio)
    assert peak_hz(audio) == pytest.approx(440, abs=2)  # same pitch: resampled, not relabelled
    assert rms(audio) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)  # same loudness, in [-1, 1]


def test_stereo_is_mixed_down_to_one_channel_of_the_right_length() -> None:
    left = tone(2.0, 48_000, hz=440)
    right = tone(2.0, 48_000, hz=1_000)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    audio = decode_audio(wav_file(interleaved, 48_000, channels=2), DEFAULT, "stereo.wav")
    assert len(audio) == 2 * OUT_RATE
    spectrum = np.abs(np.fft.rfft(audio))
    hz = np.fft.rfftfreq(len(audio), 1 / OUT_RATE)
    both = spectrum[np.isclose(hz, 440)][0], spectrum[np.isclose(hz, 1_000)][0]
    assert min(both) > 0.5 * max(both)  # each channel is in the mix, neither dominates


# -- a small file that claims hours is refused before it costs anything --------------------


def test_ten_hours_declared_is_refused_fast_and_small(ten_hours_flac: bytes) -> None:
    assert len(ten_hours_flac) < 500_000
    with av.open(io.BytesIO(ten_hours_flac), mode="r") as container:
        assert container.duration is not None
        assert container.duration / 1e6 >= TEN_HOURS
    message, elapsed, peak = refused_cheaply(ten_hours_flac, DEFAULT)
    assert "14400 seconds" in message
    assert elapsed < 10.0  # a decode of ten hours takes minutes
    assert peak < PEAK_BYTES_ALLOWED, f"{peak / 1e6:.0f} MB traced"


def test_ten_hours_declaring_nothing_is_refused_by_its_packets(ten_hours_flac: bytes) -> None:
    silent = without_total_samples(ten_hours_flac)
    with av.open(io.BytesIO(silent), mode="r") as container:
        assert container.duration is None  # nothing for a header check to see
    message, elapsed, peak = refused_cheaply(silent, DEFAULT)
    assert "14400 seconds" in message
    assert elapsed < 10.0  # a decode of ten hours takes minutes
    assert peak < PEAK_BYTES_ALLOWED, f"{peak / 1e6:.0f} MB traced"


def test_declaring_nothing_is_no_way_past_a_small_limit() -> None:
    silent = without_total_samples(silent_flac(60))
    assert len(decode_audio(silent, AudioLimits(61, 8 << 30), "a.flac")) == 60 * OUT_RATE
    assert "at most 59 seconds" in refused(silent, AudioLimits(59, 8 << 30), "a.flac")


def test_packets_that_lie_are_stopped_while_decoding() -> None:
    honest = encode(
        "mp4", "aac", 8_000, chunks(tone(20.0, 8_000)), container_options={"use_editlist": "0"}
    )
    lying = with_lying_packets(honest)
    with av.open(io.BytesIO(lying), mode="r") as container:
        assert (container.duration or 0) < 1_000_000  # declares under a second
        packets = sum(
            float(packet.duration * packet.time_base)
            for packet in container.demux(audio=0)
            if packet.duration and packet.time_base
        )
    assert packets < 1.0  # and its packets agree
    assert "at most 5 seconds" in refused(lying, AudioLimits(5, 8 << 30), "lying.m4a")
    audio = decode_audio(lying, AudioLimits(30, 8 << 30), "lying.m4a")
    assert 20 * OUT_RATE <= len(audio) <= 20.5 * OUT_RATE  # AAC's priming and padding


def test_a_short_file_costs_memory_for_its_length_not_the_limit() -> None:
    data = wav_file(tone(2.0, 16_000), 16_000)
    tracemalloc.start()
    try:
        audio = decode_audio(data, DEFAULT, "short.wav")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(audio) == 2 * OUT_RATE
    assert peak < 5 << 20, f"{peak / 1e6:.0f} MB traced"  # 4 h of output would be ~920 MB


def test_a_file_over_a_small_limit_is_refused() -> None:
    twenty = wav_file(tone(20.0, 8_000), 8_000)
    message = refused(twenty, AudioLimits(5, 8 << 30), "twenty.wav")
    assert "at most 5 seconds" in message
    assert "20 seconds" in message
    assert len(decode_audio(twenty, AudioLimits(21, 8 << 30), "twenty.wav")) == 20 * OUT_RATE


# -- headers that claim what no microphone produces -----------------------------------------


@pytest.mark.parametrize(
    ("rate", "channels", "says"),
    [
        (2_000_000_000, 1, "sample rate of 2000000000 Hz"),
        (500_000, 1, "sample rate of 500000 Hz"),
        (384_001, 1, "sample rate of 384001 Hz"),
        (999, 1, "sample rate of 999 Hz"),
        (16_000, 64, "64 channels"),
        (16_000, 33, "33 channels"),
    ],
)
def test_a_forged_header_is_refused_quickly(rate: int, channels: int, says: str) -> None:
    started = time.perf_counter()
    message = refused(forged_wav(rate, channels), DEFAULT, "forged.wav")
    assert time.perf_counter() - started < 5.0  # no decode: milliseconds when idle
    assert says in message


@pytest.mark.parametrize("rate", [1_000, 384_000])
def test_the_extreme_rates_allowed_are_decoded(rate: int) -> None:
    frames = rate // 10  # 0.1 s
    audio = decode_audio(forged_wav(rate, 1, frames=frames), DEFAULT, "edge.wav")
    assert abs(len(audio) - OUT_RATE // 10) <= 2


@pytest.mark.parametrize("channels", [2, 3, 6, 8, 9, 11, 16, 24, 32])
def test_many_channels_are_mixed_down(channels: int) -> None:
    one = tone(0.5, 16_000)
    interleaved = np.repeat(one, channels)
    audio = decode_audio(wav_file(interleaved, 16_000, channels), DEFAULT, "array.wav")
    assert len(audio) == OUT_RATE // 2
    assert peak_hz(audio) == pytest.approx(440, abs=2)
    assert rms(audio) > 0.05


# -- the decoder's output is capped in bytes -------------------------------------------------

STEREO_10_S = 10 * 48_000 * 2 * 2
"""Ten seconds of 48 kHz stereo s16: what the decoder produces for the file below."""


@pytest.fixture(scope="module")
def stereo_48k() -> bytes:
    left = tone(10.0, 48_000)
    return wav_file(np.stack([left, left], axis=1).reshape(-1), 48_000, channels=2)


def test_max_decoded_bytes_stops_decoding(stereo_48k: bytes) -> None:
    message = refused(stereo_48k, AudioLimits(3600, 1_000_000), "stereo.wav")
    assert "1000000 bytes" in message


def test_max_decoded_bytes_counts_native_rate_channels_and_sample_size(stereo_48k: bytes) -> None:
    audio = decode_audio(stereo_48k, AudioLimits(3600, STEREO_10_S), "stereo.wav")
    assert len(audio) == 10 * OUT_RATE
    assert "bytes" in refused(stereo_48k, AudioLimits(3600, STEREO_10_S - 1), "stereo.wav")
    assert len(decode_audio(stereo_48k, AudioLimits(3600, 8 << 30), "stereo.wav")) == len(audio)


# -- the content decides, not the name (more in test_audio_files.py) ------------------------

WAV_1S = wav_file(tone(1.0, 16_000), 16_000)


@pytest.mark.parametrize("filename", [None, "", "recording", "speech.WAV", "Speech.Wav", ".wav"])
def test_no_extension_goes_by_content_and_case_does_not_matter(filename: str | None) -> None:
    assert len(decode_audio(WAV_1S, DEFAULT, filename)) == OUT_RATE


@pytest.fixture(scope="module")
def mp3_1s() -> bytes:
    return encode("mp3", "libmp3lame", 16_000, chunks(tone(1.0, 16_000)))


@pytest.mark.parametrize("filename", ["a.mp3", "a.mpga", "a.mpeg"])
def test_every_name_openai_gives_mp3_is_accepted(mp3_1s: bytes, filename: str) -> None:
    assert abs(len(decode_audio(mp3_1s, DEFAULT, filename)) - OUT_RATE) <= 0.05 * OUT_RATE


# -- whatever the bytes, the answer is InvalidAudio -----------------------------------------


@pytest.mark.parametrize(
    ("data", "filename", "says"),
    [
        (b"", "empty.wav", "empty"),
        (b"", None, "empty"),
        (np.random.default_rng(0).bytes(20_000), "noise.mp3", "could not be decoded"),
        (np.random.default_rng(1).bytes(20_000), None, ""),
        (WAV_1S[:12], "cut.wav", ""),
        (WAV_1S[:30], "cut.wav", ""),
        (WAV_1S[:44], "cut.wav", "no audio samples"),
        (WAV_1S[:20] + b"\x34\x12" + WAV_1S[22:], "odd.wav", "codec is not supported"),
        (b"fLaC" + bytes(10), "cut.flac", ""),
        (b"OggS" + bytes(40), "cut.ogg", ""),
        (b"ID3\x04\x00\x00\x00\x00\x00\x10", "cut.mp3", ""),
        (b"\x1a\x45\xdf\xa3" + bytes(20), "cut.webm", ""),
        (b"RIFF\xff\xff\xff\xffWAVEfmt ", "cut.wav", ""),
    ],
    ids=[
        "empty",
        "empty-unnamed",
        "noise-as-mp3",
        "noise-unnamed",
        "wav-riff-only",
        "wav-cut-in-fmt",
        "wav-header-no-data",
        "wav-unknown-codec",
        "flac-cut-streaminfo",
        "ogg-zeroed-page",
        "mp3-id3-only",
        "webm-ebml-only",
        "wav-claims-4gb",
    ],
)
def test_garbage_and_truncated_headers_are_invalid_audio(
    data: bytes, filename: str | None, says: str
) -> None:
    assert says in refused(data, DEFAULT, filename)


@pytest.fixture(scope="module")
def ten_minutes_mp3() -> bytes:
    return encode("mp3", "libmp3lame", 16_000, chunks(tone(600, 16_000), 16_000))


def test_cancellation_stops_decoding_at_its_next_look(ten_minutes_mp3: bytes) -> None:
    never = StopAfter(10**9)
    audio = decode_pcm16(ten_minutes_mp3, DEFAULT, "long.mp3", cancel=never)
    assert audio.dtype == np.int16 and len(audio) >= 600 * OUT_RATE
    assert never.looks >= 600  # at least one look per second of audio: a prompt stop
    for after in (1, never.looks // 2, never.looks - 1):
        token = StopAfter(after)
        with pytest.raises(Abandoned):
            decode_pcm16(ten_minutes_mp3, DEFAULT, "long.mp3", cancel=token)
        assert token.looks == after  # stopped at the first look that saw it set


def test_a_real_hang_up_stops_a_long_decode_promptly(ten_minutes_mp3: bytes) -> None:
    data = ten_minutes_mp3 * 6  # an hour: seconds of decoding on any machine
    cancel = threading.Event()
    outcome: list[BaseException | None] = []

    def decode() -> None:
        try:
            decode_pcm16(data, AudioLimits(2 * 3600, 8 << 30), "hour.mp3", cancel=cancel)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=decode)
    worker.start()
    time.sleep(0.3)
    cancel.set()
    set_at = time.monotonic()
    worker.join(timeout=30)
    stopped_after = time.monotonic() - set_at
    assert outcome and isinstance(outcome[0], Abandoned)
    assert stopped_after < 5.0  # one packet's work, on however busy a machine


def test_decode_audio_is_float_and_decode_pcm16_the_same_samples() -> None:
    data = wav_file(tone(1.0, 16_000), 16_000)
    pcm = decode_pcm16(data, DEFAULT, "a.wav")
    audio = decode_audio(data, DEFAULT, "a.wav")
    assert pcm.dtype == np.int16 and audio.dtype == np.float32
    np.testing.assert_array_equal(audio, pcm.astype(np.float32) / 32768.0)
