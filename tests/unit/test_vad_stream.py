"""Silero VAD over a live stream, and the server_vad turn rule on its probabilities.

The stream must score real speech exactly as the whole-file VAD does, however the
audio is cut into calls; the turn rule is checked on made-up probabilities (where
each edge can be placed on a chosen frame) and then on two spoken sentences.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import cache
from itertools import pairwise

import numpy as np
import numpy.typing as npt
import pytest

from models.vad_stream import (
    SileroStream,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    TurnSettings,
)
from models.windowing import FRAME, speech_probabilities
from server.audio import AudioLimits, decode_pcm16
from tests.realtime import pieces
from tests.speech import SENTENCES, spoken_wav, timed_speech

RATE = 16_000
LIMITS = AudioLimits(3600, 8 << 30)
UNEVEN = (320, 1000, 7, 513, 4096, 1, 511, 2048, 100)
"""Call sizes in samples: below, at and across the 512-sample frame."""


@cache
def speech() -> npt.NDArray[np.int16]:
    """Two spoken sentences at 16 kHz, decoded as the file endpoints decode them."""
    return decode_pcm16(spoken_wav(SENTENCES[0], SENTENCES[1]), LIMITS)


def stream(samples: npt.NDArray[np.int16], sizes: Sequence[int]) -> npt.NDArray[np.float32]:
    vad = SileroStream()
    parts = [vad.feed(chunk) for chunk in pieces(samples, sizes)]
    assert vad.frames == len(samples) // FRAME
    assert vad.pending == len(samples) % FRAME
    return np.concatenate(parts)


@pytest.mark.parametrize("sizes", [UNEVEN, (320,), (1600,), (FRAME,), (100_000,)])
def test_streamed_probabilities_equal_the_whole_stream(sizes: Sequence[int]) -> None:
    audio = speech()
    whole = speech_probabilities(audio)
    streamed = stream(audio, sizes)
    # The whole-stream function pads a last (partial) frame and zeroes its end; the
    # stream has not scored that frame yet, and every frame it has scored is identical.
    assert len(streamed) == len(whole) - 1
    np.testing.assert_array_equal(streamed, whole[:-1])
    assert 0.9 < streamed.max() <= 1.0 and streamed.min() < 0.1  # speech and pauses both


def test_a_stream_of_whole_frames_matches_all_but_the_padding_frame() -> None:
    audio = speech()[: len(speech()) // FRAME * FRAME]
    whole = speech_probabilities(audio)  # one extra all-padding frame at the end
    np.testing.assert_array_equal(stream(audio, UNEVEN), whole[:-1])


def test_float_input_is_scored_as_its_int16_original() -> None:
    audio = speech()[: 20 * FRAME]
    vad = SileroStream()
    as_float = np.concatenate(
        [vad.feed(c.astype(np.float32) / 32768.0) for c in pieces(audio, UNEVEN)]
    )
    np.testing.assert_array_equal(as_float, stream(audio, UNEVEN))


def test_a_feed_that_completes_no_frame_scores_nothing() -> None:
    vad = SileroStream()
    for size in (7, 300, 204):
        assert vad.feed(np.ones(size, dtype=np.int16)).shape == (0,)
    assert (vad.frames, vad.pending) == (0, 511)
    assert vad.feed(np.ones(1, dtype=np.int16)).shape == (1,)
    assert (vad.frames, vad.pending) == (1, 0)
    assert vad.feed(np.zeros(0, dtype=np.int16)).shape == (0,)


def test_streams_keep_their_own_state_interleaved_and_in_threads() -> None:
    one = speech()
    other = decode_pcm16(spoken_wav(SENTENCES[2]), LIMITS)
    expected = (speech_probabilities(one)[:-1], speech_probabilities(other)[:-1])

    first, second = SileroStream(), SileroStream()
    out: tuple[list[npt.NDArray[np.float32]], list[npt.NDArray[np.float32]]] = ([], [])
    for a, b in zip(pieces(one, (320,)), pieces(other, (1000, 7)), strict=False):
        out[0].append(first.feed(a))
        out[1].append(second.feed(b))
    n = len(np.concatenate(out[1]))
    np.testing.assert_array_equal(np.concatenate(out[1]), expected[1][:n])
    np.testing.assert_array_equal(np.concatenate(out[0]), expected[0][: first.frames])

    results: dict[int, npt.NDArray[np.float32]] = {}

    def run(index: int, audio: npt.NDArray[np.int16]) -> None:
        results[index] = stream(audio, (320,))

    threads = [
        threading.Thread(target=run, args=(k, audio)) for k, audio in enumerate((one, other))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    np.testing.assert_array_equal(results[0], expected[0])
    np.testing.assert_array_equal(results[1], expected[1])


# The turn rule, on made-up probabilities.

SPEECH, PAUSE, MIDDLE = 0.9, 0.05, 0.45
"""A frame of speech, of silence, and one between the neg threshold (0.35) and 0.5."""


def probabilities(*values: float) -> npt.NDArray[np.float32]:
    return np.array(values, dtype=np.float32)


def run_rule(
    values: Sequence[float], settings: TurnSettings | None = None, split: Sequence[int] = ()
) -> list[SpeechStarted | SpeechStopped]:
    """Events for ``values``, pushed in pieces cut at the ``split`` frame indices."""
    detector = TurnDetector(settings or TurnSettings())
    events: list[SpeechStarted | SpeechStopped] = []
    edges = [0, *split, len(values)]
    for start, end in pairwise(edges):
        events += detector.push(probabilities(*values[start:end]), start)
    return events


def test_speech_starts_at_the_first_frame_at_the_threshold() -> None:
    detector = TurnDetector(TurnSettings())
    assert not detector.speaking
    events = detector.push(probabilities(0.1, 0.49, 0.5, 0.9), 10)
    assert events == [SpeechStarted(12 * FRAME)]  # 0.5 itself is speech
    assert detector.speaking


def test_a_turn_stops_when_the_silence_reaches_its_duration() -> None:
    # 500 ms is 15.6 frames: the 16th silent frame (512 ms) ends the turn, at its end.
    assert TurnSettings().silence_frames == 16
    values = [PAUSE, SPEECH, SPEECH, *[PAUSE] * 15]
    assert run_rule(values) == [SpeechStarted(FRAME)]
    assert run_rule([*values, PAUSE, PAUSE]) == [SpeechStarted(FRAME), SpeechStopped(19 * FRAME)]
    # Exactly 512 ms is still 16 frames; one millisecond more needs a 17th.
    exact = TurnSettings(silence_duration_ms=512)
    longer = TurnSettings(silence_duration_ms=513)
    assert run_rule([SPEECH, *[PAUSE] * 16], exact) == [SpeechStarted(0), SpeechStopped(17 * FRAME)]
    assert run_rule([SPEECH, *[PAUSE] * 16], longer) == [SpeechStarted(0)]
    assert run_rule([SPEECH, *[PAUSE] * 17], longer)[-1] == SpeechStopped(18 * FRAME)
    assert run_rule([SPEECH, PAUSE], TurnSettings(silence_duration_ms=32))[-1] == SpeechStopped(
        2 * FRAME
    )


def test_a_speech_frame_resets_the_silence() -> None:
    values = [SPEECH, *[PAUSE] * 15, SPEECH, *[PAUSE] * 15]
    assert run_rule(values) == [SpeechStarted(0)]
    assert run_rule([*values, PAUSE]) == [SpeechStarted(0), SpeechStopped(33 * FRAME)]


def test_frames_between_the_thresholds_neither_begin_nor_break_the_silence() -> None:
    # Hysteresis as faster-whisper's: 0.45 is not silence (the neg threshold is 0.35) ...
    assert TurnSettings().neg_threshold == pytest.approx(0.35)
    assert run_rule([SPEECH, *[MIDDLE] * 40]) == [SpeechStarted(0)]
    # ... but once silence has begun it counts as silence until a frame reaches 0.5.
    assert run_rule([SPEECH, *[MIDDLE] * 5, PAUSE, *[MIDDLE] * 15]) == [
        SpeechStarted(0),
        SpeechStopped(22 * FRAME),
    ]
    # Just below the neg threshold is silence; just below the threshold is not speech.
    assert run_rule([SPEECH, *[0.349] * 16]) == [SpeechStarted(0), SpeechStopped(17 * FRAME)]
    assert run_rule([0.499] * 20) == []
    # A low threshold keeps faster-whisper's floor of 0.01 for the neg threshold.
    low = TurnSettings(threshold=0.1)
    assert low.neg_threshold == 0.01
    assert run_rule([0.1, *[0.02] * 40], low) == [SpeechStarted(0)]
    assert run_rule([0.1, *[0.009] * 16], low) == [SpeechStarted(0), SpeechStopped(17 * FRAME)]


def test_events_do_not_depend_on_how_frames_are_pushed() -> None:
    values = [PAUSE] * 3 + ([SPEECH] * 5 + [MIDDLE, PAUSE] * 9) * 3 + [PAUSE] * 20
    whole = run_rule(values)
    assert len(whole) == 6
    assert run_rule(values, split=range(1, len(values))) == whole
    assert run_rule(values, split=(4, 5, 40, 77)) == whole


def test_reset_forgets_the_turn() -> None:
    detector = TurnDetector(TurnSettings())
    assert detector.push(probabilities(SPEECH, *[PAUSE] * 10), 0) == [SpeechStarted(0)]
    detector.reset()
    assert not detector.speaking
    assert detector.push(probabilities(*[PAUSE] * 10), 11) == []  # no stop without a turn
    assert detector.push(probabilities(SPEECH), 21) == [SpeechStarted(21 * FRAME)]


def test_two_spoken_sentences_give_two_turns_near_their_times() -> None:
    settings = TurnSettings()
    wav, times = timed_speech(SENTENCES[0], SENTENCES[1], pause_seconds=1.0, lead_seconds=0.5)
    audio = np.concatenate([decode_pcm16(wav, LIMITS), np.zeros(RATE, dtype=np.int16)])
    vad, detector = SileroStream(), TurnDetector(settings)
    events: list[SpeechStarted | SpeechStopped] = []
    for chunk in pieces(audio, (320,)):  # 20 ms, as a client sends it
        first = vad.frames
        events += detector.push(vad.feed(chunk), first)
    assert [type(event) for event in events] == [SpeechStarted, SpeechStopped] * 2
    silence = settings.silence_duration_ms / 1000
    for (start, end), began, stopped in zip(times, events[::2], events[1::2], strict=True):
        assert began.sample / RATE == pytest.approx(start, abs=0.15)
        assert end <= stopped.sample / RATE <= end + silence + 0.2
    assert not detector.speaking
