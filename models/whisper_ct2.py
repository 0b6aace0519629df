"""Whisper on CTranslate2 (the engine inside faster-whisper), batched across requests.

One call of :meth:`WhisperCT2Backend.transcribe_batch` runs the encoder over every
window and then a single ``generate`` with one prompt per window, the way
faster-whisper's ``generate_segment_batched`` does, but with per-item prompts,
languages and tasks, and with timestamps on so that segments come back.

What batching costs, and how this file pays for it:

- CTranslate2 requires ``<|startoftranscript|>`` at the same position in every
  prompt of one ``generate`` call. :meth:`batch_key` is that position (plus the
  temperature, a per-call setting), so the scheduler never mixes items that
  cannot share a call.
- Windows of one request are not conditioned on each other's text (they run in
  parallel); each carries the request's own ``prompt``.
- On a CPU one encoder call over many windows is slower per window than several
  small ones (the 1500x1500 attention maps fall out of cache), so the encoder runs
  in micro-batches of ``encoder_batch_size`` (whole batch on CUDA, 1 on CPU by
  default) and the decoder, where batching pays, runs once for the whole batch.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer

from models.alignment import Alignment, SegmentSpan, words_and_logprobs
from models.base import SAMPLE_RATE, Segment, TranscriptionItem, WindowTranscript
from models.hardware import Device

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
MIN_RESUME_ADVANCE = 1.0
"""A resume point must move this many seconds into the window, so a window ends."""
MIN_RESUME_REST = 0.3
"""Less audio than this after the resume point is not worth another pass."""
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0


class WhisperCT2Backend:
    """A Whisper model in CTranslate2 format, from a local directory."""

    window_seconds = 30.0

    def __init__(
        self,
        model_path: str,
        *,
        device: Device,
        compute_type: str,
        cpu_threads: int,
        beam_size: int = 5,
        best_of: int = 5,
        encoder_batch_size: int = 0,
    ) -> None:
        self.model_path = model_path
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.best_of = best_of
        self.encoder_batch_size = encoder_batch_size or (0 if device == "cuda" else 1)
        self._model: WhisperModel | None = None
        self._suppress: list[int] = []
        self._prompt_tokens = lru_cache(maxsize=1024)(self._encode_prompt)
        self._tokenizer = lru_cache(maxsize=256)(self._make_tokenizer)

    # -- loading -------------------------------------------------------------------

    def load(self) -> None:
        self._model = WhisperModel(
            self.model_path,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            num_workers=1,
        )
        self._suppress = _suppressed_tokens(self._tokenizer("transcribe", "en"))

    @property
    def model(self) -> WhisperModel:
        if self._model is None:
            raise RuntimeError("WhisperCT2Backend.load() was not called")
        return self._model

    @property
    def multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def _make_tokenizer(self, task: str, language: str) -> Tokenizer:
        return Tokenizer(self.model.hf_tokenizer, self.multilingual, task=task, language=language)

    def _encode_prompt(self, prompt: str) -> tuple[int, ...]:
        # Only the last 223 tokens count; tokenizing the last few thousand characters
        # finds them and keeps the cost bounded however long the prompt (this runs on
        # the server's event loop, via batch_key). The cache is keyed on that tail, so
        # it never holds more than 1024 tails of a few kB, however long the prompts.
        tokens = self._tokenizer("transcribe", "en").encode(" " + _prompt_tail(prompt))
        return tuple(tokens[-MAX_PROMPT_TOKENS:])

    # -- batching ------------------------------------------------------------------

    def batch_key(self, item: TranscriptionItem) -> Hashable:
        """The position of ``<|startoftranscript|>``, and the temperature."""
        previous = (
            self._prompt_tokens(_prompt_tail(item.options.prompt)) if item.options.prompt else ()
        )
        sot_position = len(previous) + 1 if previous else 0
        return (sot_position, item.options.temperature)

    def transcribe_batch(self, items: Sequence[TranscriptionItem]) -> list[WindowTranscript]:
        if not items:
            return []
        if len({self.batch_key(item) for item in items}) != 1:
            raise ValueError("items with different batch keys cannot share a batch")
        encoder_output = self._encode([item.audio for item in items])
        languages = self._languages(items, encoder_output)
        tokenizers = [
            self._tokenizer(item.options.task, lang)
            for item, lang in zip(items, languages, strict=True)
        ]
        prompts = [
            self._prompt(item, tokenizer) for item, tokenizer in zip(items, tokenizers, strict=True)
        ]
        results = self.model.model.generate(
            encoder_output,
            prompts,
            max_length=MAX_LENGTH,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress,
            max_initial_timestamp_index=round(1.0 / TIME_PRECISION),
            **self._decoding_options(items[0].options.temperature),
        )
        decoded = [
            _decode_window(item, lang, tokenizer, result)
            for item, lang, tokenizer, result in zip(
                items, languages, tokenizers, results, strict=True
            )
        ]
        alignments = self._align(items, tokenizers, decoded, encoder_output)
        return [
            window.transcript(tokenizer, alignment)
            for window, tokenizer, alignment in zip(decoded, tokenizers, alignments, strict=True)
        ]

    def _align(
        self,
        items: Sequence[TranscriptionItem],
        tokenizers: Sequence[Tokenizer],
        decoded: Sequence[_DecodedWindow],
        encoder_output: ctranslate2.StorageView,
    ) -> list[Alignment | None]:
        """Force-align the windows that asked for word timings or token log-probabilities.

        ``align`` takes one start sequence per call, so windows are grouped by it
        (in practice by language and task); a group that is not the whole batch
        gets its rows of the encoder output copied out.
        """
        wanted = [
            i
            for i, (item, window) in enumerate(zip(items, decoded, strict=True))
            if (item.options.word_timestamps or item.options.token_logprobs) and window.tokens
        ]
        out: list[Alignment | None] = [None] * len(items)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in wanted:
            groups.setdefault(tuple(tokenizers[i].sot_sequence), []).append(i)
        host: np.ndarray | None = None  # the encoder output on the CPU, copied once
        for sot_sequence, members in groups.items():
            features = encoder_output
            if len(members) != len(items):
                if host is None:
                    host = np.asarray(encoder_output.to_device(ctranslate2.Device.cpu))
                features = ctranslate2.StorageView.from_array(np.ascontiguousarray(host[members]))
            results = self.model.model.align(
                features,
                list(sot_sequence),
                [decoded[i].tokens for i in members],
                [len(items[i].audio) // HOP_LENGTH for i in members],
            )
            for i, result in zip(members, results, strict=True):
                out[i] = words_and_logprobs(
                    tokenizers[i],
                    decoded[i].spans,
                    items[i].offset,
                    result.alignments,
                    result.text_token_probs,
                )
        return out

    def _decoding_options(self, temperature: float) -> dict[str, Any]:
        if temperature > 0:
            return {
                "beam_size": 1,
                "num_hypotheses": self.best_of,
                "sampling_topk": 0,
                "sampling_temperature": temperature,
            }
        return {"beam_size": self.beam_size}

    def _encode(self, windows: Sequence[np.ndarray]) -> ctranslate2.StorageView:
        extractor = self.model.feature_extractor
        features = np.stack([pad_or_trim(extractor(audio)[..., :-1]) for audio in windows])
        step = self.encoder_batch_size or len(windows)
        if step >= len(windows):
            return self._encode_features(features)
        parts = [
            np.asarray(self._encode_features(features[i : i + step]))
            for i in range(0, len(windows), step)
        ]
        return ctranslate2.StorageView.from_array(np.concatenate(parts))

    def _encode_features(self, features: np.ndarray) -> ctranslate2.StorageView:
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        return self.model.model.encode(storage, to_cpu=False)

    def _languages(
        self, items: Sequence[TranscriptionItem], encoder_output: ctranslate2.StorageView
    ) -> list[str]:
        if not self.multilingual:
            return ["en"] * len(items)
        if all(item.options.language for item in items):
            return [item.options.language or "en" for item in items]
        detected = self.model.model.detect_language(encoder_output)
        return [
            item.options.language or ranked[0][0][2:-2]
            for item, ranked in zip(items, detected, strict=True)
        ]

    def _prompt(self, item: TranscriptionItem, tokenizer: Tokenizer) -> list[int]:
        previous = (
            list(self._prompt_tokens(_prompt_tail(item.options.prompt)))
            if item.options.prompt
            else []
        )
        prompt: list[int] = self.model.get_prompt(tokenizer, previous, without_timestamps=False)
        return prompt


def _suppressed_tokens(tokenizer: Tokenizer) -> list[int]:
    """Whisper's default ``suppress_tokens=[-1]``: non-speech symbols and task tokens."""
    special = [
        tokenizer.transcribe,
        tokenizer.translate,
        tokenizer.sot,
        tokenizer.sot_prev,
        tokenizer.sot_lm,
        tokenizer.no_speech,
    ]
    return sorted(set(tokenizer.non_speech_tokens) | set(special))


@dataclass(frozen=True, slots=True)
class _DecodedWindow:
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

    def transcript(self, tokenizer: Tokenizer, alignment: Alignment | None) -> WindowTranscript:
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


def _decode_window(
    item: TranscriptionItem, language: str, tokenizer: Tokenizer, result: Any
) -> _DecodedWindow:
    tokens: list[int] = result.sequences_ids[0]
    avg_logprob = float(result.scores[0] * len(tokens) / (len(tokens) + 1))
    no_speech_prob = float(result.no_speech_prob)
    temperature = item.options.temperature
    if no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
        # silence, by Whisper's own rule: no segments, and no retry would change that
        return _DecodedWindow(item, language, [], temperature, avg_logprob, no_speech_prob, True)
    duration = len(item.audio) / SAMPLE_RATE
    cuts, resume = split_at_timestamps(tokens, tokenizer.timestamp_begin, duration)
    spans = [
        SegmentSpan(text, round(item.offset + start, 3), round(item.offset + end, 3))
        for start, end, text in cuts
    ]
    resume_at = None if resume is None else round(item.offset + resume, 3)
    return _DecodedWindow(
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


def _prompt_tail(prompt: str) -> str:
    """The part of a prompt that can reach the model's last 223 prompt tokens."""
    return prompt.strip()[-MAX_PROMPT_CHARS:]
