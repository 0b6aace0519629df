"""The CPU levers benchmark: the arithmetic its verdict rests on, and one tiny real run.

What decides the figures is checked without timing anything: how many frames each
short-encoder policy gives the encoder, which clips are packed together and where a
packed window is cut back into its clips, how work is dealt to workers, the ceiling and
ratio math, and which levers the verdict keeps. One run of every section on two short
Piper clips checks the report's shape and that the stages ran pinned to one CPU.
"""

from __future__ import annotations

import json
import os
from functools import partial
from typing import Any

import pytest

from benchmarks.cpu_levers import (
    FRAMES_PER_SECOND,
    QUICK,
    RATE,
    Plan,
    best_run,
    ceiling,
    gap_middle,
    interleaved,
    packable_pairs,
    parse_args,
    plan_from,
    policy_frames,
    ratio,
    round_robin,
    run_levers,
    split_packed,
    verdict,
)
from benchmarks.recorded_speech import RecordedClip
from models.whisper_ct2 import WINDOW_FRAMES
from tests.speech import SENTENCES, spoken_wav

# -- short-encoder policies ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "frames", "expected"),
    [
        ("full", 701, WINDOW_FRAMES),
        ("exact", 700, 700),
        ("exact", 701, 702),  # the encoder needs an even count
        ("pad2s", 700, 900),
        ("pad2s", 701, 902),
        ("pad2s", 2900, WINDOW_FRAMES),  # never past 30 s
        ("bucket10s", 1, 1000),
        ("bucket10s", 1000, 1000),
        ("bucket10s", 1001, 2000),
        ("bucket10s", 2999, 3000),
        ("exact", 3000, 3000),
    ],
)
def test_policies_give_even_frame_counts_within_one_window(
    policy: str, frames: int, expected: int
) -> None:
    assert policy_frames(policy, frames) == expected
    assert expected % 2 == 0
    assert FRAMES_PER_SECOND == 100


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown policy"):
        policy_frames("pad1s", 700)


# -- packing -------------------------------------------------------------------------------


def test_consecutive_clips_are_paired_only_when_both_and_the_gap_fit_in_30_s() -> None:
    second = RATE
    gap = 2 * second
    lengths = [10 * second, 12 * second, 20 * second, 9 * second, 14 * second, 14 * second, 5]
    # 10 + 2 + 12 = 24 s fits; 20 + 2 + 9 = 31 s does not; 14 + 2 + 14 = 30 s just fits;
    # the odd last clip has no partner.
    assert packable_pairs(lengths, gap=gap) == [(0, 1), (4, 5)]
    assert packable_pairs([], gap=gap) == []
    assert packable_pairs([second], gap=gap) == []


def test_a_packed_window_is_cut_at_the_middle_of_the_gap() -> None:
    assert gap_middle(7 * RATE, 2 * RATE) == 8.0


def test_segments_are_split_back_by_their_start() -> None:
    segments = [
        (0.0, " How do I get to Dublin?"),
        (3.2, " Well, I wouldn't start from here."),
        (8.0, " The news at nine."),  # starts at the cut: the second clip's
        (11.5, " Good evening."),
    ]
    assert split_packed(segments, 8.0) == (
        "How do I get to Dublin? Well, I wouldn't start from here.",
        "The news at nine. Good evening.",
    )


def test_a_segment_across_the_gap_goes_whole_to_the_first_clip() -> None:
    """Whisper wrote no timestamp in the gap: the first clip gets both texts, the second
    none, and both then differ from their texts alone (which the count must show)."""
    first, second = split_packed([(0.5, " One two. Three four.")], 6.0)
    assert (first, second) == ("One two. Three four.", "")
    assert split_packed([], 6.0) == ("", "")


# -- workers, ratios, timing ---------------------------------------------------------------


def test_windows_are_dealt_to_workers_in_turn() -> None:
    assert round_robin(8, 2) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert round_robin(3, 2) == [[0, 2], [1]]
    assert round_robin(1, 2) == [[0], []]
    assert sorted(i for share in round_robin(8, 3) for i in share) == list(range(8))


def test_the_ceiling_counts_the_encoder_on_both_sides() -> None:
    # 8 windows: encoder 4 s either way; decoding 3 s singly, 1 s as a batch.
    assert ceiling(4.0, 3.0, 1.0) == 1.4
    assert ratio(3.0, 1.0) == 3.0
    assert ratio(1.0, 3.0) == 0.333
    # With no decoder saving there is nothing to gain, whatever the encoder costs.
    assert ceiling(4.0, 2.0, 2.0) == 1.0


def test_best_run_warms_up_once_and_returns_the_last_result() -> None:
    calls: list[int] = []

    def work() -> int:
        calls.append(len(calls))
        return len(calls)

    seconds, result = best_run(work, 3)
    assert len(calls) == 4  # one warm-up, three timed
    assert result == 4
    assert seconds >= 0.0


def test_works_compared_take_turns_so_that_drift_weighs_on_each_alike() -> None:
    calls: list[str] = []

    def work(name: str) -> str:
        calls.append(name)
        return f"{name}{calls.count(name)}"

    runs = interleaved({"a": partial(work, "a"), "b": partial(work, "b")}, 2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-ups, then one of each per round
    assert {name: result for name, (_, result) in runs.items()} == {"a": "a3", "b": "b3"}


def test_quick_is_the_small_plan_and_flags_override_it() -> None:
    assert plan_from(parse_args(["--quick"])) == QUICK
    assert plan_from(parse_args([])) == Plan()
    assert Plan().timed_clips == 8 and Plan().repeats == 3 and Plan().text_clips is None
    assert plan_from(parse_args(["--quick", "--repeats", "2"])).repeats == 2


# -- the verdict ---------------------------------------------------------------------------


def report_with(*, batch_identical: int, packed_identical: int) -> dict[str, Any]:
    """The sections the verdict reads, as a real run shapes them."""
    return {
        "encoder_micro_batch": {
            "threads": {
                "1": {
                    "micro_batches": {
                        "1": {"ms_per_window": 500.0, "bitwise_identical_to_1": True},
                        "2": {"ms_per_window": 520.0, "bitwise_identical_to_1": True},
                    }
                }
            }
        },
        "decoder_batch": {
            "threads": {
                "1": {
                    "5": {
                        "windows": 8,
                        "identical_tokens": batch_identical,
                        "ceiling": 1.3,
                        "decode_ratio": 2.5,
                    }
                }
            }
        },
        "short_encoder": {
            "clips": 16,
            "full_window_encoder_ms": 500.0,
            "policies": {
                "exact": {"encoder_ms": 60.0, "identical_to_full_window": 14},
                "pad2s": {"encoder_ms": 100.0, "identical_to_full_window": 16},
            },
        },
        "packing": {
            "clips": 16,
            "windows_saved": 8,
            "identical_to_alone": packed_identical,
            "time_ratio": 1.4,
        },
    }


def test_the_verdict_keeps_only_levers_that_keep_every_text_and_gain() -> None:
    result = verdict(report_with(batch_identical=8, packed_identical=16))
    levers = result["levers"]
    assert levers["encoder_micro_batch_threads_1"] == {
        "holds_exact_text": True,
        "best_micro_batch": 1,
        "gain": 1.0,
    }
    assert levers["short_encoder_exact"] == {"holds_exact_text": False, "gain": 8.333}
    assert levers["packing"]["gain"] == 1.4  # measured time, not the windows' 2.0
    assert levers["packing"]["encoder_windows_gain"] == 2.0
    # The micro-batch gains nothing; the exact-length encoder changes two texts.
    assert result["keep"] == ["decoder_batch_beam_5_threads_1", "short_encoder_pad2s", "packing"]


def test_one_changed_text_drops_a_lever_whatever_it_gains() -> None:
    result = verdict(report_with(batch_identical=7, packed_identical=15))
    assert not result["levers"]["decoder_batch_beam_5_threads_1"]["holds_exact_text"]
    assert not result["levers"]["packing"]["holds_exact_text"]
    assert result["keep"] == ["short_encoder_pad2s"]


# -- one tiny real run ---------------------------------------------------------------------


def piper_clip(*texts: str) -> RecordedClip:
    wav = spoken_wav(*texts)
    return RecordedClip(wav=wav, source="piper", start_s=0.0, seconds=0.0)


def test_a_quick_run_reports_every_section_with_the_stages_pinned_to_one_cpu() -> None:
    clips = [piper_clip(*SENTENCES[0:2]), piper_clip(*SENTENCES[2:4])]
    report = run_levers(clips, QUICK)
    json.dumps(report)  # one JSON document

    assert report["setup"]["timed_clips"] == 2 and report["setup"]["repeats"] == 1
    assert report["setup"]["ctranslate2"] and report["setup"]["faster_whisper"]

    stages = report["stages"]
    assert stages["pinned_cpus"] == [max(os.sched_getaffinity(0))]
    assert set(stages["stages"]) == {
        "decode_upload",
        "loudness_scan",
        "vad",
        "features",
        "encoder",
        "decoder_beam_5",
        "decoder_beam_1",
        "direct_beam_5",
        "direct_beam_1",
    }
    assert all(len(row["per_clip_ms"]) == 2 for row in stages["stages"].values())

    threads = report["encoder_micro_batch"]["threads"]
    assert set(threads["1"]["micro_batches"]) == {"1", "2"}
    assert threads["1"]["micro_batches"]["1"]["bitwise_identical_to_1"] is True
    for beams in report["decoder_batch"]["threads"].values():
        assert set(beams) == {"5", "1"}
        for row in beams.values():
            assert 0 <= row["identical_tokens"] <= row["windows"] == 2
            assert row["ceiling"] > 0
    if len(os.sched_getaffinity(0)) >= 2:
        configs = report["workers_vs_threads"]["configs"]
        assert len(configs) == 4
        assert configs[report["workers_vs_threads"]["baseline"]]["speedup"] == 1.0

    short = report["short_encoder"]
    assert short["clips"] == 2 and set(short["policies"]) == {"exact", "pad2s", "bucket10s"}
    packing = report["packing"]
    assert packing["pairs"] == 1 and packing["windows_saved"] == 1
    assert packing["timed_pairs"] == 1
    assert 0 <= packing["identical_to_alone"] <= 2

    assert set(report["verdict"]["levers"]) >= {"packing", "short_encoder_pad2s"}
    assert set(report["verdict"]["keep"]) <= set(report["verdict"]["levers"])
