"""``speed`` over real HTTP: linear in length, pitch kept, and still words Whisper reads.

Before, ``alloy`` spoke a text in 4.20 s at 1.0, 2.53 s at 2.0 and 2.00 s at 4.0
(promised: 1.05 s), and Whisper lost words at 2.0 and 4.0. Now every response lasts
(length at 1.0) / speed, pauses included, within 10%.

Intelligibility is judged by the same server's whisper-1 (Whisper tiny.en): at most
10% of the words lost at 0.5-2.0, 30% at 0.25. Not at 4.0: no pitch-keeping stretch we
tried (see :mod:`models.tempo`) gives speech 4 times as fast that tiny.en reads, and
a model's own pace reads better there only by making 1.75x the promised length. At 4.0
only the length is checked.

Pitch is compared at 0.5 and 2.0, where a change of speed that also changed the pitch
(plain resampling) moves the estimate by about an octave on both voices. At 4.0 the
estimate jumps an octave on many of joe's few voiced frames (while a steady 90 Hz tone
keeps its pitch through the same stretch exactly), and at 0.25 it moved 6-8%: too
close to the tolerance to be a robust check.

Each distinct embedded voice (hibari's heart behind ``alloy``, Piper's joe behind
``onyx``) is checked at every speed; the other four names at the extremes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import openai
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from tests.conftest import LiveServer
from tests.speech import JAPANESE, SENTENCES, decode_native, word_error_rate

TEXT = f"{SENTENCES[1]} {SENTENCES[11]}"
"""Two sentences (23 words) that tiny.en wrote back whole at 0.5-2.0 from both voices
(1 word wrong from onyx at 0.25). With the model's own pace it lost 4 of them from
alloy at 2.0 (4 of the first 15, as the issue reported)."""
SPEEDS = (0.25, 0.5, 1.5, 2.0, 4.0)
DISTINCT = ("alloy", "onyx")
OTHERS = ("echo", "fable", "nova", "shimmer")
MAX_WER = {0.25: 0.3, 0.5: 0.1, 1.0: 0.1, 1.5: 0.1, 2.0: 0.1}
LENGTH_TOLERANCE = 0.10
PITCH_TOLERANCE = 0.10


@pytest.fixture(scope="module")
def spoken() -> dict[tuple[str, float], bytes]:
    """WAV responses by (voice, speed), fetched once each."""
    return {}


def wav(
    client: openai.OpenAI, cache: dict[tuple[str, float], bytes], voice: str, speed: float
) -> bytes:
    if (voice, speed) not in cache:
        response = client.audio.speech.create(
            model="tts-1", voice=voice, input=TEXT, response_format="wav", speed=speed
        )
        cache[voice, speed] = response.read()
    return cache[voice, speed]


def median_pitch(samples: npt.NDArray[np.float32], rate: int) -> float:
    """The median fundamental frequency, in Hz, of the clearly voiced 40 ms frames.

    Per frame, the autocorrelation divided by its overlap (the plain sum favours short
    lags, an octave up) and by the energy; a periodic frame peaks at every multiple of
    its period, so its period is the shortest lag between 50 and 800 Hz (a voice played twice as
    fast, pitch and all, stays in range) whose peak is
    within 10% of the highest (the highest alone is often twice the period, an octave
    down). Frames whose highest peak is under 0.5 are not voiced.
    """
    frame, hop = int(0.04 * rate), int(0.01 * rate)
    frames = sliding_window_view(samples.astype(np.float64), frame)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    energy = np.sqrt(np.mean(frames**2, axis=1))
    loud = frames[energy > 0.2 * energy.max()]
    power = np.abs(np.fft.rfft(loud, n=2 * frame, axis=1)) ** 2
    overlap = frame - np.arange(frame)
    correlation = np.fft.irfft(power, axis=1)[:, :frame] / overlap
    correlation /= correlation[:, :1]
    low, high = rate // 800, rate // 50
    inner = correlation[:, low : high + 1]
    is_peak = (inner[:, 1:-1] > inner[:, :-2]) & (inner[:, 1:-1] >= inner[:, 2:])
    peaks = np.where(is_peak, inner[:, 1:-1], -np.inf)
    highest = peaks.max(axis=1)
    lags = low + 1 + np.argmax(peaks >= 0.9 * highest[:, None], axis=1)
    voiced = lags[highest > 0.5]
    assert len(voiced) > 20, "too few voiced frames to judge the pitch"
    return float(np.median(rate / voiced))


LENGTH_CASES = [(voice, speed) for voice in DISTINCT for speed in SPEEDS] + [
    (voice, speed) for voice in OTHERS for speed in (0.25, 4.0)
]


PITCH_SPEEDS = (0.5, 2.0)


@pytest.mark.parametrize(("voice", "speed"), LENGTH_CASES)
def test_speed_changes_the_length_to_1_over_speed_and_keeps_the_pitch(
    client: openai.OpenAI, spoken: dict[tuple[str, float], bytes], voice: str, speed: float
) -> None:
    normal, rate = decode_native(wav(client, spoken, voice, 1.0))[:2]
    samples = decode_native(wav(client, spoken, voice, speed))[0]
    ratio = len(samples) * speed / len(normal)
    assert abs(ratio - 1) <= LENGTH_TOLERANCE, (voice, speed, len(normal) / rate, ratio)
    if voice in DISTINCT and speed in PITCH_SPEEDS:
        before, after = median_pitch(normal, rate), median_pitch(samples, rate)
        assert abs(after / before - 1) <= PITCH_TOLERANCE, (voice, speed, before, after)


@pytest.mark.parametrize("speed", sorted(MAX_WER))
@pytest.mark.parametrize("voice", DISTINCT)
def test_whisper_reads_the_words_back(
    client: openai.OpenAI, spoken: dict[tuple[str, float], bytes], voice: str, speed: float
) -> None:
    audio = wav(client, spoken, voice, speed)
    text = client.audio.transcriptions.create(model="whisper-1", file=("speech.wav", audio)).text
    wer = word_error_rate([(TEXT, text)])
    assert wer is not None and wer <= MAX_WER[speed], (voice, speed, wer, text)


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
def test_a_voice_that_cannot_read_the_input_is_a_400_not_an_empty_200(
    client: openai.OpenAI, server: LiveServer, stream_format: Literal["audio", "sse"]
) -> None:
    """hibari's English G2P gives nothing for Japanese script: the client learns so
    from the status, before any byte of a (silent) body."""
    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input=JAPANESE,
            response_format="mp3",
            stream_format=stream_format,
        )
    assert refused.value.param == "input"
    assert "alloy" in refused.value.message and "no audio" in refused.value.message
    # Once any sentence speaks, the silent ones are skipped and the answer is audio.
    with server.http() as http:
        response = http.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "alloy",
                "input": f"{JAPANESE} {SENTENCES[11]}",
                "response_format": "wav",
                "stream_format": "audio",
            },
        )
    assert response.status_code == 200, response.text
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("speech.wav", response.content)
    ).text
    assert word_error_rate([(SENTENCES[11], text)]) == 0.0, text
