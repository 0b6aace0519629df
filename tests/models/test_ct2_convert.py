"""models.ct2_convert on the real embedded weights, checked against CTranslate2 itself.

The converted transformers model must compute what CTranslate2 computes: the encoder to
within float rounding, and greedy decoding to the very same token ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import numpy.typing as npt
import pytest
import torch
from ctranslate2.specs import common_spec, model_spec, whisper_spec
from faster_whisper.audio import decode_audio, pad_or_trim
from faster_whisper.feature_extractor import FeatureExtractor
from transformers import WhisperConfig, WhisperForConditionalGeneration

from models.ct2_convert import (
    MANIFEST,
    CT2Model,
    convert_whisper,
    quantize_int8,
    read_ct2_model,
    whisper_hf_checkpoint,
    write_ct2_model,
)
from models.registry import resolve_weights
from tests.speech import SENTENCES, spoken_wav

Features = npt.NDArray[np.float32]

RELATIVE_TOLERANCE = 2e-4
"""Largest encoder difference allowed, as a fraction of the largest output (12 to 24 here).

Both engines compute in float32 from identical weights; only the order of float operations
differs. Measured: tiny.en 5e-5 (4e-6 of its range), base 1.3e-3 (5e-5 of its range, in a
few outlier channels). A misplaced weight or bias gives differences of order 1.
"""
MEAN_TOLERANCE = 1e-5  # measured: about 2e-6 for both models

TINY_EN_PROMPT = [50257, 50362]  # <|startoftranscript|> <|notimestamps|>
CT2_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return Path(resolve_weights("embedded:tiny.en"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> CT2Model:
    return read_ct2_model(tiny_dir / "model.bin")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def converted_tiny(tiny_dir: Path, cache_dir: Path) -> Path:
    return convert_whisper(tiny_dir, cache_dir)


@pytest.fixture(scope="module")
def hf_tiny(converted_tiny: Path) -> WhisperForConditionalGeneration:
    return _load_hf(converted_tiny)


@pytest.fixture(scope="module")
def ct2_tiny(tiny_dir: Path) -> Any:
    return ctranslate2.models.Whisper(
        str(tiny_dir), device="cpu", compute_type="float32", intra_threads=2
    )


@pytest.fixture(scope="module")
def windows() -> list[Features]:
    """Two windows of real speech: two sentences (7 s) and nine sentences (26 s)."""
    return [_features(SENTENCES[:2]), _features(SENTENCES[2:11])]


def _features(texts: tuple[str, ...]) -> Features:
    """Log-mel features as models/whisper_ct2.py computes them, with a batch axis."""
    audio = decode_audio(io.BytesIO(spoken_wav(*texts)), sampling_rate=16000)
    features = pad_or_trim(FeatureExtractor(feature_size=80)(audio)[..., :-1])
    return np.ascontiguousarray(features[None], dtype=np.float32)


def _load_hf(directory: Path) -> WhisperForConditionalGeneration:
    model: WhisperForConditionalGeneration = WhisperForConditionalGeneration.from_pretrained(
        directory, dtype=torch.float32
    )
    model.train(False)
    return model


def _hf_encode(model: WhisperForConditionalGeneration, features: Features) -> Features:
    with torch.inference_mode():
        hidden = model.model.encoder(torch.from_numpy(features)).last_hidden_state
    return np.asarray(hidden.numpy(), dtype=np.float32)


def _ct2_encode(model: Any, features: Features) -> Features:
    return np.asarray(model.encode(ctranslate2.StorageView.from_array(features)), np.float32)


def _assert_close(ours: Features, theirs: Features) -> None:
    assert ours.shape == theirs.shape
    difference = np.abs(ours - theirs)
    assert difference.max() < RELATIVE_TOLERANCE * np.abs(theirs).max()
    assert difference.mean() < MEAN_TOLERANCE


def _hf_greedy(
    model: WhisperForConditionalGeneration, features: Features, prompt: list[int]
) -> list[int]:
    """Argmax decoding with no logits processing, recomputing the whole prefix each step."""
    tokens = list(prompt)
    end_of_text = model.config.eos_token_id
    with torch.inference_mode():
        encoded = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        while len(tokens) < model.config.max_target_positions:
            hidden = model.model.decoder(
                input_ids=torch.tensor([tokens]), encoder_hidden_states=encoded, use_cache=False
            ).last_hidden_state
            token = int(model.proj_out(hidden[0, -1]).argmax())
            if token == end_of_text:
                return tokens[len(prompt) :]
            tokens.append(token)
    raise AssertionError("greedy decoding never ended")


def _ct2_greedy(model: Any, features: Features, prompt: list[int]) -> list[int]:
    (result,) = model.generate(
        ctranslate2.StorageView.from_array(features),
        [prompt],
        beam_size=1,
        suppress_blank=False,
        suppress_tokens=[],
        max_length=448,
    )
    return list(result.sequences_ids[0])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ct2_own_int8(model: CT2Model, path: Path) -> None:
    """``model`` quantized and written by CTranslate2's own spec code (its converter's path)."""
    heads = int(model.variables["encoder/num_heads"])
    layers = len({n.split("/")[1] for n in model.variables if n.startswith("encoder/layer_")})
    spec = whisper_spec.WhisperSpec(layers, heads, layers, heads)
    for name, value in model.variables.items():
        scope, attribute = model_spec._parent_scope(name)
        setattr(model_spec.index_spec(spec, scope), attribute, np.array(value))
    for name in spec.variables():  # settings newer than this file: leave them out, as it does
        if name not in model.variables:
            scope, attribute = model_spec._parent_scope(name)
            setattr(model_spec.index_spec(spec, scope), attribute, model_spec.OPTIONAL)
    model_spec.LayerSpec.validate(spec)  # the model's own validate wants a vocabulary too
    spec.optimize(quantization="int8")
    spec._serialize(str(path))


def test_read_then_write_gives_the_same_bytes(
    tiny_dir: Path, tiny: CT2Model, tmp_path: Path
) -> None:
    assert (tiny.spec, tiny.revision) == ("WhisperSpec", 3)
    assert tiny.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    projection = tiny.variables["decoder/projection/weight"]
    assert projection is tiny.variables["decoder/embeddings/weight"]
    assert projection.dtype == np.float16 and projection.shape == (51864, 384)
    assert int(tiny.variables["encoder/num_heads"]) == 6
    write_ct2_model(tiny, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == (tiny_dir / "model.bin").read_bytes()


def test_encoder_equals_ctranslate2(
    hf_tiny: WhisperForConditionalGeneration, ct2_tiny: Any, windows: list[Features]
) -> None:
    for features in windows:
        ours = _hf_encode(hf_tiny, features)
        assert ours.shape == (1, 1500, 384)
        _assert_close(ours, _ct2_encode(ct2_tiny, features))


def test_greedy_tokens_equal_ctranslate2(
    hf_tiny: WhisperForConditionalGeneration, ct2_tiny: Any, windows: list[Features]
) -> None:
    for features in windows:
        expected = _ct2_greedy(ct2_tiny, features, TINY_EN_PROMPT)
        assert len(expected) > 20
        assert _hf_greedy(hf_tiny, features, TINY_EN_PROMPT) == expected


def test_int8_copy_is_what_ctranslate2_writes_and_converts_exactly(
    tiny_dir: Path, tiny: CT2Model, cache_dir: Path, tmp_path: Path, windows: list[Features]
) -> None:
    int8 = quantize_int8(tiny)
    int8_dir = tmp_path / "tiny.en-int8"
    int8_dir.mkdir()
    write_ct2_model(int8, int8_dir / "model.bin")
    for name in CT2_FILES:
        shutil.copyfile(tiny_dir / name, int8_dir / name)

    _ct2_own_int8(tiny, tmp_path / "reference.bin")
    assert (tmp_path / "reference.bin").read_bytes() == (int8_dir / "model.bin").read_bytes()
    size = (int8_dir / "model.bin").stat().st_size
    assert size < 0.55 * (tiny_dir / "model.bin").stat().st_size

    embedding, scale = (
        int8.variables[f"decoder/embeddings/{n}"] for n in ("weight", "weight_scale")
    )
    assert embedding.dtype == np.int8 and embedding.shape == (51864, 384)
    assert scale.dtype == np.float32 and scale.shape == (51864,)
    assert int8.variables["encoder/conv2/weight"].dtype == np.int8
    assert int8.variables["encoder/conv2/weight_scale"].shape == (384,)
    assert int8.variables["encoder/layer_0/self_attention/linear_0/weight_scale"].shape == (1152,)
    assert int8.variables["encoder/layer_0/self_attention/linear_0/bias"].dtype == np.float16
    assert int8.variables["decoder/projection/weight"] is embedding
    assert "decoder/projection/weight_scale" not in int8.variables  # the loader aliases it

    hf_int8 = _load_hf(convert_whisper(int8_dir, cache_dir))
    short = windows[0]
    expected = _hf_greedy(hf_int8, short, TINY_EN_PROMPT)
    for compute_type in ("float32", "int8"):
        ct2_int8 = ctranslate2.models.Whisper(
            str(int8_dir), device="cpu", compute_type=compute_type, intra_threads=2
        )
        # int8 compute also quantizes activations: equal here, not identical arithmetic.
        assert _ct2_greedy(ct2_int8, short, TINY_EN_PROMPT) == expected
        if compute_type == "float32":
            _assert_close(_hf_encode(hf_int8, short), _ct2_encode(ct2_int8, short))


def test_int8_rounds_edge_rows_as_ctranslate2_does() -> None:
    """All-zero and tiny rows, which the real weights lack, get CTranslate2's scales too."""
    rows = np.array([[0, 0, 0], [1e-42, -2e-42, 0], [0.5, -1.0, 0.25]], dtype=np.float32)
    variables = {"decoder/projection/weight": rows, "decoder/projection/bias": rows[2]}
    ours = quantize_int8(CT2Model("WhisperSpec", 3, variables, {})).variables
    linear = common_spec.LinearSpec()
    linear.weight = rows.copy()
    linear.bias = rows[2].copy()
    linear.validate()
    linear._quantize("int8")
    for name in ("weight", "weight_scale"):
        theirs = getattr(linear, name).numpy()
        assert ours[f"decoder/projection/{name}"].dtype == theirs.dtype
        assert ours[f"decoder/projection/{name}"].tobytes() == theirs.tobytes()
    assert ours["decoder/projection/bias"] is variables["decoder/projection/bias"]


def test_multilingual_base_converts_and_its_encoder_equals_ctranslate2(
    cache_dir: Path, windows: list[Features]
) -> None:
    base_dir = Path(resolve_weights("embedded:base"))
    converted = convert_whisper(base_dir, cache_dir, dtype="float16")  # float16 in, no loss
    generation = json.loads((converted / "generation_config.json").read_text())
    assert generation["is_multilingual"] is True
    assert generation["decoder_start_token_id"] == 50258
    assert generation["lang_to_id"]["<|en|>"] == 50259
    assert generation["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    assert generation["no_timestamps_token_id"] == 50363

    hf_base = _load_hf(converted)
    ct2_base = ctranslate2.models.Whisper(
        str(base_dir), device="cpu", compute_type="float32", intra_threads=2
    )
    _assert_close(_hf_encode(hf_base, windows[0]), _ct2_encode(ct2_base, windows[0]))


def test_convert_whisper_reuses_an_intact_copy(
    tiny_dir: Path, cache_dir: Path, converted_tiny: Path
) -> None:
    assert converted_tiny.name == f"whisper-{_sha256(tiny_dir / 'model.bin')[:16]}"
    manifest = json.loads((converted_tiny / MANIFEST).read_text())
    assert manifest["source_model_bin_sha256"] == _sha256(tiny_dir / "model.bin")
    assert manifest["model_safetensors_sha256"] == _sha256(converted_tiny / "model.safetensors")
    before = (converted_tiny / "model.safetensors").stat().st_mtime_ns
    assert convert_whisper(tiny_dir, cache_dir) == converted_tiny
    assert (converted_tiny / "model.safetensors").stat().st_mtime_ns == before


def test_convert_whisper_redoes_a_corrupted_copy(tiny_dir: Path, tmp_path: Path) -> None:
    converted = convert_whisper(tiny_dir, tmp_path, dtype="float16")
    weights = converted / "model.safetensors"
    pristine = _sha256(weights)
    with weights.open("r+b") as file:
        file.seek(weights.stat().st_size // 2)
        byte = file.read(1)
        file.seek(-1, io.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    assert _sha256(weights) != pristine

    assert convert_whisper(tiny_dir, tmp_path, dtype="float16") == converted
    assert _sha256(weights) == pristine
    manifest = json.loads((converted / MANIFEST).read_text())
    assert manifest["model_safetensors_sha256"] == pristine
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]  # no leftovers


def test_converted_directory_loads_cleanly_with_ctranslate2_settings(
    tiny_dir: Path, tiny: CT2Model, converted_tiny: Path
) -> None:
    loaded: Any = WhisperForConditionalGeneration.from_pretrained(
        converted_tiny, output_loading_info=True
    )
    loading = loaded[1]
    assert loading["missing_keys"] == loading["unexpected_keys"] == set()
    assert not loading["mismatched_keys"] and not loading["error_msgs"]

    ct2_config = json.loads((tiny_dir / "config.json").read_text())
    generation = json.loads((converted_tiny / "generation_config.json").read_text())
    assert generation["alignment_heads"] == ct2_config["alignment_heads"]
    assert generation["suppress_tokens"] == ct2_config["suppress_ids"]
    assert generation["begin_suppress_tokens"] == ct2_config["suppress_ids_begin"]
    assert generation["no_timestamps_token_id"] == 50362
    assert generation["is_multilingual"] is False
    assert (converted_tiny / "tokenizer.json").read_bytes() == (
        tiny_dir / "tokenizer.json"
    ).read_bytes()

    config, state = whisper_hf_checkpoint(tiny, ct2_config)
    assert json.loads(json.dumps(config)) == config
    assert all(value.dtype == np.float32 for value in state.values())
    with torch.device("meta"):
        empty = WhisperForConditionalGeneration(WhisperConfig(**config))
    tensors = {name: torch.from_numpy(value) for name, value in state.items()}
    empty.load_state_dict(tensors, strict=True, assign=True)


def test_module_needs_only_numpy_and_safetensors() -> None:
    heavy = ["ctranslate2", "faster_whisper", "av", "msgspec", "litestar", "torch", "transformers"]
    code = (
        f"import sys; import models.ct2_convert; print([m for m in {heavy!r} if m in sys.modules])"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
