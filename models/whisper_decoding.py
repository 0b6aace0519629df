"""From a window's decoded tokens to its transcript: shared by both Whisper engines.

Whatever engine produced them, a window's tokens are read the same way: cut into
segments at timestamp tokens, judged silent by Whisper's no-speech rule, asked to
resume where the model stopped early, and measured (average log-probability,
compression ratio) for the caller's fallback policy. This module holds that
reading, and nothing of any engine.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from models.alignment import Alignment, SegmentSpan
from models.base import SAMPLE_RATE, Segment, TranscriptionItem, WindowTranscript

MAX_LENGTH = 448
"""Whisper's decoder context, prompt included."""
MAX_PROMPT_TOKENS = MAX_LENGTH // 2 - 1
"""Whisper keeps the last 223 tokens of a prompt, as openai-whisper does."""
MAX_PROMPT_CHARS = 4 * 1024
"""Far more characters than 223 tokens take, in any script."""
TIME_PRECISION = 0.02
"""Seconds per timestamp token."""
FRAMES_PER_SECOND = 100
HOP_LENGTH = SAMPLE_RATE // FRAMES_PER_SECOND
"""Audio samples per mel frame."""
MAX_INITIAL_TIMESTAMP = 1.0
"""The first timestamp may not be later than this, in seconds (openai-whisper's default)."""
MIN_RESUME_ADVANCE = 1.0
"""A resume point must move this many seconds into the window, so a window ends."""
MIN_RESUME_REST = 0.3
"""Less audio than this after the resume point is not worth another pass."""
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


class TextDecoder(Protocol):
    """What reading a window needs of a tokenizer."""

    @property
    def timestamp_begin(self) -> int: ...

    def decode(self, tokens: list[int]) -> str: ...


@dataclass(frozen=True, slots=True)
class DecodedWindow:
    """One window's best hypothesis, cut into segments but not yet turned into text."""

    item: TranscriptionItem
    language: str
    spans: list[SegmentSpan]
    temperature: float
    avg_logprob: float
    no_speech_prob: float
    silent: bool = False
    resume_at: float | None = None

    @property
    def tokens(self) -> list[int]:
        return [t for span in self.spans for t in span.tokens]

    def transcript(self, tokenizer: TextDecoder, alignment: Alignment | None) -> WindowTranscript:
        ratio = compression_ratio(tokenizer.decode(self.tokens)) if self.spans else 0.0
        options = self.item.options
        segments = [
            Segment(
                start=span.start,
                end=span.end,
                text=tokenizer.decode(list(span.tokens)),
                tokens=tuple(span.tokens),
                seek=round(self.item.offset * FRAMES_PER_SECOND),
                temperature=self.temperature,
                avg_logprob=self.avg_logprob,
                compression_ratio=ratio,
                no_speech_prob=self.no_speech_prob,
                words=alignment.words[k] if alignment and options.word_timestamps else (),
                logprobs=alignment.logprobs[k] if alignment and options.token_logprobs else (),
            )
            for k, span in enumerate(self.spans)
        ]
        return WindowTranscript(
            language=self.language,
            segments=segments,
            temperature=self.temperature,
            avg_logprob=self.avg_logprob,
            compression_ratio=ratio,
            no_speech_prob=self.no_speech_prob,
            silent=self.silent,
            resume_at=self.resume_at,
        )


def decode_window(
    item: TranscriptionItem,
    language: str,
    tokenizer: TextDecoder,
    tokens: list[int],
    avg_logprob: float,
    no_speech_prob: float,
) -> DecodedWindow:
    """Read one window's generated tokens (end of text excluded)."""
    temperature = item.options.temperature
    if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
        # silence, by Whisper's own rule: no segments, and no retry would change that
        return DecodedWindow(item, language, [], temperature, avg_logprob, no_speech_prob, True)
    duration = len(item.audio) / SAMPLE_RATE
    cuts, resume = split_at_timestamps(tokens, tokenizer.timestamp_begin, duration)
    spans = [
        SegmentSpan(text, round(item.offset + start, 3), round(item.offset + end, 3))
        for start, end, text in cuts
    ]
    resume_at = None if resume is None else round(item.offset + resume, 3)
    return DecodedWindow(
        item, language, spans, temperature, avg_logprob, no_speech_prob, resume_at=resume_at
    )


def split_at_timestamps(
    tokens: Sequence[int], timestamp_begin: int, duration: float
) -> tuple[list[tuple[float, float, list[int]]], float | None]:
    """Cut a decoded window at its timestamp tokens: ``(start, end, text)`` spans and
    the time, relative to the window, from which the window must be read again.

    Whisper writes ``<|t0|> text <|t1|><|t1|> more <|t2|>``. When it ends on a pair
    of timestamps, or on text it did not close, instead of on a single closing
    timestamp, it is saying that what follows the last complete segment was not
    transcribed and should be fed to it again from there; sequential decoding
    seeks to that point, and so do we (the caller submits the rest of the window).
    When the point would not move forward or leave audio worth reading, the
    window counts as finished and unclosed text runs to its end.
    """
    spans: list[tuple[float, float, list[int]]] = []
    start = 0.0
    text: list[int] = []
    for token in tokens:
        if token < timestamp_begin:
            text.append(token)
            continue
        time = min((token - timestamp_begin) * TIME_PRECISION, duration)
        if text:
            spans.append((start, max(time, start), text))
            text = []
        start = time
    ends_on_single = len(tokens) >= 2 and tokens[-2] < timestamp_begin <= tokens[-1]
    paired = any(
        a >= timestamp_begin and b >= timestamp_begin for a, b in itertools.pairwise(tokens)
    )
    resume = spans[-1][1] if spans and paired and not ends_on_single else None
    if resume is not None and (resume < MIN_RESUME_ADVANCE or duration - resume < MIN_RESUME_REST):
        resume = None
    if text and resume is None:
        spans.append((start, max(duration, start), text))
    return spans, resume


def compression_ratio(text: str) -> float:
    """Whisper's repetition measure: text bytes over zlib-compressed bytes."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def prompt_tail(prompt: str) -> str:
    """The part of a prompt that can reach the model's last 223 prompt tokens."""
    return prompt.strip()[-MAX_PROMPT_CHARS:]
