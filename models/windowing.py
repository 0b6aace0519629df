"""Find the speech in a file and cut it into windows of at most 30 seconds, at pauses.

Whisper sees 30 seconds at a time. Silero VAD (shipped inside faster-whisper)
finds where people speak:

- audio with no speech at all sends nothing to the model, which is how silence
  and noise come back as empty text rather than as Whisper's favourite
  hallucinations ("Thank you.");
- a longer file is cut where the VAD finds a pause, so that no word is split
  across windows, and stretches without speech are skipped;
- audio of 30 seconds or less that holds speech is one window, exactly as
  faster-whisper would decode it, unless the client asked for VAD chunking.

Stretches that are nearly digital silence (below -60 dBFS) are skipped before the
VAD runs, so an hour of silence costs a fraction of a second rather than the
seconds Silero takes per hour of audio. Each window keeps its offset so that
timestamps stay absolute in the file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from models.base import SAMPLE_RATE, AudioArray

FRAME = 512
"""Samples per loudness frame: Silero's own step at 16 kHz."""
QUIET_RMS = 1e-3
"""-60 dBFS: below this no speech is audible, and the VAD is not asked."""
QUIET_MARGIN_SECONDS = 1.0
"""Audio kept around loud stretches, so the VAD sees each onset in context."""


@dataclass(frozen=True, slots=True)
class Window:
    """A slice ``[start, end)`` of the file, in samples."""

    start: int
    end: int


@dataclass(frozen=True, slots=True)
class VadSettings:
    """How speech is told from silence (OpenAI's ``server_vad`` parameters map here)."""

    threshold: float = 0.5
    """Speech probability above which a frame counts as speech."""
    min_silence_ms: int = 160
    """A pause must last this long to end a speech region."""
    speech_pad_ms: int = 400
    """Audio kept before and after each speech region."""


DEFAULT_VAD = VadSettings()


def plan_windows(
    audio: AudioArray,
    window_seconds: float = 30.0,
    vad: VadSettings | None = None,
) -> list[Window]:
    """Windows covering the speech in ``audio``, in order, none longer than a window.

    With ``vad`` given, windows hold only the speech regions it finds, even in
    short audio; without it, short audio with any speech is one whole window.
    Each cut falls in the longest pause of the second half of the span that fits,
    so that windows end between sentences rather than between words.
    """
    limit = int(window_seconds * SAMPLE_RATE)
    regions = speech_regions(audio, vad or DEFAULT_VAD, max_speech_seconds=window_seconds)
    if not regions:
        return []
    if vad is None and len(audio) <= limit:
        return [Window(0, len(audio))]
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


def speech_regions(
    audio: AudioArray, vad: VadSettings, *, max_speech_seconds: float = 30.0
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of speech, in order; quiet stretches are skipped."""
    options = VadOptions(
        threshold=vad.threshold,
        max_speech_duration_s=max_speech_seconds,
        min_silence_duration_ms=vad.min_silence_ms,
        speech_pad_ms=vad.speech_pad_ms,
    )
    regions: list[tuple[int, int]] = []
    for start, end in audible_spans(audio):
        found = get_speech_timestamps(audio[start:end], options, sampling_rate=SAMPLE_RATE)
        regions.extend((start + int(r["start"]), start + int(r["end"])) for r in found)
    return regions


def audible_spans(audio: AudioArray) -> list[tuple[int, int]]:
    """Sample ranges louder than -60 dBFS somewhere, each with a second of margin."""
    frames = len(audio) // FRAME
    rms = np.empty(frames + 1, dtype=np.float32)
    if frames:
        blocks = audio[: frames * FRAME].reshape(frames, FRAME)
        rms[:frames] = np.sqrt(np.einsum("ij,ij->i", blocks, blocks) / FRAME)
    tail = audio[frames * FRAME :]
    rms[frames] = np.sqrt(np.mean(np.square(tail))) if len(tail) else 0.0
    loud = np.flatnonzero(rms > QUIET_RMS)
    if not len(loud):
        return []
    margin = int(QUIET_MARGIN_SECONDS * SAMPLE_RATE / FRAME) + 1
    breaks = np.flatnonzero(np.diff(loud) > 2 * margin)
    starts = np.concatenate(([loud[0]], loud[breaks + 1]))
    ends = np.concatenate((loud[breaks], [loud[-1]]))
    return [
        (max(0, int(s - margin) * FRAME), min(len(audio), int(e + 1 + margin) * FRAME))
        for s, e in zip(starts, ends, strict=True)
    ]


def _longest_pause(regions: list[tuple[int, int]], first: int, last: int, not_before: int) -> int:
    """The region after which to cut: the one followed by the longest pause.

    Only regions ending after ``not_before`` are candidates (windows stay long
    enough to batch well); the latest wins a tie.
    """
    candidates = [k for k in range(first, last + 1) if regions[k][1] >= not_before] or [last]
    return max(candidates, key=lambda k: (regions[k + 1][0] - regions[k][1], k))
