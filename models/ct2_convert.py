"""CTranslate2 Whisper weights -> Hugging Face transformers Whisper weights, with no CTranslate2.

Why: the embedded models (and most faster-whisper weights on the hub) exist only as
CTranslate2 directories. The torch engine runs on a bare GPU box with torch and
transformers alone, so it needs the same numbers in transformers' layout. Reading
``model.bin`` ourselves (standard library, numpy and ``safetensors.numpy`` only) makes the
conversion work there, offline, and makes both engines compute with the very same weights.
:func:`quantize_int8` goes the other way: it writes the int8 copy that CTranslate2's own
converter would write, a small file to carry to a GPU box.

How ``model.bin`` is laid out (``ModelSpec._serialize`` in ``ctranslate2/specs/model_spec.py``;
little-endian, packed, no alignment padding; every string is ``uint16 len+1, bytes, NUL``)::

    +-------------------------------------------------------------------------+
    | uint32 binary version      6 (the layout below is the same since 4)     |
    | string spec name           "WhisperSpec"                                |
    | uint32 spec revision       3                                            |
    | uint32 number of variables                                              |
    |   +-------------------------------------------------------------------+ |
    |   | string name    "encoder/layer_0/self_attention/linear_0/weight"   | |
    |   | uint8  rank                                                       | |
    |   | uint32 x rank  shape, row-major                                   | |
    |   | uint8  dtype   0 float32, 1 int8, 2 int16, 3 int32, 4 float16,    | |
    |   |                5 bfloat16                                         | |
    |   | uint32 size    number of bytes, then the raw bytes                | |
    |   +------------------- repeated, sorted by name ----------------------+ |
    | uint32 number of aliases                                                |
    |   +-------------------------------------------------------------------+ |
    |   | string alias   "decoder/projection/weight"                        | |
    |   | string target  "decoder/embeddings/weight"                        | |
    |   +-------------------------------------------------------------------+ |
    +-------------------------------------------------------------------------+

Scalars (rank 0) hold settings: ``encoder/num_heads`` (int16), ``decoder/activation``
(int8, 3 = exact GELU), flags such as ``decoder/pre_norm``. An int8 variable ``X`` has a
float32 sibling ``X_scale`` with one scale per output row, and ``float = int8 / scale``.

How CTranslate2's Whisper layout maps onto transformers' (``WhisperLoader`` in
``ctranslate2/converters/transformers.py``)::

    encoder/conv{1,2}/{weight,bias}               model.encoder.conv{1,2}.*   (same shape)
    encoder/position_encodings/encodings          model.encoder.embed_positions.weight
    {enc,dec}/layer_i/self_attention/linear_0     self_attn.{q,k,v}_proj   (rows: q | k | v)
    {enc,dec}/layer_i/self_attention/linear_1     self_attn.out_proj
    {enc,dec}/layer_i/self_attention/layer_norm   self_attn_layer_norm     (gamma/beta)
    decoder/layer_i/attention/linear_0            encoder_attn.q_proj
    decoder/layer_i/attention/linear_1            encoder_attn.{k,v}_proj  (rows: k | v)
    decoder/layer_i/attention/linear_2            encoder_attn.out_proj
    decoder/layer_i/attention/layer_norm          encoder_attn_layer_norm
    {enc,dec}/layer_i/ffn/linear_{0,1}            fc1, fc2
    {enc,dec}/layer_i/ffn/layer_norm              final_layer_norm
    {enc,dec}/layer_norm                          model.{encoder,decoder}.layer_norm
    decoder/embeddings/weight                     model.decoder.embed_tokens.weight
    decoder/position_encodings/encodings          model.decoder.embed_positions.weight
    decoder/projection/weight (an alias)          proj_out.weight (tied)

Queries are not pre-scaled (no ``queries_scale``; both engines scale by head_dim**-0.5 at run
time). The fused biases carry zeros for the keys, since transformers' ``k_proj`` has no bias;
dropping them is exact in any case, because a key bias adds the same amount to every score of a
query and softmax ignores that.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import numpy.typing as npt
from safetensors.numpy import save_file

Array = npt.NDArray[Any]
Float32Array = npt.NDArray[np.float32]
SaveDtype = Literal["float32", "float16"]

BFLOAT16 = np.dtype([("bfloat16", "<u2")])
"""numpy has no bfloat16; such variables are kept as their raw 16-bit patterns under this dtype."""

DTYPE_IDS: tuple[np.dtype[Any], ...] = (
    np.dtype("<f4"),
    np.dtype("i1"),
    np.dtype("<i2"),
    np.dtype("<i4"),
    np.dtype("<f2"),
    BFLOAT16,
)
"""Index = CTranslate2's dtype id (``_dtype_to_type_id``, the C++ ``DataType`` enum)."""

BINARY_VERSION = 6
OLDEST_READABLE_VERSION = 4  # before 4, a variable had an item size instead of a dtype id

GELU = 3  # ctranslate2.specs.common_spec.Activation.GELU: exact (erf) GELU, as Whisper uses

MANIFEST = "voxserve-convert.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class CT2Model:
    """The content of a CTranslate2 ``model.bin``, exactly as stored.

    ``variables`` holds the stored dtypes (int8 stays int8, float16 stays float16) and also
    an entry for every alias, bound to its target's array, so that a lookup never needs to
    know which names are aliases. Arrays read from a file are read-only views.
    """

    spec: str
    revision: int
    variables: dict[str, Array]
    aliases: dict[str, str]


# --------------------------------------------------------------------------- reading


class _Cursor:
    """Walks the bytes of ``model.bin`` front to back, failing clearly on a truncated file."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def unpack(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        self._require(size)
        (value,) = struct.unpack_from(fmt, self._data, self._offset)
        self._offset += size
        return int(value)

    def string(self) -> str:
        length = self.unpack("<H")  # counts the trailing NUL
        self._require(length)
        raw = self._data[self._offset : self._offset + length - 1]
        self._offset += length
        return raw.decode("utf-8")

    def array(self, shape: tuple[int, ...], dtype: np.dtype[Any], num_bytes: int) -> Array:
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != num_bytes:
            raise ValueError(f"{num_bytes} bytes cannot hold {shape} of {dtype}")
        self._require(num_bytes)
        array = np.frombuffer(self._data, dtype=dtype, count=count, offset=self._offset)
        self._offset += num_bytes
        return array.reshape(shape)

    def at_end(self) -> bool:
        return self._offset == len(self._data)

    def _require(self, size: int) -> None:
        if self._offset + size > len(self._data):
            raise ValueError(f"model.bin is truncated at byte {self._offset}")


def read_ct2_model(path: Path) -> CT2Model:
    """Every variable and alias of the CTranslate2 ``model.bin`` at ``path``."""
    cursor = _Cursor(Path(path).read_bytes())
    version = cursor.unpack("<I")
    if not OLDEST_READABLE_VERSION <= version <= BINARY_VERSION:
        raise ValueError(
            f"{path}: binary version {version} is not supported "
            f"(only {OLDEST_READABLE_VERSION} to {BINARY_VERSION})"
        )
    spec = cursor.string()
    revision = cursor.unpack("<I")
    variables = dict(_read_variable(cursor) for _ in range(cursor.unpack("<I")))
    aliases = dict((cursor.string(), cursor.string()) for _ in range(cursor.unpack("<I")))
    if not cursor.at_end():
        raise ValueError(f"{path}: unexpected bytes after the aliases")
    for alias, target in aliases.items():
        if target not in variables:
            raise ValueError(f"{path}: alias {alias!r} names a missing variable {target!r}")
        variables[alias] = variables[target]
    return CT2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


def _read_variable(cursor: _Cursor) -> tuple[str, Array]:
    name = cursor.string()
    shape = tuple(cursor.unpack("<I") for _ in range(cursor.unpack("<B")))
    type_id = cursor.unpack("<B")
    if type_id >= len(DTYPE_IDS):
        raise ValueError(f"variable {name!r} has an unknown dtype id {type_id}")
    num_bytes = cursor.unpack("<I")
    return name, cursor.array(shape, DTYPE_IDS[type_id], num_bytes)


# --------------------------------------------------------------------------- writing


def write_ct2_model(model: CT2Model, path: Path) -> None:
    """Write ``model`` as CTranslate2 does, atomically (a temp file, then ``os.replace``).

    The exact inverse of :func:`read_ct2_model`: variables in their dict order, then the
    aliases; names listed in ``aliases`` are written only as aliases.
    """
    path = Path(path)
    with _atomic_file(path) as out:
        out.write(struct.pack("<I", BINARY_VERSION))
        _write_string(out, model.spec)
        out.write(struct.pack("<I", model.revision))
        stored = [(n, v) for n, v in model.variables.items() if n not in model.aliases]
        out.write(struct.pack("<I", len(stored)))
        for name, value in stored:
            _write_variable(out, name, value)
        out.write(struct.pack("<I", len(model.aliases)))
        for alias, target in model.aliases.items():
            _write_string(out, alias)
            _write_string(out, target)


def _write_string(out: BinaryIO, text: str) -> None:
    raw = text.encode("utf-8")
    out.write(struct.pack("<H", len(raw) + 1) + raw + b"\0")


def _write_variable(out: BinaryIO, name: str, value: Array) -> None:
    _write_string(out, name)
    out.write(struct.pack("<B", value.ndim))
    out.write(struct.pack(f"<{value.ndim}I", *value.shape))
    out.write(struct.pack("<B", _dtype_id(name, value.dtype)))
    out.write(struct.pack("<I", value.nbytes))
    out.write(np.ascontiguousarray(value).data)


def _dtype_id(name: str, dtype: np.dtype[Any]) -> int:
    for type_id, known in enumerate(DTYPE_IDS):
        if dtype == known:
            return type_id
    raise ValueError(f"variable {name!r}: CTranslate2 cannot store dtype {dtype}")


@contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file that appears at ``path`` only once it is completely written."""
    descriptor, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as out:
            yield out
        os.chmod(temp, 0o644)  # mkstemp's 0600 would hide the file from other users
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- int8


def quantize_int8(model: CT2Model) -> CT2Model:
    """Every weight that CTranslate2 quantizes becomes int8 plus a float32 ``weight_scale``.

    The same result, bit for bit, as CTranslate2's converter with ``quantization="int8"``
    (``LayerSpec._quantize``): the quantizable variables are those whose layer declares a
    ``weight_scale`` (linear, Conv1D and embedding layers: the ``.../weight`` variables, as
    the C++ loader's ``is_quantizable`` also says), each output row gets ``scale = 127 /
    max|row|`` (Conv1D kernels flattened per output channel), values are ``rint(w * scale)``,
    and everything else keeps its dtype. Aliases stay aliases, so the decoder's output
    projection shares the int8 embedding and its scale (the loader aliases ``X_scale`` too).
    Weights already int8 are kept as they are.
    """
    variables: dict[str, Array] = {}
    for name, value in model.variables.items():
        if name in model.aliases:
            continue
        if _is_quantizable(name, value) and f"{name}_scale" not in model.variables:
            variables[name], variables[f"{name}_scale"] = _quantize_rows(value)
        else:
            variables[name] = value
    variables = dict(sorted(variables.items()))  # CTranslate2 writes variables by name
    for alias, target in model.aliases.items():
        variables[alias] = variables[target]
    return CT2Model(model.spec, model.revision, variables, dict(model.aliases))


def _is_quantizable(name: str, value: Array) -> bool:
    return (
        name.rsplit("/", 1)[-1] == "weight"
        and value.ndim >= 2
        and (value.dtype in (np.float32, np.float16) or value.dtype == BFLOAT16)
    )


def _quantize_rows(weight: Array) -> tuple[npt.NDArray[np.int8], Float32Array]:
    """CTranslate2's int8 rounding, step for step (float32 arithmetic throughout)."""
    rows = _to_float32(weight).reshape(weight.shape[0], -1)
    amax = np.amax(np.absolute(rows), axis=1)
    amax[amax == 0] = 127.0
    amax = np.maximum(amax, np.float32(127) / np.finfo(np.float32).max)
    scale = (np.float32(127.0) / amax).astype(np.float32)
    quantized = np.rint(rows * np.expand_dims(scale, 1)).astype(np.int8)
    return quantized.reshape(weight.shape), scale


# --------------------------------------------------------------------------- float weights


def _to_float32(value: Array) -> Float32Array:
    """A fresh float32 copy; bfloat16 bit patterns are widened into float32's upper half."""
    if value.dtype == BFLOAT16:
        widened = value.view("<u2").astype("<u4") << np.uint32(16)
        return widened.view("<f4").astype(np.float32)
    return value.astype(np.float32)


class _FloatWeights:
    """CT2 variables as float32 (int8/int16 dequantized), remembering which were read.

    Remembering lets the converter refuse a model with weights it does not know how to
    place, instead of silently dropping them.
    """

    def __init__(self, model: CT2Model) -> None:
        self._model = model
        self._read: set[str] = set(model.aliases)

    def __call__(self, name: str) -> Float32Array:
        target = self._model.aliases.get(name, name)
        value = self._variable(target)
        if value.dtype in (np.int8, np.int16):
            scale = _to_float32(self._variable(f"{target}_scale"))
            if scale.ndim == 1:  # one scale per output row, for any rank
                scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
            dequantized: Float32Array = value.astype(np.float32) / scale
            return dequantized
        return _to_float32(value)

    def scalar(self, name: str) -> float:
        value = self._variable(name)
        if value.ndim != 0:
            raise ValueError(f"{name!r} should be a scalar, not of shape {value.shape}")
        return float(value.item())

    def mark_read(self, name: str) -> None:
        """Account for ``name`` without converting it (a tied weight is used as another)."""
        self._read.add(name)

    def has(self, name: str) -> bool:
        return name in self._model.variables

    def unread(self) -> list[str]:
        return sorted(set(self._model.variables) - self._read)

    def _variable(self, name: str) -> Array:
        if name not in self._model.variables:
            raise ValueError(f"the model has no variable {name!r}")
        self._read.add(name)
        return self._model.variables[name]


# --------------------------------------------------------------------------- CT2 -> HF


@dataclass(frozen=True)
class _Shape:
    """The Whisper hyper-parameters, as the variables' shapes and scalars tell them."""

    vocab_size: int
    d_model: int
    num_mel_bins: int
    encoder_layers: int
    decoder_layers: int
    encoder_heads: int
    decoder_heads: int
    encoder_ffn_dim: int
    decoder_ffn_dim: int
    max_source_positions: int
    max_target_positions: int


EXPECTED_FLAGS = {
    "decoder/alibi": 0.0,
    "decoder/pre_norm": 1.0,
    "decoder/start_from_zero_embedding": 0.0,
}
"""Decoder settings every Whisper has; another value would need a different transformers model."""

IGNORED_SCALARS = ("decoder/alignment_heads", "decoder/alignment_layer")
"""Alignment settings for other model types; Whisper's alignment heads live in config.json."""


def whisper_hf_checkpoint(
    model: CT2Model, ct2_config: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Float32Array]]:
    """transformers' ``WhisperConfig`` kwargs and ``WhisperForConditionalGeneration`` weights.

    The config is JSON-able (``model_type``/``architectures`` included) and takes the
    suppressed tokens from CTranslate2's ``config.json``; the state dict is float32 numpy
    (int8 dequantized) under transformers' names, ``proj_out.weight`` included (the same
    array as the token embedding when the model ties them, as Whisper does).
    """
    if model.spec != "WhisperSpec":
        raise ValueError(f"not a CTranslate2 Whisper model: the spec is {model.spec!r}")
    weights = _FloatWeights(model)
    _check_decoder_settings(weights)
    shape = _whisper_shape(model, weights)
    state = dict(_encoder_state(weights, shape.encoder_layers))
    state.update(_decoder_state(weights, shape.decoder_layers))
    tied = _add_output_projection(model, weights, state)
    unread = weights.unread()
    if unread:
        raise ValueError(f"variables with no place in transformers' Whisper: {unread}")
    return _hf_config(shape, ct2_config, tied), state


def _check_decoder_settings(weights: _FloatWeights) -> None:
    for name, expected in EXPECTED_FLAGS.items():
        if weights.scalar(name) != expected:
            raise ValueError(f"{name} is {weights.scalar(name)}, Whisper needs {expected}")
    if weights.scalar("decoder/activation") != GELU:
        raise ValueError("the decoder's activation is not exact GELU")
    # False, or a factor of 1.0 (stored as float32 by some converters): no scaling.
    if weights.scalar("decoder/scale_embeddings") not in (0.0, 1.0):
        raise ValueError("scaled token embeddings are not supported")
    for name in IGNORED_SCALARS:
        if weights.has(name):
            weights.scalar(name)


def _whisper_shape(model: CT2Model, weights: _FloatWeights) -> _Shape:
    variables = model.variables
    return _Shape(
        vocab_size=variables["decoder/embeddings/weight"].shape[0],
        d_model=variables["encoder/layer_norm/gamma"].shape[0],
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        encoder_layers=_count_layers(variables, "encoder"),
        decoder_layers=_count_layers(variables, "decoder"),
        encoder_heads=int(weights.scalar("encoder/num_heads")),
        decoder_heads=int(weights.scalar("decoder/num_heads")),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
    )


def _count_layers(variables: Iterable[str], stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))) or not indices:
        raise ValueError(f"the {stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


StateItems = Iterator[tuple[str, Float32Array]]


def _encoder_state(weights: _FloatWeights, num_layers: int) -> StateItems:
    hf, ct2 = "model.encoder", "encoder"
    for conv in ("conv1", "conv2"):
        yield f"{hf}.{conv}.weight", weights(f"{ct2}/{conv}/weight")
        yield f"{hf}.{conv}.bias", weights(f"{ct2}/{conv}/bias")
    yield f"{hf}.embed_positions.weight", weights(f"{ct2}/position_encodings/encodings")
    for i in range(num_layers):
        layer, scope = f"{hf}.layers.{i}", f"{ct2}/layer_{i}"
        yield from _self_attention(weights, f"{layer}.self_attn", f"{scope}/self_attention")
        yield from _layer_norm(
            weights, f"{layer}.self_attn_layer_norm", f"{scope}/self_attention/layer_norm"
        )
        yield from _feed_forward(weights, layer, f"{scope}/ffn")
    yield from _layer_norm(weights, f"{hf}.layer_norm", f"{ct2}/layer_norm")


def _decoder_state(weights: _FloatWeights, num_layers: int) -> StateItems:
    hf, ct2 = "model.decoder", "decoder"
    yield f"{hf}.embed_tokens.weight", weights(f"{ct2}/embeddings/weight")
    yield f"{hf}.embed_positions.weight", weights(f"{ct2}/position_encodings/encodings")
    for i in range(num_layers):
        layer, scope = f"{hf}.layers.{i}", f"{ct2}/layer_{i}"
        yield from _self_attention(weights, f"{layer}.self_attn", f"{scope}/self_attention")
        yield from _layer_norm(
            weights, f"{layer}.self_attn_layer_norm", f"{scope}/self_attention/layer_norm"
        )
        yield from _cross_attention(weights, f"{layer}.encoder_attn", f"{scope}/attention")
        yield from _layer_norm(
            weights, f"{layer}.encoder_attn_layer_norm", f"{scope}/attention/layer_norm"
        )
        yield from _feed_forward(weights, layer, f"{scope}/ffn")
    yield from _layer_norm(weights, f"{hf}.layer_norm", f"{ct2}/layer_norm")


def _self_attention(weights: _FloatWeights, hf: str, ct2: str) -> StateItems:
    """Split the fused q|k|v projection; the keys' bias is dropped (see the module doc)."""
    q, k, v = np.split(weights(f"{ct2}/linear_0/weight"), 3)
    q_bias, _, v_bias = np.split(weights(f"{ct2}/linear_0/bias"), 3)
    yield from _projection(hf, "q_proj", q, q_bias)
    yield from _projection(hf, "k_proj", k, None)
    yield from _projection(hf, "v_proj", v, v_bias)
    yield from _linear(weights, f"{hf}.out_proj", f"{ct2}/linear_1")


def _cross_attention(weights: _FloatWeights, hf: str, ct2: str) -> StateItems:
    """Queries come from the decoder (linear_0), the fused k|v from the encoder (linear_1)."""
    yield from _linear(weights, f"{hf}.q_proj", f"{ct2}/linear_0")
    k, v = np.split(weights(f"{ct2}/linear_1/weight"), 2)
    _, v_bias = np.split(weights(f"{ct2}/linear_1/bias"), 2)
    yield from _projection(hf, "k_proj", k, None)
    yield from _projection(hf, "v_proj", v, v_bias)
    yield from _linear(weights, f"{hf}.out_proj", f"{ct2}/linear_2")


def _projection(hf: str, name: str, weight: Float32Array, bias: Float32Array | None) -> StateItems:
    yield f"{hf}.{name}.weight", np.ascontiguousarray(weight)
    if bias is not None:
        yield f"{hf}.{name}.bias", np.ascontiguousarray(bias)


def _linear(weights: _FloatWeights, hf: str, ct2: str) -> StateItems:
    yield f"{hf}.weight", weights(f"{ct2}/weight")
    yield f"{hf}.bias", weights(f"{ct2}/bias")


def _layer_norm(weights: _FloatWeights, hf: str, ct2: str) -> StateItems:
    yield f"{hf}.weight", weights(f"{ct2}/gamma")
    yield f"{hf}.bias", weights(f"{ct2}/beta")


def _feed_forward(weights: _FloatWeights, hf_layer: str, ct2: str) -> StateItems:
    yield from _linear(weights, f"{hf_layer}.fc1", f"{ct2}/linear_0")
    yield from _linear(weights, f"{hf_layer}.fc2", f"{ct2}/linear_1")
    yield from _layer_norm(weights, f"{hf_layer}.final_layer_norm", f"{ct2}/layer_norm")


def _add_output_projection(
    model: CT2Model, weights: _FloatWeights, state: dict[str, Float32Array]
) -> bool:
    """Add ``proj_out.weight``; True when it is the token embedding (tied, as in Whisper)."""
    name, embedding = "decoder/projection/weight", "decoder/embeddings/weight"
    if weights.has("decoder/projection/bias"):
        raise ValueError("an output projection bias has no place in transformers' Whisper")
    aliased = model.aliases.get(name) == embedding
    tied = aliased or model.variables[name] is model.variables[embedding]
    if tied:
        weights.mark_read(name)
        state["proj_out.weight"] = state["model.decoder.embed_tokens.weight"]
    else:
        state["proj_out.weight"] = weights(name)
    return tied


def _special_tokens(vocab_size: int) -> dict[str, int]:
    """The openai-whisper token layout: multilingual vocabularies have one more text token."""
    end_of_text = 50256 + int(_is_multilingual(vocab_size))
    return {"<|endoftext|>": end_of_text, "<|startoftranscript|>": end_of_text + 1}


def _is_multilingual(vocab_size: int) -> bool:
    return vocab_size >= 51865  # as openai-whisper decides it


def _hf_config(shape: _Shape, ct2_config: Mapping[str, Any], tied: bool) -> dict[str, Any]:
    special = _special_tokens(shape.vocab_size)
    end_of_text = special["<|endoftext|>"]
    return {
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "vocab_size": shape.vocab_size,
        "num_mel_bins": shape.num_mel_bins,
        "d_model": shape.d_model,
        "encoder_layers": shape.encoder_layers,
        "encoder_attention_heads": shape.encoder_heads,
        "encoder_ffn_dim": shape.encoder_ffn_dim,
        "decoder_layers": shape.decoder_layers,
        "decoder_attention_heads": shape.decoder_heads,
        "decoder_ffn_dim": shape.decoder_ffn_dim,
        "max_source_positions": shape.max_source_positions,
        "max_target_positions": shape.max_target_positions,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": tied,
        "is_encoder_decoder": True,
        "use_cache": True,
        "bos_token_id": end_of_text,
        "eos_token_id": end_of_text,
        "pad_token_id": end_of_text,
        "decoder_start_token_id": special["<|startoftranscript|>"],
        "suppress_tokens": ct2_config.get("suppress_ids"),
        "begin_suppress_tokens": ct2_config.get("suppress_ids_begin"),
        "dtype": "float32",
    }


# --------------------------------------------------------------------------- the cache


def convert_whisper(ct2_dir: Path, cache_dir: Path, *, dtype: SaveDtype = "float32") -> Path:
    """The transformers copy of the CTranslate2 Whisper in ``ct2_dir``, converted at most once.

    It lives in ``cache_dir/converted/whisper-<16 hex of sha256(model.bin)>`` (with a
    ``-float16`` suffix for ``dtype="float16"``), beside a manifest that records both
    checksums. A copy whose ``model.safetensors`` no longer matches its manifest is
    converted again. A conversion is written into a temp directory and moved into place
    with ``os.replace``, so readers never see half a directory and, of two concurrent
    converters, the later simply finds the earlier's result.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, not {dtype!r}")
    ct2_dir, cache_dir = Path(ct2_dir), Path(cache_dir)
    source_sha256 = _sha256(ct2_dir / "model.bin")
    suffix = "" if dtype == "float32" else f"-{dtype}"
    target = cache_dir / "converted" / f"whisper-{source_sha256[:16]}{suffix}"
    if _is_intact(target, source_sha256, dtype):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would hide the copy from other users
    try:
        _write_converted(ct2_dir, staging, source_sha256, dtype)
        _install(staging, target, lambda: _is_intact(target, source_sha256, dtype))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _write_converted(ct2_dir: Path, out: Path, source_sha256: str, dtype: SaveDtype) -> None:
    ct2_config = json.loads((ct2_dir / "config.json").read_text(encoding="utf-8"))
    config, state = whisper_hf_checkpoint(read_ct2_model(ct2_dir / "model.bin"), ct2_config)
    config["dtype"] = dtype
    tokens = _added_tokens(ct2_dir / "tokenizer.json")
    _check_special_tokens(config["vocab_size"], tokens)
    _write_json(out / "config.json", config)
    _write_json(out / "generation_config.json", _generation_config(config, ct2_config, tokens))
    shutil.copyfile(ct2_dir / "tokenizer.json", out / "tokenizer.json")
    shutil.copyfile(ct2_dir / "config.json", out / "ct2_config.json")
    tensors = {
        name: np.ascontiguousarray(value, dtype=dtype)
        for name, value in state.items()
        if not (config["tie_word_embeddings"] and name == "proj_out.weight")
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    manifest = {
        "format": MANIFEST_FORMAT,
        "converter": "voxserve models.ct2_convert",
        "dtype": dtype,
        "source_model_bin_sha256": source_sha256,
        "model_safetensors_sha256": _sha256(out / "model.safetensors"),
    }
    _write_json(out / MANIFEST, manifest)


def _install(staging: Path, target: Path, target_is_intact: Callable[[], bool]) -> None:
    """Move ``staging`` to ``target``; a stale ``target`` is moved aside first."""
    try:
        os.replace(staging, target)
        return
    except OSError:  # target exists and is not empty
        if target_is_intact():
            return  # a concurrent converter got there first; its copy is as good as ours
    stale = target.with_name(f".{target.name}.stale-{uuid.uuid4().hex}")
    with suppress(FileNotFoundError):  # another converter may have moved it aside already
        os.replace(target, stale)
    try:
        os.replace(staging, target)
    except OSError:
        if not target_is_intact():
            raise
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _is_intact(target: Path, source_sha256: str, dtype: SaveDtype) -> bool:
    """Whether ``target`` is a finished conversion of that source whose weights are unchanged."""
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        expected = manifest["model_safetensors_sha256"]
        return (
            manifest.get("format") == MANIFEST_FORMAT
            and manifest.get("source_model_bin_sha256") == source_sha256
            and manifest.get("dtype") == dtype
            and all((target / name).is_file() for name in CONVERTED_FILES)
            and _sha256(target / "model.safetensors") == expected
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


CONVERTED_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "ct2_config.json",
    MANIFEST,
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- generation config


def _added_tokens(tokenizer_json: Path) -> dict[str, int]:
    """The special tokens (``<|...|>``) of a Hugging Face ``tokenizer.json``, by content."""
    tokenizer = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    return {token["content"]: int(token["id"]) for token in tokenizer.get("added_tokens", [])}


def _check_special_tokens(vocab_size: int, tokens: Mapping[str, int]) -> None:
    """The config's token ids come from the vocabulary size; the tokenizer must agree."""
    for content, expected in _special_tokens(vocab_size).items():
        if tokens.get(content) != expected:
            raise ValueError(
                f"tokenizer.json has {content} = {tokens.get(content)}, the model expects "
                f"{expected}: not the openai-whisper token layout"
            )


def _generation_config(
    config: Mapping[str, Any], ct2_config: Mapping[str, Any], tokens: Mapping[str, int]
) -> dict[str, Any]:
    """transformers' Whisper ``generation_config.json``, from CTranslate2's config.json.

    Language and task maps are written for multilingual models only, as in the published
    English-only checkpoints (whose ``generate`` refuses a language or task anyway).
    """
    multilingual = _is_multilingual(config["vocab_size"])
    generation: dict[str, Any] = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
        "pad_token_id": config["pad_token_id"],
        "decoder_start_token_id": config["decoder_start_token_id"],
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "max_length": config["max_target_positions"],
        "no_timestamps_token_id": tokens["<|notimestamps|>"],
        "prev_sot_token_id": tokens["<|startofprev|>"],
        "return_timestamps": False,
    }
    optional = {
        "alignment_heads": "alignment_heads",
        "suppress_tokens": "suppress_ids",
        "begin_suppress_tokens": "suppress_ids_begin",
    }
    for hf_key, ct2_key in optional.items():
        if ct2_config.get(ct2_key) is not None:
            generation[hf_key] = ct2_config[ct2_key]
    if multilingual:
        generation["task_to_id"] = {
            task: tokens[f"<|{task}|>"] for task in ("transcribe", "translate")
        }
        if ct2_config.get("lang_ids"):
            by_id = {token_id: content for content, token_id in tokens.items()}
            generation["lang_to_id"] = {by_id[i]: i for i in ct2_config["lang_ids"]}
    return generation
