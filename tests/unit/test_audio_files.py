"""Valid files ffmpeg plays that were refused: joined MP3s, a short sound track on a long video.

Each file is made here with PyAV: MP3s as a podcast tool writes them (an ID3 tag,
then a Xing frame, then the audio), joined with ``cat``; an MP4 whose video runs
ten hours (two tiny frames ten hours apart) and whose audio runs three seconds.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest

from server.audio import AudioLimits, corrupt_allowance, decode_audio
from server.errors import InvalidAudio
from tests.unit.test_audio_limits import OUT_RATE, encode, peak_hz, tone

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
