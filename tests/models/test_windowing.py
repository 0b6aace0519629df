"""Cutting long audio into windows at pauses."""

from __future__ import annotations

import itertools

import numpy as np

from models.windowing import plan_windows
from tests.models.conftest import to_16k

RATE = 16_000


def test_thirty_seconds_or_less_is_one_window_of_everything() -> None:
    audio = np.zeros(30 * RATE, dtype=np.float32)
    windows = plan_windows(audio)
    assert [(w.start, w.end) for w in windows] == [(0, 30 * RATE)]


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
