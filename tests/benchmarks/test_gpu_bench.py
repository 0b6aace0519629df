"""The GPU benchmark, end to end on the CPU with toy shapes, exactly as a GPU box runs it.

``benchmarks.gpu_prepare`` writes the bundle on a full install and
``benchmarks.gpu_whisper`` reads it on a box with only torch and transformers; both
run here as the commands they are (subprocesses, from the repository root), so that a
GPU session, which is short and costly, never finds a broken script or a JSON
without the sections its report is read from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEVELS = (1, 4)
HANG_GUARD_S = 1800
"""The benchmark's CPU run takes a couple of minutes alone and several times that on a
busy machine; the bound only turns a real hang into a failure."""


def run_module(module: str, *args: str | Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    run_module(
        "benchmarks.gpu_prepare", "--out", out, "--cache", tmp_path_factory.mktemp("prepare")
    )
    return out


@pytest.fixture(scope="module")
def report(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = bundle / "r.json"
    run_module(
        "benchmarks.gpu_whisper",
        *("--bundle", bundle, "--device", "cpu", "--shapes", "tiny", "--rows", "8"),
        *("--concurrency", *map(str, LEVELS), "--windows-per-client", "2"),
        *("--mixed-windows", "8", "--dtypes", "float32", "--out", out),
        *("--cache", tmp_path_factory.mktemp("bench")),
    )
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_the_bundle_holds_what_the_gpu_box_needs(bundle: Path) -> None:
    assert {p.name for p in bundle.iterdir()} >= {
        "tiny.en-int8",
        "base-tokenizer.json",
        "speech.npz",
        "expected.json",
    }
    assert {p.name for p in (bundle / "tiny.en-int8").iterdir()} >= {
        "model.bin",
        "config.json",
        "tokenizer.json",
    }
    expected = json.loads((bundle / "expected.json").read_text())
    assert len(expected["texts"]) == len(expected["seconds"]) == 8
    assert all(text.strip() for text in expected["texts"])
    # The CPU reference is CTranslate2's own greedy text from the same int8 file.
    assert expected["ctranslate2_equal"] is True
    assert expected["texts"] == expected["ctranslate2_texts"]


def test_the_report_has_every_section_the_gpu_run_is_read_from(report: dict[str, Any]) -> None:
    correctness = report["correctness"]
    assert correctness["windows"] == 8
    assert correctness["float32"] == {"text_equal": True, "mismatched": []}

    tiny = report["throughput"]["tiny"]
    assert set(tiny["levels"]) == {str(level) for level in LEVELS}
    for row in tiny["levels"].values():
        for mode in ("continuous", "whole"):
            assert row[mode]["windows_per_s"] > 0
            assert row[mode]["windows"] > 0 and row[mode]["steps"] > 0
        assert row["continuous_over_whole"] > 0

    kernels = tiny["kernels"]
    for table in ("encoder_ms_per_window", "decode_step_ms", "decode_step_ms_without_graph"):
        assert set(kernels[table]) == {"1", "8"}  # batch sizes up to --rows
        assert all(ms > 0 for ms in kernels[table].values())

    mixed = report["mixed"]
    assert mixed["windows"] == 8
    for mode in ("continuous", "whole"):
        assert mixed[mode]["windows_per_s"] > 0 and mixed[mode]["short_latency_p50_s"] > 0
