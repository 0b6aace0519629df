"""Every response format, timestamp granularity and ``include`` through the official SDK.

The golden files under ``tests/golden/`` hold what the embedded model answers for a
generated clip; set ``VOXSERVE_UPDATE_GOLDENS=1`` to rewrite them after a
deliberate change. Texts and numbering must match exactly; times and Whisper's
measures may move by a hair between CPUs (int8 kernels differ), so numbers are
compared within small tolerances. Both engines must match the same files: the torch
engine (greedy, float32) writes the clip's text and cues exactly as CTranslate2 (beam
search, int8) does, and its times and measures fall inside those tolerances.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Engine, LiveServer
from tests.speech import SENTENCES, duration_of, spoken_wav, words

GOLDEN = Path(__file__).parent.parent / "golden"
CLIP_TEXTS = (SENTENCES[0], SENTENCES[5], SENTENCES[13])
TIME_TOLERANCE = 0.061
"""Three timestamp tokens of 20 ms."""
MEASURE_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def clip() -> bytes:
    return spoken_wav(*CLIP_TEXTS, pause_seconds=0.8)


def _golden(name: str, actual: str, engine: Engine) -> str:
    """The golden file, rewritten first when asked; only the default engine (CTranslate2)
    writes them, and the torch engine must match them within the same tolerances."""
    path = GOLDEN / name
    if os.environ.get("VOXSERVE_UPDATE_GOLDENS") == "1" and engine == "ctranslate2":
        path.write_text(actual)
    return path.read_text()


_TIME = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)")


def _seconds(match: re.Match[str]) -> float:
    h, m, s, ms = (int(g) for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def _assert_subtitles_match(actual: str, expected: str) -> None:
    """Line by line: identical text, and times within tolerance in the same format."""
    actual_lines, expected_lines = actual.split("\n"), expected.split("\n")
    assert len(actual_lines) == len(expected_lines), actual
    for got, want in zip(actual_lines, expected_lines, strict=True):
        if "-->" not in want:
            assert got == want
            continue
        assert _TIME.sub("T", got) == _TIME.sub("T", want)  # same shape and markers
        for g, w in zip(_TIME.finditer(got), _TIME.finditer(want), strict=True):
            assert abs(_seconds(g) - _seconds(w)) <= TIME_TOLERANCE, (got, want)


def _assert_json_close(actual: Any, expected: Any, path: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and set(actual) == set(expected), path
        for key in expected:
            _assert_json_close(actual[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), path
        for n, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_json_close(a, e, f"{path}[{n}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        key = path.rsplit(".", 1)[-1]
        tolerance = TIME_TOLERANCE if key in ("start", "end") else MEASURE_TOLERANCE
        if key == "compression_ratio":
            tolerance = 0.05
        assert isinstance(actual, int | float) and abs(actual - expected) <= tolerance, path
    else:
        assert actual == expected, path


def test_srt_matches_the_golden_file(
    stt_client: openai.OpenAI, stt_engine: Engine, clip: bytes
) -> None:
    srt = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="srt"
    )
    assert isinstance(srt, str)
    _assert_subtitles_match(srt, _golden("clip.srt", srt, stt_engine))
    assert srt.startswith("1\n00:00:00,000 --> ")
    assert [line for line in srt.split("\n") if line.isdigit()] == ["1", "2", "3"]


def test_vtt_matches_the_golden_file(
    stt_client: openai.OpenAI, stt_engine: Engine, clip: bytes
) -> None:
    vtt = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="vtt"
    )
    assert isinstance(vtt, str)
    _assert_subtitles_match(vtt, _golden("clip.vtt", vtt, stt_engine))
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> ")


def test_verbose_json_matches_the_golden_file(
    stt_server: LiveServer, stt_engine: Engine, clip: bytes
) -> None:
    with stt_server.http() as http:
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip)},
            data={
                "model": "whisper-1",
                "response_format": "verbose_json",
                "timestamp_granularities[]": ["segment", "word"],
            },
        )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    actual = response.json()
    expected = json.loads(
        _golden("clip.verbose.json", json.dumps(actual, indent=1) + "\n", stt_engine)
    )
    _assert_json_close(actual, expected)
    assert actual["task"] == "transcribe" and actual["language"] == "english"
    assert actual["text"] == " ".join(CLIP_TEXTS)
    assert actual["usage"] == {"type": "duration", "seconds": math.ceil(duration_of(clip))}


def test_verbose_json_segments_carry_whispers_real_measures(
    stt_client: openai.OpenAI, clip: bytes
) -> None:
    result = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="verbose_json"
    )
    assert result.words is None  # not asked for
    assert result.duration == pytest.approx(duration_of(clip), abs=0.01)
    segments = result.segments or []
    assert [s.id for s in segments] == list(range(len(segments)))
    assert words(" ".join(s.text for s in segments)) == words(" ".join(CLIP_TEXTS))
    for segment in segments:
        assert segment.tokens and all(0 <= t < 50257 for t in segment.tokens)
        assert segment.temperature == 0.0
        assert -1.0 < segment.avg_logprob < 0.0  # clean speech: confident, never exactly 0
        assert 0.5 < segment.compression_ratio < 2.4
        assert 0.0 <= segment.no_speech_prob < 0.5
        assert segment.seek == 0  # one window, starting at 0
        assert 0.0 <= segment.start < segment.end <= result.duration


def test_word_granularity_alone_gives_words_and_no_segments(
    stt_client: openai.OpenAI, clip: bytes
) -> None:
    result = stt_client.audio.transcriptions.create(
        model="whisper-1",
        file=("clip.wav", clip),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert result.segments is None
    found = result.words or []
    assert [w.word for w in found] == [w.word for w in found if w.word == w.word.strip()]
    assert words(" ".join(w.word for w in found)) == words(result.text)
    for before, after in itertools.pairwise(found):
        assert before.start <= before.end <= after.start <= after.end
    assert found[0].start >= 0.0 and found[-1].end <= result.duration


def test_json_and_text_and_usage(stt_client: openai.OpenAI, clip: bytes) -> None:
    result = stt_client.audio.transcriptions.create(model="whisper-1", file=("clip.wav", clip))
    assert words(result.text) == words(" ".join(CLIP_TEXTS))
    assert result.usage is not None and result.usage.type == "duration"
    assert result.usage.seconds == math.ceil(duration_of(clip))
    assert result.logprobs is None  # not asked for
    text = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), response_format="text"
    )
    assert text == result.text + "\n"


def test_include_logprobs_gives_every_token_of_the_text(
    stt_client: openai.OpenAI, clip: bytes
) -> None:
    result = stt_client.audio.transcriptions.create(
        model="whisper-1", file=("clip.wav", clip), include=["logprobs"]
    )
    tokens = result.logprobs or []
    assert len(tokens) >= len(words(result.text))
    assert "".join(t.token or "" for t in tokens).strip() == result.text
    for token in tokens:
        assert token.logprob is not None and token.logprob <= 0.0
        assert bytes(int(b) for b in token.bytes or []).decode() == token.token
    # Clean speech: most tokens are near-certain, and some are not quite.
    probabilities = [math.exp(t.logprob or 0.0) for t in tokens]
    assert sum(p > 0.9 for p in probabilities) > len(tokens) // 2
    assert min(probabilities) < 0.99
