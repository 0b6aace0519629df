"""Cutting long audio into windows at pauses."""

from __future__ import annotations

import itertools
import time
import tracemalloc

import numpy as np
import pytest
from faster_whisper.vad import VadOptions, get_speech_timestamps

from models.windowing import (
    FRAME,
    VAD_BLOCK_FRAMES,
    Abandoned,
    VadSettings,
    Window,
    as_float,
    audible_spans,
    has_speech,
    plan_windows,
    speech_probabilities,
    speech_timestamps,
)
from tests.cancel import StopAfter
from tests.models.conftest import to_16k
from tests.speech import SENTENCES, spoken_wav

RATE = 16_000


def _with_pauses(pause_seconds: float) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Two sentences with silence before, between and after; where the speech is."""
    pause = np.zeros(int(pause_seconds * RATE), dtype=np.float32)
    first, second = (to_16k(spoken_wav(text)) for text in SENTENCES[:2])
    audio = np.concatenate([pause, first, pause, second, pause])
    a = len(pause)
    b = a + len(first) + len(pause)
    return audio, [(a, a + len(first)), (b, b + len(second))]


def test_thirty_seconds_or_less_with_speech_is_one_window_of_everything() -> None:
    audio, _ = _with_pauses(4.0)
    assert len(audio) < 30 * RATE
    assert [(w.start, w.end) for w in plan_windows(audio)] == [(0, len(audio))]


def test_short_silence_and_noise_give_no_windows() -> None:
    assert plan_windows(np.zeros(30 * RATE, dtype=np.float32)) == []
    noise = np.random.default_rng(7).normal(0, 0.05, 20 * RATE).astype(np.float32)
    assert plan_windows(noise) == []


def test_vad_chunking_keeps_only_the_speech_even_in_short_audio() -> None:
    audio, speech = _with_pauses(4.0)
    windows = plan_windows(audio, vad=VadSettings(min_silence_ms=500, speech_pad_ms=100))
    assert len(windows) == 1  # both sentences fit one window
    (window,) = windows
    assert window.start > 3 * RATE  # the leading pause is not sent to the model
    assert window.end < len(audio) - 3 * RATE  # nor the trailing one
    assert window.start <= speech[0][0] and window.end >= speech[1][1] - RATE // 10


def test_audible_spans_skip_digital_silence_without_running_the_vad() -> None:
    hour = np.zeros(3600 * RATE, dtype=np.float32)
    hour[1800 * RATE : 1800 * RATE + RATE] = 0.1  # one loud second in the middle
    started = time.monotonic()
    spans = audible_spans(hour)
    assert time.monotonic() - started < 10.0  # the VAD would take far longer over an hour
    assert len(spans) == 1
    start, end = spans[0]
    assert start <= 1800 * RATE and end >= 1801 * RATE
    assert end - start < 4 * RATE  # a second of margin each side, not the hour
    started = time.monotonic()
    assert plan_windows(np.zeros(3600 * RATE, dtype=np.float32)) == []
    assert time.monotonic() - started < 10.0  # the VAD would take far longer over an hour


def test_long_speech_is_cut_in_pauses_into_ordered_windows(long_wav: tuple[bytes, str]) -> None:
    audio = to_16k(long_wav[0])
    assert len(audio) > 60 * RATE
    windows = plan_windows(audio)
    assert len(windows) >= 3
    for window in windows:
        assert 0 < window.end - window.start <= 30 * RATE
    for before, after in itertools.pairwise(windows):
        assert before.end <= after.start  # in order, never overlapping
        gap = audio[before.end : after.start]
        # Cuts fall where nobody speaks: the dropped stretch is (nearly) silent.
        assert gap.size == 0 or float(np.abs(gap).max()) < 0.05
    speech = np.flatnonzero(np.abs(audio) > 0.05)
    assert windows[0].start <= speech[0] and windows[-1].end >= speech[-1]


def test_long_silence_gives_no_windows() -> None:
    assert plan_windows(np.zeros(45 * RATE, dtype=np.float32)) == []


def _speech_minutes(minutes: float) -> np.ndarray:
    """Real speech repeated (every sentence once, half-second pauses) to ``minutes``."""
    once = to_16k(spoken_wav(*SENTENCES, pause_seconds=0.5))
    samples = int(minutes * 60 * RATE)
    return np.tile(once, samples // len(once) + 1)[:samples]


def _as_int16(audio: np.ndarray) -> np.ndarray:
    return np.round(audio * 32767).astype(np.int16)


@pytest.mark.parametrize(
    "vad",
    [
        VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160),
        VadOptions(threshold=0.3, max_speech_duration_s=4, speech_pad_ms=100),
    ],
)
def test_streamed_vad_finds_exactly_what_faster_whisper_finds(
    long_wav: tuple[bytes, str], vad: VadOptions
) -> None:
    audio = as_float(_as_int16(to_16k(long_wav[0])))
    assert len(audio) > 2 * VAD_BLOCK_FRAMES * FRAME  # several blocks, and their seams
    expected = [(r["start"], r["end"]) for r in get_speech_timestamps(audio, vad)]
    assert len(expected) > 5
    assert speech_timestamps(speech_probabilities(audio), len(audio), vad) == expected
    int16 = _as_int16(to_16k(long_wav[0]))  # the same samples, as the server keeps them
    assert speech_timestamps(speech_probabilities(int16), len(int16), vad) == expected


def test_int16_audio_gives_the_windows_of_its_float_twin(long_wav: tuple[bytes, str]) -> None:
    int16 = _as_int16(to_16k(long_wav[0]))
    assert plan_windows(int16) == plan_windows(as_float(int16))
    assert audible_spans(int16) == audible_spans(as_float(int16))


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_vad_memory_does_not_grow_with_the_file(dtype: str) -> None:
    audio = _speech_minutes(5)
    if dtype == "int16":
        audio = _as_int16(audio)
    tracemalloc.start()
    try:
        windows = plan_windows(audio)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(windows) >= 10
    # Five minutes of float32 are 19 MB; the whole-file VAD copied them twice over
    # (43 MB traced). Streamed, the VAD holds a block at a time (four hours alike).
    assert peak < 20 << 20, f"{peak / 1e6:.0f} MB traced"


def test_cancellation_stops_the_vad_at_its_next_look() -> None:
    audio = _as_int16(_speech_minutes(3))
    never = StopAfter(10**9)
    plan_windows(audio, cancel=never)
    assert never.looks >= 180 / 60  # at least one look per minute of audio, VAD included
    token = StopAfter(never.looks - 1)  # set just before the VAD's last block
    with pytest.raises(Abandoned):
        plan_windows(audio, cancel=token)
    assert token.looks == token.after  # stopped at the first look that saw it set
    with pytest.raises(Abandoned):
        plan_windows(audio, cancel=StopAfter(1))


def test_defer_short_leaves_the_vad_to_the_caller() -> None:
    audio, _ = _with_pauses(2.0)
    assert plan_windows(audio, defer_short=True) == [Window(0, len(audio), checked=False)]
    assert has_speech(audio)
    noise = np.random.default_rng(7).normal(0, 0.05, 20 * RATE).astype(np.float32)
    # audible, so the window is planned unchecked; the VAD, once asked, finds no speech
    assert plan_windows(noise, defer_short=True) == [Window(0, len(noise), checked=False)]
    assert not has_speech(noise)
    assert plan_windows(np.zeros(20 * RATE, dtype=np.float32), defer_short=True) == []


def test_defer_short_does_not_apply_to_long_files_or_vad_chunking() -> None:
    audio, _ = _with_pauses(12.0)  # longer than a window: cut at pauses by the VAD
    assert len(audio) > 30 * RATE
    windows = plan_windows(audio, defer_short=True)
    assert windows and all(w.checked for w in windows)
    short, _ = _with_pauses(2.0)
    chunked = plan_windows(short, vad=VadSettings(min_silence_ms=500), defer_short=True)
    assert chunked and all(w.checked for w in chunked)
