"""Word timings and token log-probabilities, from one forced-alignment pass per window.

CTranslate2's ``Whisper.align`` runs the decoder over a window's text tokens,
teacher-forced, and returns for every token the audio frame its alignment heads
point at (dynamic time warping over cross-attention, as openai-whisper's
``word_timestamps`` does) and the probability the model gave it. Both per-word
timings and per-token log-probabilities come out of that one pass, so asking for
either costs one decoder pass over the text, not a second transcription.

Word timings follow openai-whisper: a word starts at the frame where its first
token's alignment jumps in and ends where the next word's does; punctuation is
merged into its neighbour; then each word is clamped inside its segment and
after the word before it, so times are monotonic and inside the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from faster_whisper.tokenizer import Tokenizer
from faster_whisper.transcribe import merge_punctuations

from models.base import TokenLogprob, Word

SECONDS_PER_FRAME = 0.02
"""One encoder frame: 16 kHz audio, hop 160, stride 2."""
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001
SENTENCE_END_MARKS = ".。!！?？"  # noqa: RUF001
MAX_WORD_SECONDS = 0.7
"""openai-whisper caps the median word length at this before truncating outliers."""


@dataclass(frozen=True, slots=True)
class SegmentSpan:
    """One segment of a decoded window: its text tokens and its time span in the file."""

    tokens: Sequence[int]
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Alignment:
    """What one window's alignment gives back, split per segment."""

    words: list[tuple[Word, ...]]
    logprobs: list[tuple[TokenLogprob, ...]]


def words_and_logprobs(
    tokenizer: Tokenizer,
    spans: Sequence[SegmentSpan],
    offset: float,
    alignments: Sequence[tuple[int, int]],
    token_probs: Sequence[float],
) -> Alignment:
    """Split one window's alignment result back onto its segments.

    ``alignments`` pairs ``(text token index, frame index)`` along the warping
    path, ``token_probs`` are the probabilities of the concatenated text tokens,
    and ``offset`` is where the window starts in the file.
    """
    tokens = [t for span in spans for t in span.tokens]
    logprobs = [_token_logprob(tokenizer, t, p) for t, p in zip(tokens, token_probs, strict=False)]
    timings = _word_timings(tokenizer, tokens, alignments, token_probs)
    words: list[tuple[Word, ...]] = []
    per_segment_logprobs: list[tuple[TokenLogprob, ...]] = []
    word_index = 0
    token_index = 0
    previous_end = spans[0].start if spans else offset
    for span in spans:
        taken: list[Word] = []
        consumed = 0
        while word_index < len(timings) and consumed < len(span.tokens):
            word, count, start, end, probability = timings[word_index]
            word_index += 1
            consumed += count
            if not word:
                continue
            start = min(max(offset + start, span.start, previous_end), span.end)
            end = min(max(offset + end, start), span.end)
            taken.append(Word(word, round(start, 3), round(end, 3), probability))
            previous_end = end
        words.append(tuple(taken))
        per_segment_logprobs.append(tuple(logprobs[token_index : token_index + len(span.tokens)]))
        token_index += len(span.tokens)
    return Alignment(words, per_segment_logprobs)


def _word_timings(
    tokenizer: Tokenizer,
    tokens: list[int],
    alignments: Sequence[tuple[int, int]],
    token_probs: Sequence[float],
) -> list[tuple[str, int, float, float, float]]:
    """``(word, token count, start, end, probability)`` relative to the window."""
    if not tokens or not alignments:
        return []
    words, word_tokens = tokenizer.split_to_word_tokens([*tokens, tokenizer.eot])
    if len(word_tokens) <= 1:
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    text_indices = np.array([pair[0] for pair in alignments])
    time_indices = np.array([pair[1] for pair in alignments])
    jumps = np.pad(np.diff(text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = time_indices[jumps] * SECONDS_PER_FRAME
    probs = np.asarray(token_probs, dtype=np.float64)
    timing = [
        {
            "word": word,
            "tokens": list(toks),
            "start": float(jump_times[min(i, len(jump_times) - 1)]),
            "end": float(jump_times[min(j, len(jump_times) - 1)]),
            "probability": float(np.mean(probs[i:j])) if len(probs[i:j]) else 0.0,
        }
        for word, toks, i, j in zip(
            words[:-1], word_tokens[:-1], boundaries[:-1], boundaries[1:], strict=True
        )
    ]
    _truncate_long_words(timing)
    merge_punctuations(timing, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
    return [
        (str(t["word"]), len(t["tokens"]), t["start"], t["end"], t["probability"]) for t in timing
    ]


def _truncate_long_words(timing: list[dict[str, Any]]) -> None:
    """openai-whisper's guard: a word at a sentence end does not swallow the pause."""
    durations = np.array([t["end"] - t["start"] for t in timing])
    durations = durations[durations.nonzero()]
    if not len(durations):
        return
    max_duration = 2 * min(MAX_WORD_SECONDS, float(np.median(durations)))
    for i in range(1, len(timing)):
        start, end = timing[i]["start"], timing[i]["end"]
        if end - start <= max_duration:
            continue
        if timing[i]["word"] in SENTENCE_END_MARKS:
            timing[i]["end"] = start + max_duration
        elif timing[i - 1]["word"] in SENTENCE_END_MARKS:
            timing[i]["start"] = end - max_duration


def _token_logprob(tokenizer: Tokenizer, token: int, probability: float) -> TokenLogprob:
    raw = token_bytes(tokenizer, token)
    logprob = math.log(probability) if probability > 0 else -math.inf
    return TokenLogprob(raw.decode("utf-8", errors="replace"), logprob, tuple(raw))


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """The bytes a byte-level BPE token stands for (it may end inside a character)."""
    piece = tokenizer.tokenizer.id_to_token(token) or ""
    decoder = _byte_decoder()
    if all(ch in decoder for ch in piece):
        return bytes(decoder[ch] for ch in piece)
    return piece.encode("utf-8")


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for the 256 byte values, inverted."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}
