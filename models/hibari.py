"""hibari: 8 MB English voices distilled from Kokoro, run through our own ONNX session.

The ``hibari-tts`` package pairs a small network that predicts a spectrum per
12.5 ms frame with host-side DSP that turns it into a waveform, and brings a
misaki-compatible G2P with no spaCy or espeak-ng. Its ``Hibari`` class hardcodes
the CPU provider and its own thread count, so this backend reuses the package's
pieces (G2P, vocab, ``dsp.synth``) around a session from
:func:`models.onnx_session.onnx_session`.

The graph takes one phoneme sequence (``ids`` [1, L]): there is no batch axis,
so every call speaks one item, a piece of at most :data:`MAX_PHONEMES` phonemes, and
fewer at a slow pace: one call makes at most ``max_pass_seconds`` of audio (estimated
by :data:`PACE`), which bounds its memory (~5 MiB a second, host DSP included) at
``speed`` 0.25 too. The only randomness is the DSP's noise branch,
drawn from a generator seeded by the item, so equal items give equal audio.

:func:`split_phonemes`, :func:`phonemize` and :func:`phoneme_vocab` also serve the Kokoro backend,
which was trained on the same phoneme alphabet.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from models.base import AudioArray, Speaker, SpeechItem
from models.onnx_session import MAX_PASS_SECONDS, Pace, onnx_session, release_memory

SAMPLE_RATE = 24_000
MAX_PHONEMES = 400
"""hibari's own limit (``hibari.tts.MAX_PHONEMES``): longer pieces leave its training range."""
PACE = Pace(base_s=0.7, per_unit_s=0.085, frame_s=0.0125)
"""Seconds of audio per piece of phonemes at speed 1, an upper estimate. Measured with the
"heart" voice on pieces of 3-203 phonemes cut from hostile text: at most 0.7 s + 0.081 s
a phoneme ("i.e., " repeated; a run of one vowel), ~0.06 s a phoneme in ordinary prose."""
MIN_PIECE_PHONEMES = 8
"""Pieces are never cut shorter than this, however small the pass budget."""

MAX_WORD = 32
"""Longer runs without spaces are cut before the G2P: it merges a word's subtokens in
cubic time, so a 200-character URL would take it seconds and a longer one minutes."""

_CLAUSE_PUNCTUATION = frozenset(".!?…;:,—")
_LONG_WORD = re.compile(rf"\S{{{MAX_WORD + 1},}}")


@cache
def phoneme_vocab() -> dict[str, int]:
    """Kokoro's phoneme-to-id map, which hibari ships as ``assets/vocab.json``."""
    import hibari

    path = Path(hibari.__file__).parent / "assets" / "vocab.json"
    vocab: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    return vocab


def phonemize(g2p: Any, text: str) -> str:
    """``text`` read by a hibari ``G2P``, bounded in time and never raising.

    The G2P raises on some inputs (a number of a thousand digits); then the text is
    read again word by word and the words it cannot read are left out.
    """
    text = _LONG_WORD.sub(_cut_word, text)
    try:
        return str(g2p(text))
    except Exception:
        words = []
        for word in text.split():
            try:
                words.append(str(g2p(word)))
            except Exception:
                continue
        return " ".join(word for word in words if word)


def _cut_word(match: re.Match[str]) -> str:
    word = match.group()
    return " ".join(word[i : i + MAX_WORD] for i in range(0, len(word), MAX_WORD))


def split_phonemes(phonemes: Sequence[str], limit: int) -> list[list[str]]:
    """:func:`split_pieces`, less the pieces with nothing to pronounce (only
    punctuation or spaces). ``phonemes`` is a string (a phoneme per character) or a
    list of phonemes."""
    pieces = split_pieces(phonemes, limit)
    return [piece for piece in pieces if any(p.isalpha() for p in piece)]


def split_pieces(tokens: Sequence[str], limit: int) -> list[list[str]]:
    """Pieces of at most ``limit`` tokens, cut after clause punctuation if that is
    enough, else between words, else (one word longer than ``limit``) anywhere;
    neighbouring pieces are joined back with a space while they fit."""
    return [_strip(piece) for piece in _split(list(tokens), limit)]


def _split(tokens: list[str], limit: int) -> list[list[str]]:
    if len(tokens) <= limit:
        return [tokens]
    for cut in (_after_clause, _is_space):
        parts = _cut(tokens, cut)
        if len(parts) > 1:
            return _pack([piece for part in parts for piece in _split(part, limit)], limit)
    return [tokens[i : i + limit] for i in range(0, len(tokens), limit)]


def _after_clause(tokens: list[str], i: int) -> bool:
    return tokens[i].isspace() and i > 0 and tokens[i - 1] in _CLAUSE_PUNCTUATION


def _is_space(tokens: list[str], i: int) -> bool:
    return tokens[i].isspace()


def _cut(tokens: list[str], at: Callable[[list[str], int], bool]) -> list[list[str]]:
    """``tokens`` split at the (dropped) spaces where ``at`` holds."""
    parts: list[list[str]] = [[]]
    for i, token in enumerate(tokens):
        if at(tokens, i):
            parts.append([])
        else:
            parts[-1].append(token)
    return [part for part in parts if part]


def _pack(parts: list[list[str]], limit: int) -> list[list[str]]:
    """Join neighbouring parts with spaces while they fit, so pieces stay few and long."""
    packed: list[list[str]] = []
    for part in parts:
        if packed and len(packed[-1]) + 1 + len(part) <= limit:
            packed[-1] = [*packed[-1], " ", *part]
        else:
            packed.append(part)
    return packed


def _strip(tokens: list[str]) -> list[str]:
    start, end = 0, len(tokens)
    while start < end and tokens[start].isspace():
        start += 1
    while end > start and tokens[end - 1].isspace():
        end -= 1
    return tokens[start:end]


class HibariBackend:
    """A hibari voice: one ONNX file plus the American or British G2P."""

    sample_rate = SAMPLE_RATE
    max_batch_size = 1

    def __init__(
        self,
        model_path: str,
        *,
        british: bool = False,
        device: str = "cpu",
        cpu_threads: int = 1,
        max_pass_seconds: float = MAX_PASS_SECONDS,
    ) -> None:
        self.model_path = model_path
        self.british = british
        self.device = device
        self.cpu_threads = cpu_threads
        self.max_pass_seconds = max_pass_seconds
        """Estimated audio one graph call may make: pieces are cut to fit it."""
        self._session: Any = None
        self._g2p: Any = None
        self._vocab: dict[str, int] = {}

    def load(self) -> None:
        from hibari.g2p import G2P

        self._session = onnx_session(self.model_path, self.device, self.cpu_threads)
        self._g2p = G2P(british=self.british)
        self._g2p.oov  # noqa: B018 -- loads the unknown-word net now, not on a first request
        self._vocab = phoneme_vocab()

    def check_speaker(self, speaker: Speaker | None) -> None:
        if speaker is not None:
            raise ValueError(f"a hibari voice has one speaker, not {speaker!r}: omit it")

    def batch_key(self, item: SpeechItem) -> Hashable:
        """Every item alike: the graph has no batch axis, so batches are single items."""
        return None

    def synthesize_batch(self, items: Sequence[SpeechItem]) -> list[AudioArray]:
        audio = [self._synthesize(item) for item in items]
        release_memory(sum(len(samples) for samples in audio) / self.sample_rate)
        return audio

    def _synthesize(self, item: SpeechItem) -> AudioArray:
        if self._session is None:
            raise RuntimeError("HibariBackend.load() was not called")
        self.check_speaker(item.speaker)
        rng = np.random.default_rng(item.seed)
        limit = self.max_phonemes(item.speed)
        parts = [
            self._speak("".join(piece), item.speed, rng)
            for sentence in _sentences(item.text)
            for piece in split_phonemes(self._phonemes(sentence), limit)
        ]
        if not parts:
            return np.zeros(0, np.float32)
        return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32, copy=False)

    def max_phonemes(self, speed: float) -> int:
        """The longest piece, in phonemes, that one call may speak at ``speed``."""
        fits = PACE.max_units(self.max_pass_seconds, speed, least=MIN_PIECE_PHONEMES)
        return min(MAX_PHONEMES, fits)

    def _phonemes(self, text: str) -> str:
        """The G2P's phonemes with characters the model has no id for dropped."""
        return "".join(ch for ch in phonemize(self._g2p, text) if ch in self._vocab)

    def _speak(self, phonemes: str, speed: float, rng: np.random.Generator) -> AudioArray:
        from hibari import dsp

        ids = [0, *(self._vocab[ch] for ch in phonemes), 0]
        outputs = self._session.run(
            None,
            {"ids": np.asarray([ids], np.int64), "speed": np.asarray([speed], np.float32)},
        )
        lh, theta, ln, lr, phi, f0 = (output[0] for output in outputs)
        return np.asarray(dsp.synth(lh, theta, ln, lr, phi, f0, rng), dtype=np.float32)


def _sentences(text: str) -> list[str]:
    """hibari's own sentence split: the model was trained on one sentence at a time."""
    from hibari.tts import Hibari

    sentences: list[str] = Hibari.split_sentences(text)
    return sentences
