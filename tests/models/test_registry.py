"""Where weights come from, and how the device and precision are chosen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.hardware import available_cpus, resolve_compute_type, resolve_device
from models.registry import ModelLoadError, resolve_weights


def test_embedded_weights_resolve_to_a_packaged_ctranslate2_model() -> None:
    path = Path(resolve_weights("embedded:tiny.en"))
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()


def test_a_local_model_directory_is_used_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(b"")
    assert resolve_weights(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("embedded:large-v9", "unknown embedded weights"),
        ("/no/such/model/dir", "does not exist"),
        ("./relative/missing", "does not exist"),
    ],
)
def test_unloadable_weights_are_named_in_the_error(weights: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        resolve_weights(weights)


def test_a_directory_without_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.bin"):
        resolve_weights(str(tmp_path))


def test_auto_is_the_cpu_with_int8_here_and_float16_on_a_gpu() -> None:
    assert resolve_device("auto") == "cpu"  # CI machines have no GPU
    assert resolve_compute_type("auto", "cpu") == "int8"
    assert resolve_compute_type("auto", "cuda") == "float16"
    assert resolve_compute_type("int8_float16", "cuda") == "int8_float16"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    assert 1 <= available_cpus() <= len(os.sched_getaffinity(0))
