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

    @property
    def offset(self) -> float:
        return self.start / SAMPLE_RATE


def plan_windows(audio: AudioArray, window_seconds: float = 30.0) -> list[Window]:
    """Windows covering the speech in ``audio``, in order, none longer than a window."""
    limit = int(window_seconds * SAMPLE_RATE)
    if len(audio) <= limit:
        return [Window(0, len(audio))]
    options = VadOptions(max_speech_duration_s=window_seconds, min_silence_duration_ms=160)
    speech = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
    windows: list[Window] = []
    for region in speech:
        start, end = int(region["start"]), int(region["end"])
        if windows and end - windows[-1].start <= limit:
            windows[-1] = Window(windows[-1].start, end)
        else:
            windows.append(Window(start, min(end, start + limit)))
    return windows
