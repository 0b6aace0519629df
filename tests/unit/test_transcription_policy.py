"""The transcription policies that need no model: fallback, ordering, rendering helpers."""

from __future__ import annotations

import dataclasses

import pytest

from models.base import Segment, WindowTranscript, Word, join_text
from models.windowing import VadSettings
from server.formats import timestamp
from server.protocol import ServerVad
from server.routes.stt import vad_settings
from server.transcription import best_of_failed, in_order, needs_fallback


def _window(**measures: float | bool) -> WindowTranscript:
    segment = Segment(0.0, 1.0, " hello", (1,), 0, 0.0, -0.2, 1.2, 0.1)
    return dataclasses.replace(WindowTranscript("en", [segment]), **measures)  # type: ignore[arg-type]


def test_whispers_fallback_rule() -> None:
    assert not needs_fallback(_window(avg_logprob=-0.3, compression_ratio=1.5))
    assert needs_fallback(_window(avg_logprob=-0.3, compression_ratio=2.5))  # a loop
    assert needs_fallback(_window(avg_logprob=-1.2, compression_ratio=1.5))  # unsure
    assert not needs_fallback(_window(avg_logprob=-1.2, compression_ratio=3.0, silent=True))
    assert not needs_fallback(dataclasses.replace(_window(avg_logprob=-5.0), segments=[]))


def test_the_best_failed_try_prefers_one_that_does_not_loop() -> None:
    looping_but_sure = _window(avg_logprob=-0.1, compression_ratio=3.0, temperature=0.0)
    unsure = _window(avg_logprob=-1.5, compression_ratio=1.4, temperature=0.4)
    less_unsure = _window(avg_logprob=-1.1, compression_ratio=1.6, temperature=0.6)
    assert best_of_failed([looping_but_sure, unsure, less_unsure]) is less_unsure
    # All loop: the most confident loop is returned as it is...
    loops = [_window(avg_logprob=-x, compression_ratio=3.0, no_speech_prob=0.2) for x in (1, 0.5)]
    assert best_of_failed(loops) is loops[1]
    # ...unless the model also says there is probably no speech: the repetition guard.
    guarded = best_of_failed([_window(avg_logprob=-0.5, compression_ratio=9.0, no_speech_prob=0.8)])
    assert guarded.segments == [] and guarded.silent


def _segment(start: float, end: float, words: tuple[Word, ...] = ()) -> Segment:
    return Segment(start, end, " x", (1,), 0, 0.0, -0.1, 1.0, 0.0, words=words)


def test_in_order_clamps_times_never_reorders() -> None:
    words = (Word(" a", 4.9, 5.2, 0.9), Word(" b", 5.1, 9.0, 0.9))
    ordered = in_order([_segment(0.0, 5.0), _segment(4.8, 7.5, words), _segment(7.0, 12.0)], 10.0)
    assert [(s.start, s.end) for s in ordered] == [(0.0, 5.0), (5.0, 7.5), (7.5, 10.0)]
    assert [(w.start, w.end) for w in ordered[1].words] == [(5.0, 5.2), (5.2, 7.5)]
    untouched = [_segment(0.0, 1.0), _segment(1.0, 2.0)]
    assert in_order(untouched, 3.0) == untouched


def test_text_is_joined_by_single_spaces_without_empty_segments() -> None:
    segments = [_segment(0, 1), dataclasses.replace(_segment(1, 2), text="  "), _segment(2, 3)]
    assert join_text(segments) == "x x"


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (3.6405, "00:00:03,640", "00:00:03.640"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3725.25, "01:02:05,250", "01:02:05.250"),
        (360000.0, "100:00:00,000", "100:00:00.000"),
    ],
)
def test_subtitle_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert timestamp(seconds, ",") == srt and timestamp(seconds, ".") == vtt


def test_chunking_strategy_maps_onto_the_vad() -> None:
    assert vad_settings(None) is None
    assert vad_settings("auto") == VadSettings(threshold=0.5, min_silence_ms=200, speech_pad_ms=300)
    custom = ServerVad(
        type="server_vad", threshold=0.7, prefix_padding_ms=120, silence_duration_ms=900
    )
    assert vad_settings(custom) == VadSettings(threshold=0.7, min_silence_ms=900, speech_pad_ms=120)
