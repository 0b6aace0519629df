"""Cut long audio into windows of at most 30 seconds, at pauses.

Whisper sees 30 seconds at a time. A longer file is cut where Silero VAD (shipped
inside faster-whisper) finds silence, so that no word is split across windows;
stretches with no speech at all are not sent to the model. Each window keeps its
offset so that timestamps stay absolute in the file. Audio of 30 seconds or less
is one window, exactly as faster-whisper would decode it.
"""

from __future__ import annotations

from dataclasses import dataclass

from faster_whisper.vad import VadOptions, get_speech_timestamps

from models.base import SAMPLE_RATE, AudioArray


@dataclass(frozen=True, slots=True)
class Window:
    """A slice ``[start, end)`` of the file, in samples."""

    start: int
    end: int


def plan_windows(audio: AudioArray, window_seconds: float = 30.0) -> list[Window]:
    """Windows covering the speech in ``audio``, in order, none longer than a window.

    Each cut falls in the longest pause of the second half of the span that fits,
    so that windows end between sentences rather than between words.
    """
    limit = int(window_seconds * SAMPLE_RATE)
    if len(audio) <= limit:
        return [Window(0, len(audio))]
    options = VadOptions(max_speech_duration_s=window_seconds, min_silence_duration_ms=160)
    regions = [
        (int(r["start"]), int(r["end"]))
        for r in get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    ]
    windows: list[Window] = []
    first = 0
    while first < len(regions):
        start = regions[first][0]
        last = first
        while last + 1 < len(regions) and regions[last + 1][1] - start <= limit:
            last += 1
        if last + 1 < len(regions):
            last = _longest_pause(regions, first, last, start + limit // 2)
        windows.append(Window(start, min(regions[last][1], start + limit)))
        first = last + 1
    return windows


def _longest_pause(regions: list[tuple[int, int]], first: int, last: int, not_before: int) -> int:
    """The region after which to cut: the one followed by the longest pause.

    Only regions ending after ``not_before`` are candidates (windows stay long
    enough to batch well); the latest wins a tie.
    """
    candidates = [k for k in range(first, last + 1) if regions[k][1] >= not_before] or [last]
    return max(candidates, key=lambda k: (regions[k + 1][0] - regions[k][1], k))
