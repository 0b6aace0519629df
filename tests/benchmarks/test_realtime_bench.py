"""The realtime load benchmark: its scoring on known event logs, and one tiny run for real.

The scoring decides what the benchmark reports (which sentence an utterance belongs to,
which was lost, from when latency counts), so it is checked on hand-made session logs
whose right answers are known. The end-to-end run streams one session of real speech
into a real ``voxserve serve`` through the official SDK, exactly as the full benchmark
does, so that a long run never finds a broken script; it asserts the JSON's shape and
the transcripts, never the timings (which depend on the machine).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.realtime_load import (
    RATE,
    ClientConfig,
    Item,
    Recording,
    Sentence,
    SessionLog,
    build_recording,
    group,
    largest_real_time,
    parse_args,
    resample,
    score_session,
    speech_span,
    summarize,
    summarize_level,
)
from tests.speech import SENTENCES, speak, words

ROOT = Path(__file__).resolve().parents[2]
HANG_GUARD_S = 900
"""Seconds of a busy two-core machine; the bound only turns a hang into a failure."""

CHUNK = 960  # 40 ms at 24 kHz
CONFIG = ClientConfig(
    chunk_ms=40, silence_ms=500, language="en", sdk_append=False, drain_timeout_s=5.0
)


def at_ms(ms: float) -> int:
    return round(ms * RATE / 1000)


def session_log(sentence_spans_ms: Sequence[tuple[float, float]], items: list[Item]) -> SessionLog:
    """A log of a 20 s recording whose chunk k was sent at 100 + 0.04 k s."""
    sentences = tuple(
        Sentence(SENTENCES[n], at_ms(a), at_ms(b)) for n, (a, b) in enumerate(sentence_spans_ms)
    )
    recording = Recording(np.zeros(20 * RATE, np.int16), sentences, 0.0)
    log = SessionLog(recording, sent_at=[100 + 0.04 * k for k in range(500)])
    for item in items:
        log.items[item.item_id] = item
        if item.committed_at is not None:
            log.order.append(item.item_id)
    return log


def item(
    n: int, start_ms: float, end_ms: float, completed_at: float | None, text: str = ""
) -> Item:
    return Item(
        f"item_{n}",
        start_ms=start_ms,
        end_ms=end_ms,
        committed_at=None if completed_at is None else completed_at - 0.3,
        completed_at=completed_at,
        transcript=text or SENTENCES[n],
    )


def test_latency_counts_from_the_chunk_that_held_the_end_of_speech() -> None:
    # Speech ends at 2000 ms: in chunk 49 ([1960, 2000) ms), sent at 101.96 s.
    log = session_log([(300, 2000)], [item(0, 0, 2510, completed_at=102.76)])
    [utterance] = score_session(log, CHUNK, silence_s=0.5)
    assert utterance.latency_s == pytest.approx(0.8)
    assert utterance.after_silence_s == pytest.approx(0.3)
    assert utterance.commit_s == pytest.approx(0.3)
    assert (utterance.reference, utterance.hypothesis) == (SENTENCES[0], SENTENCES[0])
    assert not utterance.lost


def test_items_are_matched_to_sentences_by_position_not_by_count() -> None:
    spans = [(300, 2000), (3000, 5000), (6000, 8000), (9000, 11000)]
    items = [
        item(0, 0, 2500, 103.0),
        # The second sentence is never committed; an utterance over no sentence
        # (a cough) comes instead, then the third sentence cut in two.
        Item("item_cough", 5300, 5900, 105.0, completed_at=106.0, transcript="Hmm."),
        Item("item_2a", 5700, 6900, 107.0, completed_at=107.5, transcript="We will meet"),
        Item("item_2b", 7000, 8500, 108.5, completed_at=109.0, transcript="at the library."),
        # The fourth was committed but its transcription failed.
        Item("item_3", 8700, 11500, 111.6, failure="queue_full"),
    ]
    groups = group([(a, b) for a, b in spans], [(it.start_ms or 0, it.end_ms or 0) for it in items])
    assert groups == [([0], [0]), ([1], []), ([], [1]), ([2], [2, 3]), ([3], [4])]
    utterances = score_session(session_log(spans, items), CHUNK, silence_s=0.5)
    assert [(u.sentences, u.items, u.lost) for u in utterances] == [
        (1, 1, False),
        (1, 0, True),
        (0, 1, False),
        (1, 2, False),
        (1, 1, True),
    ]
    assert utterances[3].hypothesis == "We will meet at the library."
    assert utterances[3].latency_s == pytest.approx(109.0 - (100 + 0.04 * 199))
    assert utterances[4].latency_s is None


def test_a_level_with_a_lost_sentence_is_not_real_time() -> None:
    spans = [(300, 2000), (3000, 5000)]
    fast = session_log(spans, [item(0, 0, 2500, 102.5), item(1, 2700, 5500, 105.5)])
    lossy = session_log(spans, [item(0, 0, 2500, 102.5)])
    assert summarize_level([fast], CONFIG, 1.5, "speech_end")["real_time"]
    level = summarize_level([fast, lossy], CONFIG, 1.5, "speech_end")
    assert level["lost_sentences"] == 1
    lost_words, all_words = len(words(SENTENCES[1])), len(words(SENTENCES[0] + SENTENCES[1]))
    assert level["wer"] == pytest.approx(lost_words / (2 * all_words), abs=1e-3)
    assert not level["real_time"]
    assert level["latency_s"]["max"] == pytest.approx(0.54)
    slow = session_log(spans, [item(0, 0, 2500, 104.0), item(1, 2700, 5500, 107.0)])
    assert not summarize_level([slow], CONFIG, 1.5, "speech_end")["real_time"]
    assert summarize_level([slow], CONFIG, 1.5, "after_silence")["real_time"] is False
    assert summarize_level([slow], CONFIG, 2.0, "after_silence")["real_time"]


def test_the_climb_stops_at_its_first_level_that_is_not_real_time() -> None:
    def levels(*passes: bool) -> dict[str, Any]:
        return {str(n): {"real_time": ok} for n, ok in zip((1, 2, 4, 8), passes, strict=False)}

    assert largest_real_time(levels(True, True, False)) == 2
    assert largest_real_time(levels(True, False, True)) == 1
    assert largest_real_time(levels(False)) == 0
    assert largest_real_time(levels(True, True, True, True)) == 8


def test_the_targets_are_judged_on_the_largest_real_time_levels() -> None:
    args = parse_args([])

    def summary(batching: int, unbatched: int) -> dict[str, Any]:
        return summarize(
            {
                "batching": {"largest_real_time_sessions": batching},
                "max_batch_size=1": {"largest_real_time_sessions": unbatched},
            },
            args,
        )

    met = summary(12, 8)
    assert met["ratio"] == 1.5 and met["target_met"] is True
    assert summary(12, 9)["targets"]["ratio_vs_unbatched"]["pass"] is False
    assert summary(4, 2)["targets"]["sessions_batching"]["pass"] is False
    never = summary(2, 0)  # batching off never kept up: no ratio to judge
    assert never["ratio"] is None and never["targets"]["ratio_vs_unbatched"]["pass"] is None
    assert never["target_met"] is False


def test_each_sentence_lies_where_the_recording_says_it_is_spoken() -> None:
    samples, rate = speak(SENTENCES[0])
    at_24k = resample(samples, rate)
    assert abs(len(at_24k) - len(samples) * RATE / rate) <= 2
    recording = build_recording(8.0, random.Random(1), silence_s=0.5)
    audio = recording.samples.astype(np.float64)
    for sentence in recording.sentences:
        assert sentence.text in SENTENCES
        spoken = audio[sentence.start : sentence.end]
        assert np.sqrt((spoken[:240] ** 2).mean()) > 300  # speech starts at once
        for quiet in (
            audio[sentence.start - 2400 : sentence.start],
            audio[sentence.end : sentence.end + 2400],
        ):  # 10 ms frames quieter than -40 dBFS
            assert np.sqrt((quiet.reshape(-1, 240) ** 2).mean(1)).max() < 328
        assert speech_span(recording.samples[sentence.start : sentence.end]) == (
            0,
            sentence.end - sentence.start,
        )
    assert recording.seconds >= 8.0 + 0.5
    assert 0 <= recording.offset_s < 2.0


def test_one_real_session_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "realtime.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.realtime_load"),
            *("--sessions", "1", "--seconds", "5", "--configs", "batching", "--out", str(out)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert result["benchmark"] == "realtime_load"
    assert result["machine"]["cpu_count"] >= 1
    config = result["configs"]["batching"]
    level = config["levels"]["1"]
    assert level["sentences"] >= 2
    assert level["completed"] == level["items"] == level["sentences"]
    assert level["lost_sentences"] == level["extra_utterances"] == 0
    assert level["wer"] <= 0.05, level["mismatches"]
    assert level["errors"] == [] and level["failures"] == {}
    assert level["latency_s"]["p50"] > 0.5  # the VAD waits out 500 ms of silence first
    assert level["after_silence_s"]["p50"] == pytest.approx(level["latency_s"]["p50"] - 0.5)
    assert level["mean_batch_size"] == 1.0
    assert level["server_cpu_s"] > 0 and level["client_cpu_s"] > 0
    assert config["warmup"]["completed"] >= 1
    assert config["client"]["sdk_append_cpu_us"] > 0
    assert config["server_log"]["tracebacks"] == 0
    assert config["largest_real_time_sessions"] in (0, 1)
    summary = result["summary"]
    assert set(summary["targets"]) == {"sessions_batching", "ratio_vs_unbatched"}
    assert isinstance(summary["target_met"], bool)
