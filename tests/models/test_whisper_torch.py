"""The torch Whisper engine on real weights: against CTranslate2, and against itself alone.

Two references make these tests able to fail:

- CTranslate2 run greedily in float32 (``beam_size=1``) on the same packaged weights is
  the engine the torch one must reproduce token for token (the converter, the mel
  features, the decoding rules and the measures are all in that comparison);
- a window decoded alone (``transcribe_batch([item])``) is what it must give whatever
  else runs in the batch, however it joined, and whichever row it got.

Engines are loaded once per module, and a window's result alone is computed once.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from models.base import (
    SAMPLE_RATE,
    DecodingOptions,
    TranscriptionItem,
    WindowTranscript,
)
from models.ct2_convert import convert_whisper
from models.registry import resolve_weights
from models.whisper_ct2 import WhisperCT2Backend
from models.whisper_torch import PREFILL_FROM, WhisperTorchEngine
from tests.models.conftest import to_16k
from tests.speech import SENTENCES, japanese_wav, spoken_wav

MEASURE_TOLERANCE = 1e-3
"""avg_logprob and no_speech_prob against CTranslate2's: same weights in float32, only the
order of float operations differs (measured: about 2e-5)."""
WORD_TOLERANCE = 0.2
"""Seconds a word's start or end may differ from CTranslate2's: both warp cross-attention
of the same heads, from different kernels, so a boundary may move by a frame or a few."""
SHORT_PROMPT = "Stella, the store."
LONG_PROMPT = (
    "Notes from the meeting: Stella will bring the snow peas, the slabs of blue cheese "
    "and a small plastic snake from the store on Tuesday."
)

Decoded = tuple[str, list[tuple[float, float, tuple[int, ...]]], float | None, bool]


def decoded(result: WindowTranscript) -> Decoded:
    """What greedy decoding chose: language, each segment's times and tokens, the resume
    point and the silence verdict (the measures are floats, compared apart)."""
    segments = [(s.start, s.end, s.tokens) for s in result.segments]
    return result.language, segments, result.resume_at, result.silent


def assert_same_decoding(ours: WindowTranscript, theirs: WindowTranscript) -> None:
    assert decoded(ours) == decoded(theirs), (ours.text, theirs.text)
    assert ours.avg_logprob == pytest.approx(theirs.avg_logprob, abs=MEASURE_TOLERANCE)
    assert ours.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=MEASURE_TOLERANCE)
    assert ours.compression_ratio == pytest.approx(theirs.compression_ratio)
    assert ours.temperature == theirs.temperature


def run_to_end(
    engine: WhisperTorchEngine, done: dict[int, WindowTranscript] | None = None
) -> dict[int, WindowTranscript]:
    """Step until no row runs; every finished row's result, by row (each row once)."""
    done = {} if done is None else done
    while engine.running:
        for row, outcome in engine.step():
            assert not isinstance(outcome, BaseException), outcome
            assert row not in done, f"row {row} finished twice"
            done[row] = outcome
    return done


_ALONE: dict[tuple[int, int, float, DecodingOptions], WindowTranscript] = {}


def alone(engine: WhisperTorchEngine, item: TranscriptionItem) -> WindowTranscript:
    """``item`` decoded with nothing else in the engine (memoized: greedy decoding of the
    same audio, which the module's fixtures hold, gives the same result every time)."""
    key = (id(engine), id(item.audio), item.offset, item.options)
    if key not in _ALONE:
        assert item.options.temperature == 0
        (_ALONE[key],) = engine.transcribe_batch([item])
    return _ALONE[key]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One thread for each engine: on a small CPU shared with other work, two threads
    that wait for each other at every operator are slowed most by a busy neighbour
    (measured here: up to ten times, against two at most for one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    _ALONE.clear()
    yield
    _ALONE.clear()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("converted")


@pytest.fixture(scope="module")
def tiny_engine(cache_dir: Path) -> WhisperTorchEngine:
    converted = convert_whisper(Path(resolve_weights("embedded:tiny.en")), cache_dir)
    engine = WhisperTorchEngine(converted, device="cpu", dtype="float32", rows=8)
    engine.load()
    return engine


@pytest.fixture
def engine(tiny_engine: WhisperTorchEngine) -> Iterator[WhisperTorchEngine]:
    """The tiny.en engine, idle again after each test even when the test failed."""
    assert tiny_engine.running == 0
    yield tiny_engine
    tiny_engine.release(range(tiny_engine.rows))


@pytest.fixture(scope="module")
def greedy() -> WhisperCT2Backend:
    """CTranslate2 as the torch engine decodes: greedy, float32."""
    return _greedy_ct2("embedded:tiny.en")


def _greedy_ct2(weights: str) -> WhisperCT2Backend:
    backend = WhisperCT2Backend(
        resolve_weights(weights), device="cpu", compute_type="float32", cpu_threads=1, beam_size=1
    )
    backend.load()
    return backend


@pytest.fixture(scope="module")
def sentences(sentence_wavs: list[bytes]) -> list[np.ndarray]:
    return [to_16k(wav) for wav in sentence_wavs]


@pytest.fixture(scope="module")
def long_windows() -> list[np.ndarray]:
    """Two windows of about 30 s of several sentences each; the second is cut at 30 s,
    mid-speech, so Whisper's resume point comes into play."""
    first = to_16k(spoken_wav(*SENTENCES[:9]))
    second = to_16k(spoken_wav(*SENTENCES[5:], pause_seconds=1.0))
    assert 25 * SAMPLE_RATE < len(first) <= 30 * SAMPLE_RATE < len(second)
    return [first, second[: 30 * SAMPLE_RATE]]


# -- the same tokens as CTranslate2 --------------------------------------------------------


def test_every_window_decodes_to_ctranslate2s_greedy_tokens(
    engine: WhisperTorchEngine,
    greedy: WhisperCT2Backend,
    sentences: list[np.ndarray],
    long_windows: list[np.ndarray],
) -> None:
    assert len(engine.tokenizer.encode(" " + LONG_PROMPT)) + 1 > PREFILL_FROM  # block path
    assert len(engine.tokenizer.encode(" " + SHORT_PROMPT)) + 1 <= PREFILL_FROM  # step path
    plain = [TranscriptionItem(audio) for audio in [*sentences, *long_windows]]
    prompted = [
        TranscriptionItem(sentences[1], options=DecodingOptions(prompt=SHORT_PROMPT)),
        TranscriptionItem(long_windows[0], options=DecodingOptions(prompt=LONG_PROMPT)),
    ]
    # The torch engine takes them all in one go (prompts mixed with the rest, 8 rows at a
    # time); CTranslate2 needs one call per prompt length.
    ours = engine.transcribe_batch([*plain, *prompted])
    theirs = greedy.transcribe_batch(plain) + [greedy.transcribe_batch([p])[0] for p in prompted]
    assert ours[len(SENTENCES) + 1].resume_at is not None  # cut mid-speech: read again
    for n, (mine, reference) in enumerate(zip(ours, theirs, strict=True)):
        assert decoded(mine) == decoded(reference), (n, mine.text, reference.text)
        assert_same_decoding(mine, reference)


# -- continuous batching: a window decodes as it would alone ----------------------------------


def test_windows_joining_a_running_batch_decode_as_they_would_alone(
    engine: WhisperTorchEngine, sentences: list[np.ndarray], long_windows: list[np.ndarray]
) -> None:
    first = TranscriptionItem(long_windows[0])
    stepped_in = TranscriptionItem(sentences[2])
    prompted = TranscriptionItem(sentences[1], options=DecodingOptions(prompt=SHORT_PROMPT))
    prefilled = TranscriptionItem(sentences[9], options=DecodingOptions(prompt=LONG_PROMPT))
    expected = [alone(engine, item) for item in (first, stepped_in, prompted, prefilled)]

    assert engine.admit([(0, first)]) == []
    for _ in range(12):  # well into the first window's text
        assert engine.step() == []
    # Rows 3, 5 and 6 while row 0 runs: one plain, one with its prompt fed a token per
    # step, one with its prompt run as a block into its own row's cache.
    assert engine.admit([(3, stepped_in), (5, prompted), (6, prefilled)]) == []
    assert engine.running == 4 and engine.free_rows() == [1, 2, 4, 7]
    for _ in range(3):
        assert engine.step() == []
    assert engine.admit([(1, TranscriptionItem(sentences[4]))]) == []  # and one more
    done = run_to_end(engine)

    assert sorted(done) == [0, 1, 3, 5, 6]
    for row, reference in zip((0, 3, 5, 6), expected, strict=True):
        assert_same_decoding(done[row], reference)
    assert done[1].text == SENTENCES[4]


def test_a_row_that_finished_is_reused_by_the_next_window(
    engine: WhisperTorchEngine, sentences: list[np.ndarray], long_windows: list[np.ndarray]
) -> None:
    short, long, successor = (
        TranscriptionItem(sentences[4]),
        TranscriptionItem(long_windows[1]),
        TranscriptionItem(sentences[11]),
    )
    expected = [alone(engine, item) for item in (short, long, successor)]

    assert engine.admit([(0, short), (1, long)]) == []
    finished: list[tuple[int, WindowTranscript | BaseException]] = []
    while not finished and engine.running:
        finished = engine.step()
    assert [row for row, _ in finished] == [0]  # the sentence ends long before 30 s
    assert engine.running == 1 and 0 in engine.free_rows()
    first = finished[0][1]
    assert isinstance(first, WindowTranscript), first
    assert_same_decoding(first, expected[0])

    assert engine.admit([(0, successor)]) == []
    done = run_to_end(engine)
    assert sorted(done) == [0, 1]
    assert_same_decoding(done[0], expected[2])
    assert_same_decoding(done[1], expected[1])


def test_release_frees_a_row_at_once_and_the_row_can_be_admitted_again(
    engine: WhisperTorchEngine, sentences: list[np.ndarray], long_windows: list[np.ndarray]
) -> None:
    gone, stays = TranscriptionItem(long_windows[0]), TranscriptionItem(sentences[6])
    expected_stays, expected_gone = alone(engine, stays), alone(engine, gone)

    assert engine.admit([(0, gone), (1, stays)]) == []
    for _ in range(5):
        assert engine.step() == []
    engine.release([0])
    assert engine.running == 1 and 0 in engine.free_rows() and 1 not in engine.free_rows()
    engine.release([0, 4])  # releasing a free row is a no-op
    assert engine.running == 1

    done = run_to_end(engine)
    assert list(done) == [1]  # nothing ever comes back for the released row
    assert_same_decoding(done[1], expected_stays)
    assert engine.running == 0 and engine.free_rows() == list(range(engine.rows))

    assert engine.admit([(0, gone)]) == []  # its row starts clean
    assert_same_decoding(run_to_end(engine)[0], expected_gone)


def test_a_sampling_row_beside_a_greedy_row_leaves_it_greedy(
    engine: WhisperTorchEngine, sentences: list[np.ndarray], long_windows: list[np.ndarray]
) -> None:
    plain = TranscriptionItem(long_windows[0])
    hot = TranscriptionItem(long_windows[0], options=DecodingOptions(temperature=1.0))
    expected = alone(engine, plain)

    assert engine.admit([(0, hot), (1, plain), (2, hot)]) == []
    done = run_to_end(engine)
    assert_same_decoding(done[1], expected)
    sampled = [done[row] for row in (0, 2)]
    assert all(r.temperature == 1.0 for r in sampled)
    # At temperature 1 over 30 s of speech, sampling departs from the greedy choice
    # somewhere: if it did not, this test could not tell sampling from greedy rows.
    assert any(decoded(r) != decoded(expected) for r in sampled)


# -- multilingual: languages, tasks and prompts per row ---------------------------------------


@pytest.fixture(scope="module")
def base_engine(cache_dir: Path) -> WhisperTorchEngine:
    converted = convert_whisper(Path(resolve_weights("embedded:base")), cache_dir)
    engine = WhisperTorchEngine(converted, device="cpu", dtype="float32", rows=4)
    engine.load()
    assert engine.multilingual
    return engine


@pytest.fixture
def base(base_engine: WhisperTorchEngine) -> Iterator[WhisperTorchEngine]:
    assert base_engine.running == 0
    yield base_engine
    base_engine.release(range(base_engine.rows))


@pytest.fixture(scope="module")
def japanese() -> np.ndarray:
    return to_16k(japanese_wav())


def test_rows_of_other_languages_tasks_and_prompts_share_a_batch(
    base: WhisperTorchEngine,
    japanese: np.ndarray,
    sentences: list[np.ndarray],
) -> None:
    items = [
        TranscriptionItem(japanese, options=DecodingOptions(task="translate")),  # detected
        TranscriptionItem(japanese),  # transcribed, language detected
        TranscriptionItem(sentences[0], options=DecodingOptions(language="en")),
        # detected from the audio alone, though a prompt comes before the transcript
        TranscriptionItem(sentences[1], options=DecodingOptions(prompt=SHORT_PROMPT)),
    ]
    together = run_to_end_after_admitting(base, items)
    for item, mine in zip(items, together, strict=True):
        assert_same_decoding(mine, alone(base, item))
    translated, transcribed, given, prompted = together
    assert translated.language == transcribed.language == "ja"
    assert "park" in translated.text.lower() and "公園" in transcribed.text  # park
    assert given.language == prompted.language == "en"
    assert given.text == SENTENCES[0]


def run_to_end_after_admitting(
    engine: WhisperTorchEngine, items: Sequence[TranscriptionItem]
) -> list[WindowTranscript]:
    assert engine.admit(list(enumerate(items))) == []
    done = run_to_end(engine)
    return [done[row] for row in range(len(items))]


def test_an_item_that_cannot_start_fails_alone_at_admission(
    base: WhisperTorchEngine, sentences: list[np.ndarray]
) -> None:
    good = TranscriptionItem(sentences[0], options=DecodingOptions(language="en"))
    too_long = TranscriptionItem(np.zeros(30 * SAMPLE_RATE + 1, dtype=np.float32))
    unknown = TranscriptionItem(sentences[3], options=DecodingOptions(language="xx"))
    failed = base.admit([(0, too_long), (1, good), (2, unknown)])
    assert [row for row, _ in failed] == [0, 2]
    assert all(isinstance(error, ValueError) for _, error in failed)
    assert "30 seconds" in str(failed[0][1]) and "xx" in str(failed[1][1])
    assert base.running == 1 and base.free_rows() == [0, 2, 3]
    (occupied,) = base.admit([(1, good)])  # a running row is not free
    assert occupied[0] == 1 and "not free" in str(occupied[1])

    done = run_to_end(base)
    assert list(done) == [1] and done[1].text == SENTENCES[0]
    assert_same_decoding(done[1], alone(base, good))


# -- word timings and token log-probabilities ------------------------------------------------


def test_word_timings_are_ctranslate2s_within_a_fifth_of_a_second(
    engine: WhisperTorchEngine,
    greedy: WhisperCT2Backend,
    sentences: list[np.ndarray],
    long_windows: list[np.ndarray],
) -> None:
    asking = DecodingOptions(word_timestamps=True, token_logprobs=True)
    items = [
        TranscriptionItem(sentences[1], offset=12.0, options=asking),
        TranscriptionItem(long_windows[0], offset=30.0, options=asking),
    ]
    ours = engine.transcribe_batch(items)
    theirs = greedy.transcribe_batch(items)
    for item, mine, reference in zip(items, ours, theirs, strict=True):
        assert decoded(mine) == decoded(reference)
        my_words = [w for s in mine.segments for w in s.words]
        their_words = [w for s in reference.segments for w in s.words]
        assert [w.word for w in my_words] == [w.word for w in their_words]
        for a, b in zip(my_words, their_words, strict=True):
            assert abs(a.start - b.start) <= WORD_TOLERANCE, (a, b)
            assert abs(a.end - b.end) <= WORD_TOLERANCE, (a, b)
            assert 0.0 <= a.probability <= 1.0
        end_of_window = item.offset + len(item.audio) / SAMPLE_RATE
        assert item.offset <= my_words[0].start and my_words[-1].end <= end_of_window
        for before, after in itertools.pairwise(my_words):
            assert before.start <= before.end <= after.start <= after.end
        for segment, their_segment in zip(mine.segments, reference.segments, strict=True):
            tokens = segment.logprobs
            assert len(tokens) == len(segment.tokens)
            assert "".join(t.token for t in tokens) == segment.text
            assert all(t.logprob <= 0.0 for t in tokens)
            assert all(bytes(t.bytes) == t.token.encode() for t in tokens if t.token.isascii())
            their_logprobs = [t.logprob for t in their_segment.logprobs]
            assert [t.logprob for t in tokens] == pytest.approx(their_logprobs, abs=1e-3)


def test_without_asking_there_are_no_words_or_logprobs(
    engine: WhisperTorchEngine, sentences: list[np.ndarray]
) -> None:
    words_only = TranscriptionItem(sentences[5], options=DecodingOptions(word_timestamps=True))
    neither = TranscriptionItem(sentences[5])
    with_words, plain = engine.transcribe_batch([words_only, neither])
    assert all(s.words and not s.logprobs for s in with_words.segments)
    assert all(not s.words and not s.logprobs for s in plain.segments)
    assert decoded(with_words) == decoded(plain)


# -- what the engine needs ---------------------------------------------------------------------


def test_the_engine_needs_only_torch_transformers_tokenizers_and_numpy() -> None:
    """It runs on a bare GPU box; so does the benchmark that carries it there."""
    heavy = ["faster_whisper", "ctranslate2", "av", "msgspec", "litestar", "server"]
    code = (
        "import json, sys; import models.whisper_torch, benchmarks.gpu_whisper; "
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == []
