"""Word timings and token log-probabilities, from one forced-alignment pass per window.

A forced-alignment pass runs the decoder over a window's text tokens,
teacher-forced, and gives for every token the audio frame its alignment heads
point at (dynamic time warping over cross-attention, as openai-whisper's
``word_timestamps`` does) and the probability the model gave it. Both per-word
timings and per-token log-probabilities come out of that one pass, so asking for
either costs one decoder pass over the text, not a second transcription.
CTranslate2's ``Whisper.align`` is such a pass; for the torch engine,
:func:`alignment_path` turns the cross-attention scores of its own pass into the
same warping path, the way CTranslate2 and openai-whisper do.

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
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import tokenizers

from models.base import TokenLogprob, Word

SECONDS_PER_FRAME = 0.02
"""One encoder frame: 16 kHz audio, hop 160, stride 2."""
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"  # noqa: RUF001
SENTENCE_END_MARKS = ".。!！?？"  # noqa: RUF001
MAX_WORD_SECONDS = 0.7
"""openai-whisper caps the median word length at this before truncating outliers."""
MEDIAN_FILTER_WIDTH = 7
"""Frames the attention weights are smoothed over before warping (openai-whisper's)."""


class Tokenizer(Protocol):
    """What alignment needs of a Whisper tokenizer (ours, or faster-whisper's)."""

    tokenizer: tokenizers.Tokenizer

    @property
    def eot(self) -> int: ...

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]: ...


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
    timing: list[dict[str, Any]] = [
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
    _merge_punctuations(timing)
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


def _merge_punctuations(timing: list[dict[str, Any]]) -> None:
    """Opening marks join the word after them and closing marks the word before, as
    openai-whisper does, so that a word's time covers its own punctuation."""
    following = len(timing) - 1
    for i in range(len(timing) - 2, -1, -1):
        word = timing[i]["word"]
        if word.startswith(" ") and word.strip() in PREPEND_PUNCTUATIONS:
            _move(timing[i], timing[following], prepend=True)
        else:
            following = i
    previous = 0
    for j in range(1, len(timing)):
        if not timing[previous]["word"].endswith(" ") and timing[j]["word"] in APPEND_PUNCTUATIONS:
            _move(timing[j], timing[previous], prepend=False)
        else:
            previous = j


def _move(source: dict[str, Any], target: dict[str, Any], *, prepend: bool) -> None:
    if prepend:
        target["word"] = source["word"] + target["word"]
        target["tokens"] = source["tokens"] + target["tokens"]
    else:
        target["word"] = target["word"] + source["word"]
        target["tokens"] = target["tokens"] + source["tokens"]
    source["word"] = ""
    source["tokens"] = []


def alignment_path(
    scores: npt.NDArray[np.float32], num_frames: int, text_rows: slice
) -> list[tuple[int, int]]:
    """The warping path through one window's cross-attention, as ``(row, frame)`` pairs.

    ``scores`` are the alignment heads' raw attention scores (query-key products,
    scaled, before softmax), shaped ``(heads, tokens, encoder frames)``, for the
    teacher-forced sequence ``[*sot_sequence, <|notimestamps|>, *text, <|endoftext|>]``;
    ``num_frames`` counts the mel frames of real audio and ``text_rows`` selects the
    rows that predict the text tokens and the end. The steps are CTranslate2's and
    openai-whisper's: keep the frames that hold audio, softmax over them, standardize
    each frame across tokens, median-filter along time, average the heads, then
    warp along the path of highest attention.
    """
    frames = max(1, min(num_frames // 2, scores.shape[-1]))
    weights = scores[..., :frames].astype(np.float64)
    weights = np.exp(weights - weights.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = (weights - weights.mean(axis=-2, keepdims=True)) / np.where(std > 0, std, 1.0)
    weights = _median_filter(weights, MEDIAN_FILTER_WIDTH).mean(axis=0)
    return _dtw(-weights[text_rows])


def _median_filter(x: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Median over a sliding window along the last axis, reflecting at the edges."""
    half = width // 2
    if x.shape[-1] <= half:
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.asarray(np.median(windows, axis=-1))


def _dtw(cost: npt.NDArray[np.float64]) -> list[tuple[int, int]]:
    """Dynamic time warping: the cheapest monotonic path from the first cell to the last.

    openai-whisper's recurrence and tie-breaking (a diagonal or upward move only when
    strictly cheaper), filled one anti-diagonal at a time so each step is one vector
    operation, as its CUDA kernel does; then traced back from the last cell.
    """
    rows, cols = cost.shape
    total = np.full((rows + 1, cols + 1), np.inf)
    total[0, 0] = 0.0
    move = np.zeros((rows + 1, cols + 1), dtype=np.int8)  # 0 diagonal, 1 up, 2 left
    for diagonal in range(2, rows + cols + 1):
        i = np.arange(max(1, diagonal - cols), min(rows, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = total[i - 1, j - 1], total[i - 1, j], total[i, j - 1]
        diagonal_move = (c0 < c1) & (c0 < c2)
        up_move = ~diagonal_move & (c1 < c0) & (c1 < c2)
        step = np.where(diagonal_move, 0, np.where(up_move, 1, 2))
        total[i, j] = cost[i - 1, j - 1] + np.choose(step, (c0, c1, c2))
        move[i, j] = step
    move[0, :] = 2
    move[:, 0] = 1
    path: list[tuple[int, int]] = []
    i, j = rows, cols
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        if move[i, j] == 0:
            i, j = i - 1, j - 1
        elif move[i, j] == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    return path


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
