"""Silero VAD over a live stream, and OpenAI's ``server_vad`` turn rule on top of it.

A realtime session receives audio a few tens of milliseconds at a time and must say
when a speaker starts and stops, long before the stream ends. Two parts, kept apart
so that the rule can be tested without the model:

- :class:`SileroStream` scores each 512-sample frame (32 ms at 16 kHz) as soon as
  the audio completes it. Silero's LSTM state and its 64 samples of context carry
  from one call to the next, so the probabilities are the ones
  :func:`models.windowing.speech_probabilities` gives over the whole stream at once:
  the live turns agree with what the file endpoints would find in the same audio.
- :class:`TurnDetector` is pure Python over those probabilities: where speech starts,
  and where enough silence has followed it to end the turn.

No asyncio and no server imports: the session decides where this runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from faster_whisper.vad import get_vad_model

from models.windowing import CONTEXT, FRAME, Samples, as_float

STATE_SHAPE = (1, 1, 128)
"""Silero v6's LSTM state (``h`` and ``c``) for one stream."""
SAMPLES_PER_MS = 16
"""16 kHz: samples per millisecond, how settings in milliseconds become samples."""
NEG_THRESHOLD_GAP = 0.15
"""faster-whisper's default: silence is a probability this far below the threshold."""
MIN_NEG_THRESHOLD = 0.01


class SileroStream:
    """Silero VAD over a live stream: its LSTM state and 64-sample context carry from one
    call to the next, so probabilities equal models.windowing.speech_probabilities over the
    whole stream (frame for frame, up to the last-frame quirk that function documents).

    That function (like faster-whisper) pads the end of the audio and zeroes the last
    64 samples of its last frame; a stream has no last frame, so only that one differs.
    Each :meth:`feed` runs the model once over all the frames it completes (one onnx
    call has a fixed cost of tens of microseconds, so batching what is there matters
    more than the frame count), and none at all when no frame is completed.
    """

    def __init__(self) -> None:
        self._model = get_vad_model()
        self._state = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._cell = np.zeros(STATE_SHAPE, dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames = 0

    def feed(self, samples: Samples) -> npt.NDArray[np.float32]:
        """Probabilities of the 512-sample frames (16 kHz) these samples complete; the rest
        waits for the next call. Thread-safe across instances (one shared onnx session:
        onnxruntime's ``run`` may be called from several threads at once); one instance
        must not be fed from two threads at once.

        ``samples`` are int16 (converted as :func:`models.windowing.as_float` does) or
        float32 in [-1, 1].
        """
        incoming = as_float(samples)
        if len(self._pending):
            incoming = np.concatenate((self._pending, incoming))
        count = len(incoming) // FRAME
        if not count:
            self._pending = incoming.copy() if incoming is samples else incoming
            return np.zeros(0, dtype=np.float32)
        rows = incoming[: count * FRAME].reshape(count, FRAME)
        batch = np.empty((count, CONTEXT + FRAME), dtype=np.float32)
        batch[0, :CONTEXT] = self._context
        batch[1:, :CONTEXT] = rows[:-1, -CONTEXT:]
        batch[:, CONTEXT:] = rows
        output, self._state, self._cell = self._model.session.run(
            None, {"input": batch, "h": self._state, "c": self._cell}
        )
        self._context = rows[-1, -CONTEXT:].copy()
        self._pending = incoming[count * FRAME :].copy()
        self._frames += count
        return np.asarray(output, dtype=np.float32).reshape(-1)

    @property
    def frames(self) -> int:
        """Frames scored so far: the next :meth:`feed`'s first frame has this index."""
        return self._frames

    @property
    def pending(self) -> int:
        """Samples received that do not yet complete a frame (fewer than 512)."""
        return len(self._pending)


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """OpenAI's ``server_vad`` parameters (its defaults)."""

    threshold: float = 0.5
    """Speech probability at or above which a frame is speech."""
    prefix_padding_ms: int = 300
    """Audio kept before the speech start (applied by the session, not here)."""
    silence_duration_ms: int = 500
    """Silence that ends a turn."""

    @property
    def neg_threshold(self) -> float:
        """Below this a frame is silence: faster-whisper's ``max(threshold - 0.15, 0.01)``.

        The gap between the two thresholds is hysteresis: a wavering probability in
        the middle of a word neither starts the silence nor, once silence has begun,
        ends it.
        """
        return max(self.threshold - NEG_THRESHOLD_GAP, MIN_NEG_THRESHOLD)

    @property
    def silence_frames(self) -> int:
        """Silent frames that end a turn: ``silence_duration_ms`` rounded up to whole
        32 ms frames (500 ms: 16 frames, 512 ms), since a turn can only end at a
        frame's end."""
        samples = self.silence_duration_ms * SAMPLES_PER_MS
        return max(1, -(-samples // FRAME))


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at ``sample`` (a frame start, 16 kHz samples from the stream start,
    without the prefix padding)."""

    sample: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The turn ended at ``sample``: the end of the frame at which the silence reached
    ``silence_duration_ms``. As OpenAI's ``audio_end_ms``, it includes that silence."""

    sample: int


TurnEvent = SpeechStarted | SpeechStopped


class TurnDetector:
    """OpenAI's server_vad rule on Silero probabilities: speech starts at the first frame
    >= threshold; it stops once frames < threshold - 0.15 (neg threshold, as faster-whisper)
    have lasted silence_duration_ms; a frame >= threshold in between resets the silence.

    As in faster-whisper's ``get_speech_timestamps``, silence begins at the first frame
    below the neg threshold and then runs, frame by frame, until a frame at or above the
    threshold; frames in between the two thresholds neither begin it nor interrupt it.
    The silence is counted in whole frames (32 ms), so a turn ends at the end of the
    ``TurnSettings.silence_frames``-th frame of silence.
    """

    def __init__(self, settings: TurnSettings) -> None:
        self._threshold = settings.threshold
        self._neg_threshold = settings.neg_threshold
        self._silence_frames = settings.silence_frames
        self._speaking = False
        self._silence = 0  # frames of silence so far in the current turn; 0: none begun

    def push(
        self, probabilities: npt.NDArray[np.float32], first_frame: int
    ) -> list[SpeechStarted | SpeechStopped]:
        """The turn events these frames give, in order; ``first_frame`` is the index of
        ``probabilities[0]`` in the stream (:attr:`SileroStream.frames` before the feed)."""
        events: list[SpeechStarted | SpeechStopped] = []
        for offset, probability in enumerate(probabilities.tolist()):
            frame = first_frame + offset
            if not self._speaking:
                if probability >= self._threshold:
                    self._speaking = True
                    self._silence = 0
                    events.append(SpeechStarted(frame * FRAME))
                continue
            if probability >= self._threshold:
                self._silence = 0
            elif self._silence or probability < self._neg_threshold:
                self._silence += 1
                if self._silence >= self._silence_frames:
                    self._speaking = False
                    self._silence = 0
                    events.append(SpeechStopped((frame + 1) * FRAME))
        return events

    @property
    def speaking(self) -> bool:
        """Whether a turn has started and not yet stopped."""
        return self._speaking

    def reset(self) -> None:
        """Forget the turn in progress (after ``input_audio_buffer.clear`` or a manual
        commit): the next frame at or above the threshold starts a new one."""
        self._speaking = False
        self._silence = 0
