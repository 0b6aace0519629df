"""Where weights come from, which format they are in, and how the engine, device and
precision are chosen."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from models.ct2_convert import convert_whisper
from models.hardware import available_cpus, resolve_compute_type, resolve_device
from models.registry import (
    ModelLoadError,
    ModelSpec,
    build_engine,
    resolve_weights,
    weights_format,
)

TINY = "embedded:tiny.en"


@pytest.fixture(scope="module")
def transformers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en in transformers' format, as a hub repository such as openai/whisper-* holds it."""
    return convert_whisper(Path(resolve_weights(TINY)), tmp_path_factory.mktemp("converted"))


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


def test_the_format_is_read_from_the_files(transformers_dir: Path) -> None:
    assert weights_format(Path(resolve_weights(TINY))) == "ctranslate2"
    assert weights_format(transformers_dir) == "transformers"
    assert resolve_weights(str(transformers_dir)) == str(transformers_dir)


def test_a_directory_with_neither_format_is_refused(tmp_path: Path) -> None:
    """A config and a tokenizer, but weights that neither engine reads."""
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 64)
    with pytest.raises(
        ModelLoadError, match=r"neither CTranslate2's model\.bin nor a transformers"
    ):
        resolve_weights(str(tmp_path))
    with pytest.raises(ModelLoadError, match="holds no Whisper model"):
        build_engine(ModelSpec(id="w", weights=str(tmp_path), engine="torch"), rows=1)


def test_a_sharded_checkpoint_needs_every_shard_its_index_names(tmp_path: Path) -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    (tmp_path / "config.json").write_text("{}")
    weight_map = {"model.encoder.conv1.weight": shards[0], "proj_out.weight": shards[1]}
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / shards[0]).write_bytes(b"")
    with pytest.raises(ModelLoadError, match="model-00002-of-00002"):
        weights_format(tmp_path)
    (tmp_path / shards[1]).write_bytes(b"")
    assert weights_format(tmp_path) == "transformers"


def test_the_weights_choose_the_engine_unless_the_entry_does(
    transformers_dir: Path, tmp_path: Path
) -> None:
    """transformers weights run on torch (a running batch of rows), CTranslate2 weights on
    CTranslate2 (whole batches); ``engine = "torch"`` takes CTranslate2 weights too."""
    cache = str(tmp_path)
    hf = build_engine(ModelSpec(id="w", weights=str(transformers_dir), device="cpu"), cache, rows=3)
    assert hf.steps is not None and hf.whole is None
    assert hf.steps.rows == 3
    ct2 = build_engine(ModelSpec(id="w", weights=TINY, device="cpu"), cache, rows=3)
    assert ct2.whole is not None and ct2.steps is None
    converted = build_engine(
        ModelSpec(id="w", weights=TINY, engine="torch", device="cpu"), cache, rows=3
    )
    assert converted.steps is not None
    whole = build_engine(
        ModelSpec(id="w", weights=str(transformers_dir), device="cpu", batching="whole"),
        cache,
        rows=3,
    )
    assert whole.whole is not None and whole.steps is None


def test_ctranslate2_cannot_run_transformers_weights(transformers_dir: Path) -> None:
    spec = ModelSpec(id="w", weights=str(transformers_dir), engine="ctranslate2")
    with pytest.raises(
        ModelLoadError, match='transformers weights: serve them with engine "torch"'
    ):
        build_engine(spec, rows=1)


def test_the_torch_engine_refuses_a_precision_it_has_not(transformers_dir: Path) -> None:
    spec = ModelSpec(id="w", weights=str(transformers_dir), device="cpu", compute_type="int8")
    with pytest.raises(ModelLoadError, match="model 'w'"):
        build_engine(spec, rows=1)
