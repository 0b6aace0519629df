"""Hostile speech input leaves a real ``voxserve serve`` process's memory where it was.

A 600-character request (``"A. " * 200``, voice ``echo``, speed 0.25) took the server
from ~480 MiB to ~5.9 GiB of RSS, and kept it: espeak-ng reads each initial as a clause,
Piper ran the hundred equal rows in one forward pass, four times as long at that pace,
and onnxruntime's arena kept what it grew. Here the worst texts of that kind, at speed
0.25, go to both embedded engines (Piper and hibari) through the ``openai`` SDK, while
the server's RSS is sampled every 50 ms (``benchmarks.speech_memory``, which runs all
twenty hostile texts).

The bound, 600 MiB over the level before, is on the *peak*, so it also holds what one
forward pass may take while it runs. Measured with the fix on a busy 2-core machine:
a peak of +190 to +210 MiB; before it, the first text alone peaked at +5.4 GiB.
"""

from __future__ import annotations

from benchmarks.speech_memory import Case, run

MAX_GROWTH_MB = 600.0

CASES = (
    Case("initials", "A. " * 100, "echo", 0.25),  # ~100 equal clauses in a 300-char piece
    Case("abbreviations", "Dr. " * 75, "fable", 0.25),
    Case("i.e. on hibari", "i.e., " * 50, "alloy", 0.25),  # one 400-phoneme piece before
)


def test_slow_hostile_speech_keeps_the_servers_memory_bounded() -> None:
    report = run(CASES, max_delta_mb=MAX_GROWTH_MB, log=False)
    print(report)  # shown when an assertion fails
    for case in report["cases"]:
        assert case["status"] == 200, case
        assert case["audio_seconds"] > 10, case  # slow speech of every clause, not silence
    assert report["max_delta_mb"] < MAX_GROWTH_MB, report
    assert report["after_delta_mb"] < MAX_GROWTH_MB, report
