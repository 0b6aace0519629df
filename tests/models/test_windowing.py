"""Cutting long audio into windows at pauses."""

from __future__ import annotations

import itertools
import time

import numpy as np

from models.windowing import VadSettings, audible_spans, plan_windows
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
    assert time.monotonic() - started < 2.0
    assert len(spans) == 1
    start, end = spans[0]
    assert start <= 1800 * RATE and end >= 1801 * RATE
    assert end - start < 4 * RATE  # a second of margin each side, not the hour
    started = time.monotonic()
    assert plan_windows(np.zeros(3600 * RATE, dtype=np.float32)) == []
    assert time.monotonic() - started < 2.0


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
