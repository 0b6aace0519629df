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

from collections.abc import Hashable, Sequence
from functools import lru_cache
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from faster_whisper.tokenizer import Tokenizer

from models.alignment import Alignment, words_and_logprobs
from models.base import TranscriptionItem, WindowTranscript
from models.hardware import Device
from models.whisper_decoding import (
    HOP_LENGTH,
    MAX_INITIAL_TIMESTAMP,
    MAX_LENGTH,
    MAX_PROMPT_TOKENS,
    TIME_PRECISION,
    DecodedWindow,
    decode_window,
    prompt_tail,
)
from models.whisper_tokenizer import WhisperTokenizer

WINDOW_FRAMES = 3000
"""Mel frames in a 30-s window: what Whisper's encoder was trained on."""
GLANCE_MIN_FRAMES = 100
"""The shortest input :meth:`WhisperCT2Backend.english_probabilities` encodes (1 s)."""


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
        workers: int = 1,
    ) -> None:
        self.model_path = model_path
        self.workers = workers
        """Calls that may run at once, from as many threads (CTranslate2's replicas)."""
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
            num_workers=self.workers,
        )
        english = WhisperTokenizer(self.model.hf_tokenizer, multilingual=self.multilingual)
        self._suppress = list(english.suppressed)

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
        tokens = self._tokenizer("transcribe", "en").encode(" " + prompt_tail(prompt))
        return tuple(tokens[-MAX_PROMPT_TOKENS:])

    # -- batching ------------------------------------------------------------------

    def batch_key(self, item: TranscriptionItem) -> Hashable:
        """The position of ``<|startoftranscript|>``, and the temperature."""
        previous = (
            self._prompt_tokens(prompt_tail(item.options.prompt)) if item.options.prompt else ()
        )
        sot_position = len(previous) + 1 if previous else 0
        return (sot_position, item.options.temperature)

    def transcribe_batch(
        self,
        items: Sequence[TranscriptionItem],
        *,
        encoder_output: ctranslate2.StorageView | None = None,
    ) -> list[WindowTranscript]:
        """One result per item, in order. ``encoder_output``: the items' windows already
        through :meth:`encode` (a router that detected their language has it)."""
        if not items:
            return []
        if len({self.batch_key(item) for item in items}) != 1:
            raise ValueError("items with different batch keys cannot share a batch")
        if encoder_output is None:
            encoder_output = self.encode([item.audio for item in items])
        elif encoder_output.shape[0] != len(items):
            raise ValueError("encoder_output must hold one row per item")
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
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION),
            **self._decoding_options(items[0].options.temperature),
        )
        decoded = [
            _read_result(item, lang, tokenizer, result)
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
        decoded: Sequence[DecodedWindow],
        encoder_output: ctranslate2.StorageView,
    ) -> list[Alignment | None]:
        """Force-align the windows that asked for word timings or token log-probabilities.

        ``align`` takes one start sequence per call, so windows are grouped by it
        (in practice by language and task); a group that is not the whole batch
        gets its rows of the encoder output copied out (:func:`take_rows`).
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
        for sot_sequence, members in groups.items():
            results = self.model.model.align(
                take_rows(encoder_output, members),
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

    def encode(self, windows: Sequence[np.ndarray]) -> ctranslate2.StorageView:
        """The encoder's output for each window (16 kHz samples, at most 30 s), one row each."""
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

    def detect_languages(self, encoder_output: ctranslate2.StorageView) -> list[str]:
        """The most likely language (ISO-639-1) of each window :meth:`encode` encoded, as
        ``transcribe_batch`` would detect it: what a router asks before choosing a model.

        Each row's answer depends on that row only. An English-only model answers
        ``"en"`` without computing.
        """
        if not self.multilingual:
            return ["en"] * encoder_output.shape[0]
        return self._detected(encoder_output)

    def english_probabilities(self, windows: Sequence[np.ndarray]) -> list[float]:
        """A glance at each window: how likely it is English, with the encoder run over
        the window's own length (at least a second) instead of 30 s of padded audio.

        On 5-s windows of Whisper base on the CPU this costs 0.05 s against 0.6 s for
        :meth:`encode` and :meth:`detect_languages`, and it is less sure of itself: it
        misnamed 6 of 40 accented non-English windows (never as English: P(en) at most
        0.13) and gave 5 of 48 English ones P(en) below 0.9, where full detection named
        every one right. A router may trust a confident "English" and ask the full
        detection otherwise. Windows are encoded one at a time (their lengths differ),
        so each answer depends on its window only. An English-only model answers 1.0.
        """
        if not self.multilingual:
            return [1.0] * len(windows)
        extractor = self.model.feature_extractor
        out: list[float] = []
        for audio in windows:
            features = extractor(audio)[..., :-1]
            length = features.shape[-1]
            frames = min(WINDOW_FRAMES, max(GLANCE_MIN_FRAMES, length + length % 2))
            encoded = self._encode_features(pad_or_trim(features, frames)[None])
            (ranked,) = self.model.model.detect_language(encoded)
            out.append(float(dict(ranked).get("<|en|>", 0.0)))
        return out

    def _detected(self, encoder_output: ctranslate2.StorageView) -> list[str]:
        ranked = self.model.model.detect_language(encoder_output)
        return [str(best[0][0])[2:-2] for best in ranked]  # "<|es|>" -> "es"

    def _languages(
        self, items: Sequence[TranscriptionItem], encoder_output: ctranslate2.StorageView
    ) -> list[str]:
        if not self.multilingual:
            return ["en"] * len(items)
        if all(item.options.language for item in items):
            return [item.options.language or "en" for item in items]
        detected = self._detected(encoder_output)
        return [
            item.options.language or language
            for item, language in zip(items, detected, strict=True)
        ]

    def _prompt(self, item: TranscriptionItem, tokenizer: Tokenizer) -> list[int]:
        previous = (
            list(self._prompt_tokens(prompt_tail(item.options.prompt)))
            if item.options.prompt
            else []
        )
        prompt: list[int] = self.model.get_prompt(tokenizer, previous, without_timestamps=False)
        return prompt


def take_rows(
    encoder_output: ctranslate2.StorageView, rows: Sequence[int]
) -> ctranslate2.StorageView:
    """Some rows of an encoder output, in the order given (copied through host memory)."""
    if list(rows) == list(range(encoder_output.shape[0])):
        return encoder_output
    host = np.asarray(encoder_output.to_device(ctranslate2.Device.cpu))
    return ctranslate2.StorageView.from_array(np.ascontiguousarray(host[list(rows)]))


def _read_result(
    item: TranscriptionItem, language: str, tokenizer: Tokenizer, result: Any
) -> DecodedWindow:
    """A ``generate`` result's best hypothesis, read as :func:`decode_window` reads tokens."""
    tokens: list[int] = result.sequences_ids[0]
    avg_logprob = float(result.scores[0] * len(tokens) / (len(tokens) + 1))
    return decode_window(
        item, language, tokenizer, tokens, avg_logprob, float(result.no_speech_prob)
    )
