"""Valid files ffmpeg plays that were refused: joined MP3s, a short sound track on a long
video, files named as people name them (``.opus``, ``.weba``, ``.3gp``, ``.amr``...).

Each file is made here with PyAV: MP3s as a podcast tool writes them (an ID3 tag,
then a Xing frame, then the audio), joined with ``cat``; an MP4 whose video runs
ten hours (two tiny frames ten hours apart) and whose audio runs three seconds; a
second of a 440 Hz tone in every container and codec the error message names.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from server.audio import (
    MORE_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    SUPPORTED_LIST,
    AudioLimits,
    corrupt_allowance,
    decode_audio,
)
from server.errors import InvalidAudio
from tests.unit.test_audio_limits import OUT_RATE, encode, peak_hz, tone, wav_file

DEFAULT = AudioLimits(4 * 3600, 8 << 30)
RATE = 16_000


def mp3(seconds: float, hz: float) -> bytes:
    """A whole MP3 file: ID3v2 tag, Xing frame, ``seconds`` of a ``hz`` tone."""
    data = encode("mp3", "libmp3lame", RATE, [tone(seconds, RATE, hz)])
    assert data.startswith(b"ID3")
    return data


def test_two_mp3_files_joined_with_cat_decode_to_both() -> None:
    first, second = mp3(3.0, 440.0), mp3(2.0, 880.0)
    audio = decode_audio(first + second, DEFAULT, "joined.mp3")
    # Both files' samples, give or take the encoder's priming and padding per file.
    assert abs(len(audio) - 5 * OUT_RATE) <= 0.2 * OUT_RATE, len(audio) / OUT_RATE
    assert peak_hz(audio[OUT_RATE : 2 * OUT_RATE]) == pytest.approx(440, abs=5)
    assert peak_hz(audio[-OUT_RATE - OUT_RATE // 2 : -OUT_RATE // 2]) == pytest.approx(880, abs=5)


def test_many_joins_are_still_one_file() -> None:
    parts = [mp3(1.0, 440.0 + 110 * n) for n in range(8)]
    audio = decode_audio(b"".join(parts), DEFAULT, "episode.mp3")
    assert abs(len(audio) - 8 * OUT_RATE) <= 0.6 * OUT_RATE, len(audio) / OUT_RATE


def test_a_file_that_is_mostly_garbage_is_still_refused() -> None:
    garbage = np.random.default_rng(3).bytes(1 << 20)
    with pytest.raises(InvalidAudio) as refused:
        decode_audio(mp3(1.0, 440.0) + garbage, DEFAULT, "broken.mp3")
    assert "could not be decoded" in str(refused.value)
    assert refused.value.status_code == 400


def test_the_corrupt_packet_bound_grows_with_the_good_ones() -> None:
    assert corrupt_allowance(0) >= 2  # a join at the very start
    assert corrupt_allowance(10_000) > corrupt_allowance(100)
    assert corrupt_allowance(100) < 100 // 2  # garbage never outnumbers audio


def video_with_sound(video_seconds: int, audio_seconds: float) -> bytes:
    """An MP4 with two 16x16 video frames ``video_seconds`` apart and a short tone."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=1)
        assert isinstance(video, av.VideoStream)
        video.width = video.height = 16
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = Fraction(1, 1)
        audio = container.add_stream("aac", rate=RATE, layout="mono")
        assert isinstance(audio, av.AudioStream)
        black = np.zeros((16, 16, 3), dtype=np.uint8)
        for pts in (0, video_seconds - 1):
            frame = av.VideoFrame.from_ndarray(black, format="rgb24").reformat(format="yuv420p")
            frame.pts = pts
            frame.time_base = Fraction(1, 1)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        samples = tone(audio_seconds, RATE)
        for start in range(0, len(samples), 1024):
            part = samples[start : start + 1024].reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
            sound.sample_rate = RATE
            sound.pts = start
            for packet in audio.encode(sound):
                container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def test_a_long_video_with_short_sound_is_judged_by_its_sound() -> None:
    data = video_with_sound(10 * 3600, 3.0)
    with av.open(io.BytesIO(data), mode="r") as container:
        assert (container.duration or 0) / av.time_base >= 10 * 3600  # what used to refuse it
    audio = decode_audio(data, DEFAULT, "talk.mp4")
    assert 3 * OUT_RATE <= len(audio) <= 3.2 * OUT_RATE  # AAC's priming and padding
    assert peak_hz(audio) == pytest.approx(440, abs=2)


def test_a_video_whose_sound_is_too_long_is_still_refused_by_its_header() -> None:
    data = video_with_sound(10 * 3600, 3.0)
    with pytest.raises(InvalidAudio) as refused:
        decode_audio(data, AudioLimits(2, 8 << 30), "talk.mp4")
    assert "declares 3 seconds" in str(refused.value)


# -- the name is not the judge: the content is ------------------------------------------------


def tone_file(container_format: str, codec: str, rate: int, bit_rate: int | None = None) -> bytes:
    """One second of a 440 Hz tone, ``codec`` in ``container_format``, made by PyAV.

    The encoder converts the float frame to its own sample format and frame size.
    """
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        if bit_rate:
            stream.bit_rate = bit_rate
        samples = tone(1.0, rate).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


NAMED_FILES = {
    "speech.opus": ("ogg", "libopus", 48_000),  # what our own speech route's opus is
    "speech.oga": ("ogg", "opus", 48_000),
    "speech.weba": ("webm", "libopus", 48_000),  # a browser's MediaRecorder
    "speech.mka": ("matroska", "flac", 16_000),
    "speech.mkv": ("matroska", "aac", 16_000),
    "speech.mov": ("mov", "aac", 16_000),
    "speech.3gp": ("3gp", "libopencore_amrnb", 8_000),  # a phone's voice recorder
    "speech.aac": ("adts", "aac", 16_000),
    "speech.amr": ("amr", "libopencore_amrnb", 8_000),
    "speech.aif": ("aiff", "pcm_s16be", 16_000),
    "speech.aiff": ("aiff", "pcm_s16be", 22_050),
    "speech.caf": ("caf", "alac", 16_000),
    "speech.wma": ("asf", "wmav2", 16_000),
}


def test_every_name_the_message_adds_to_openais_is_tested_here() -> None:
    tested = {name.rsplit(".", 1)[1] for name in NAMED_FILES}
    assert set(MORE_EXTENSIONS) <= tested <= set(SUPPORTED_EXTENSIONS)


@pytest.mark.parametrize(("filename", "made_as"), NAMED_FILES.items(), ids=list(NAMED_FILES))
def test_files_named_as_people_name_them_decode(
    filename: str, made_as: tuple[str, str, int]
) -> None:
    container_format, codec, rate = made_as
    data = tone_file(container_format, codec, rate, bit_rate=64_000 if codec == "wmav2" else None)
    audio = decode_audio(data, DEFAULT, filename)
    assert abs(len(audio) - OUT_RATE) <= 0.1 * OUT_RATE, len(audio) / OUT_RATE  # codec padding
    assert peak_hz(audio) == pytest.approx(440, abs=5)


WAV_1S = wav_file(tone(1.0, RATE), RATE)


@pytest.mark.parametrize(
    "filename", ["speech.mp3", "speech.flac", "speech.ogg", "notes.txt", "take.bin", "a.tar.gz"]
)
def test_a_wav_under_any_name_is_decoded_as_the_wav_it_is(filename: str) -> None:
    assert len(decode_audio(WAV_1S, DEFAULT, filename)) == OUT_RATE


def test_a_flac_named_ogg_is_decoded_as_flac() -> None:
    flac = tone_file("flac", "flac", RATE)
    assert len(decode_audio(flac, DEFAULT, "a.ogg")) == OUT_RATE


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"hello, this is a text file\n" * 40, "could not be decoded"),
        (tone_file("au", "pcm_mulaw", 8_000), "Sun AU, not a supported type"),
        (tone_file("w64", "pcm_s16le", RATE), "Wave64, not a supported type"),
    ],
    ids=["text", "sun-au", "wave64"],
)
def test_what_is_not_a_supported_container_is_refused_with_the_list(data: bytes, says: str) -> None:
    """ffmpeg plays Sun AU and Wave64; outside the list is outside, whatever the name."""
    with pytest.raises(InvalidAudio) as refused:
        decode_audio(data, DEFAULT, "speech.wav")
    assert says in refused.value.message
    assert SUPPORTED_LIST in refused.value.message
    assert "opus" in SUPPORTED_LIST and "flac, m4a, mp3" in SUPPORTED_LIST
