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

A short file (one window) may leave the VAD's verdict for later
(``plan_windows(defer_short=True)``): its window comes back unchecked, and the
caller asks :func:`has_speech` only when the model's own pass is in doubt. On
speech the model is sure of, that saves the VAD's whole cost (17 ms for a 7-12 s
clip on one core, 3% of a tiny.en request); silence and noise
still come back empty, a pass of the model later.

Stretches that are nearly digital silence (below -60 dBFS) are skipped before the
VAD runs, so an hour of silence costs a fraction of a second rather than the
seconds Silero takes per hour of audio. Each window keeps its offset so that
timestamps stay absolute in the file.

Memory does not grow with the file's length beyond the samples themselves: the
audio may be int16 (half of float32: four hours are 460 MB, not 920 MB), and both
the loudness scan and Silero stream over it a block at a time, converting only
that block to float. faster-whisper's own ``get_speech_timestamps`` converts the
whole file at once and holds the model's input for all of it (about 3 GB for
four hours); the streamed probabilities here are bit-identical to its, since
Silero's state and context carry from one block to the next exactly as between
its own batches. Between blocks a cancellation token is checked, so that work
whose caller has gone stops within a block (32 s of audio, a tenth of a second).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, cast

import numpy as np
import numpy.typing as npt
from faster_whisper.vad import VadOptions, get_vad_model

from models.base import SAMPLE_RATE, AudioArray

FRAME = 512
"""Samples per loudness frame: Silero's own step at 16 kHz."""
CONTEXT = 64
"""Samples of the previous frame Silero sees before each frame (at 16 kHz)."""
QUIET_RMS = 1e-3
"""-60 dBFS: below this no speech is audible, and the VAD is not asked."""
QUIET_MARGIN_SECONDS = 1.0
"""Audio kept around loud stretches, so the VAD sees each onset in context."""
VAD_BLOCK_FRAMES = 1_000
"""Frames Silero is given per call: 32 s of audio, about 0.1 s of one core, 2.3 MB of
input. Small enough that cancellation is prompt, large enough that calls are few."""
LOUDNESS_BLOCK_FRAMES = 1_024
"""Frames measured per step of the loudness scan: 33 s, 2 MB of float32."""
INT16_SCALE = 32768.0
"""int16 to float as faster-whisper's ``decode_audio`` does it (exact: a power of two)."""

Samples = npt.NDArray[np.float32] | npt.NDArray[np.int16]
"""Mono audio at ``SAMPLE_RATE``: float32 in [-1, 1], or int16 as decoded (half the size)."""


class CancelToken(Protocol):
    """Set once the work's caller has gone (a ``threading.Event`` is one)."""

    def is_set(self) -> bool: ...


class Abandoned(Exception):
    """The work stopped early because its cancellation token was set."""


def stop_if_cancelled(cancel: CancelToken | None) -> None:
    """Raise :class:`Abandoned` if ``cancel`` is set: called between chunks of long work."""
    if cancel is not None and cancel.is_set():
        raise Abandoned("cancelled: the caller has gone")


def as_float(samples: Samples) -> AudioArray:
    """``samples`` as float32 in [-1, 1]; float32 input is returned as it is (no copy)."""
    if samples.dtype == np.int16:
        out = samples.astype(np.float32)
        out /= INT16_SCALE
        return out
    return cast(AudioArray, samples)


@dataclass(frozen=True, slots=True)
class Window:
    """A slice ``[start, end)`` of the file, in samples."""

    start: int
    end: int
    checked: bool = True
    """The VAD found speech here; False when only the loudness scan ran (``defer_short``)."""


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
    audio: Samples,
    window_seconds: float = 30.0,
    vad: VadSettings | None = None,
    *,
    defer_short: bool = False,
    cancel: CancelToken | None = None,
) -> list[Window]:
    """Windows covering the speech in ``audio``, in order, none longer than a window.

    With ``vad`` given, windows hold only the speech regions it finds, even in
    short audio; without it, short audio with any speech is one whole window.
    Each cut falls in the longest pause of the second half of the span that fits,
    so that windows end between sentences rather than between words. ``cancel``
    stops the work (:class:`Abandoned`) between blocks of audio.

    ``defer_short``: short audio without ``vad`` that is audible at all is one
    window with ``checked=False``, the VAD not yet asked (:func:`has_speech`).
    """
    limit = int(window_seconds * SAMPLE_RATE)
    if defer_short and vad is None and len(audio) <= limit:
        audible = audible_spans(audio, cancel=cancel)
        return [Window(0, len(audio), checked=False)] if audible else []
    regions = speech_regions(
        audio, vad or DEFAULT_VAD, max_speech_seconds=window_seconds, cancel=cancel
    )
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


def has_speech(audio: Samples, *, cancel: CancelToken | None = None) -> bool:
    """Whether the VAD finds any speech in ``audio``: the check a deferred window skipped."""
    return bool(speech_regions(audio, DEFAULT_VAD, cancel=cancel))


def speech_regions(
    audio: Samples,
    vad: VadSettings,
    *,
    max_speech_seconds: float = 30.0,
    cancel: CancelToken | None = None,
) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges of speech, in order; quiet stretches are skipped.

    Each audible span gets exactly what ``get_speech_timestamps`` would give for it,
    computed a block at a time.
    """
    options = VadOptions(
        threshold=vad.threshold,
        max_speech_duration_s=max_speech_seconds,
        min_silence_duration_ms=vad.min_silence_ms,
        speech_pad_ms=vad.speech_pad_ms,
    )
    regions: list[tuple[int, int]] = []
    for start, end in audible_spans(audio, cancel=cancel):
        probabilities = speech_probabilities(audio[start:end], cancel=cancel)
        found = speech_timestamps(probabilities, end - start, options)
        regions.extend((start + s, start + e) for s, e in found)
    return regions


def speech_probabilities(audio: Samples, *, cancel: CancelToken | None = None) -> AudioArray:
    """Silero's speech probability for every 512-sample frame, as faster-whisper computes it.

    Its ``SileroVADModel`` pads the audio to whole frames (always adding at least one
    sample, so a whole extra frame when the length is a multiple of 512), zeroes
    the last 64 samples of the last frame (a side effect of how it builds the
    context), and feeds each frame with the 64 samples before it (zeros for the
    first), carrying the LSTM state across its batches. The same here, per block.
    """
    frames = len(audio) // FRAME + 1
    probabilities = np.empty(frames, dtype=np.float32)
    model = get_vad_model()
    state = np.zeros((1, 1, 128), dtype=np.float32)
    cell = np.zeros((1, 1, 128), dtype=np.float32)
    context = np.zeros(CONTEXT, dtype=np.float32)
    for first in range(0, frames, VAD_BLOCK_FRAMES):
        stop_if_cancelled(cancel)
        last = min(first + VAD_BLOCK_FRAMES, frames)
        block = np.zeros((last - first) * FRAME, dtype=np.float32)
        samples = as_float(audio[first * FRAME : last * FRAME])
        block[: len(samples)] = samples
        rows = block.reshape(-1, FRAME)
        if last == frames:
            rows[-1, -CONTEXT:] = 0.0
        batch = np.empty((len(rows), CONTEXT + FRAME), dtype=np.float32)
        batch[0, :CONTEXT] = context
        batch[1:, :CONTEXT] = rows[:-1, -CONTEXT:]
        batch[:, CONTEXT:] = rows
        context = rows[-1, -CONTEXT:].copy()
        output, state, cell = model.session.run(None, {"input": batch, "h": state, "c": cell})
        probabilities[first:last] = np.asarray(output, dtype=np.float32).reshape(-1)
    return probabilities


def speech_timestamps(
    probabilities: AudioArray, length: int, options: VadOptions
) -> list[tuple[int, int]]:
    """Speech regions from Silero's probabilities: faster-whisper's ``get_speech_timestamps``
    after its model call, step for step (it takes only whole audio, so it is ported here).
    """
    step = FRAME
    sampling_rate = SAMPLE_RATE
    threshold = options.threshold
    neg_threshold = options.neg_threshold
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)
    min_speech_samples = sampling_rate * options.min_speech_duration_ms / 1000
    speech_pad_samples = sampling_rate * options.speech_pad_ms / 1000
    max_speech_samples = (
        sampling_rate * options.max_speech_duration_s - step - 2 * speech_pad_samples
    )
    min_silence_samples = sampling_rate * options.min_silence_duration_ms / 1000
    min_silence_samples_at_max_speech = sampling_rate * 98 / 1000

    triggered = False
    speeches: list[list[int]] = []
    current: list[int] = []  # [start] while in speech, then [start, end]
    temp_end = 0
    prev_end = next_start = 0
    for i, probability in enumerate(probabilities.tolist()):
        at = step * i
        if probability >= threshold and temp_end:
            temp_end = 0
            if next_start < prev_end:
                next_start = at
        if probability >= threshold and not triggered:
            triggered = True
            current = [at]
            continue
        if triggered and at - current[0] > max_speech_samples:
            if prev_end:
                speeches.append([current[0], prev_end])
                current = []
                if next_start < prev_end:
                    triggered = False
                else:
                    current = [next_start]
                prev_end = next_start = temp_end = 0
            else:
                speeches.append([current[0], at])
                current = []
                prev_end = next_start = temp_end = 0
                triggered = False
                continue
        if probability < neg_threshold and triggered:
            if not temp_end:
                temp_end = at
            if at - temp_end > min_silence_samples_at_max_speech:
                prev_end = temp_end
            if at - temp_end < min_silence_samples:
                continue
            if temp_end - current[0] > min_speech_samples:
                speeches.append([current[0], temp_end])
            current = []
            prev_end = next_start = temp_end = 0
            triggered = False
            continue
    if current and length - current[0] > min_speech_samples:
        speeches.append([current[0], length])

    for i, speech in enumerate(speeches):
        if i == 0:
            speech[0] = int(max(0, speech[0] - speech_pad_samples))
        if i != len(speeches) - 1:
            silence = speeches[i + 1][0] - speech[1]
            if silence < 2 * speech_pad_samples:
                speech[1] += int(silence // 2)
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - silence // 2))
            else:
                speech[1] = int(min(length, speech[1] + speech_pad_samples))
                speeches[i + 1][0] = int(max(0, speeches[i + 1][0] - speech_pad_samples))
        else:
            speech[1] = int(min(length, speech[1] + speech_pad_samples))
    return [(start, end) for start, end in speeches]


def audible_spans(audio: Samples, *, cancel: CancelToken | None = None) -> list[tuple[int, int]]:
    """Sample ranges louder than -60 dBFS somewhere, each with a second of margin."""
    rms = _frame_loudness(audio, cancel)
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


def _frame_loudness(audio: Samples, cancel: CancelToken | None) -> AudioArray:
    """The RMS of every 512-sample frame (the partial last one included), a block at a time."""
    frames = len(audio) // FRAME
    rms = np.empty(frames + 1, dtype=np.float32)
    for first in range(0, frames, LOUDNESS_BLOCK_FRAMES):
        stop_if_cancelled(cancel)
        last = min(first + LOUDNESS_BLOCK_FRAMES, frames)
        blocks = as_float(audio[first * FRAME : last * FRAME]).reshape(-1, FRAME)
        rms[first:last] = np.sqrt(np.einsum("ij,ij->i", blocks, blocks) / FRAME)
    tail = as_float(audio[frames * FRAME :])
    rms[frames] = np.sqrt(np.mean(np.square(tail))) if len(tail) else 0.0
    return rms


def _longest_pause(regions: list[tuple[int, int]], first: int, last: int, not_before: int) -> int:
    """The region after which to cut: the one followed by the longest pause.

    Only regions ending after ``not_before`` are candidates (windows stay long
    enough to batch well); the latest wins a tie.
    """
    candidates = [k for k in range(first, last + 1) if regions[k][1] >= not_before] or [last]
    return max(candidates, key=lambda k: (regions[k + 1][0] - regions[k][1], k))
