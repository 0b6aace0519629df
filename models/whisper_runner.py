"""The Whisper decoder over a fixed set of rows: its KV caches and its forward passes.

This is the model-runner part of the torch engine (nano-vllm's ``ModelRunner``
plays the same part): it owns the device memory and runs the network, and knows
nothing of requests, tokenizers or decoding rules. The weights and layers are
transformers' ``WhisperForConditionalGeneration`` modules, called one by one so
that the caches can be laid out for continuous batching:

- ``self_k`` / ``self_v``: ``(layers, rows, heads, 448, head_dim)``, every row's
  self-attention keys and values, preallocated for Whisper's whole context, so a
  step allocates nothing;
- ``cross_k`` / ``cross_v``: ``(layers, rows + 1, heads, 1500, head_dim)``, every
  row's projection of its encoder output, written once when the row is admitted
  (the extra row takes the padding of a graphed admission).

A row is an index into these. Three passes use them:

- :meth:`step`: one token for each of the first ``count`` rows, at each row's own
  position (rows are at different points of their windows), attending to that
  row's cache only. On CUDA it is captured as a CUDA graph per row-count bucket
  (1, 2, 4, 8, then multiples of 16), so one step is one graph launch;
- :meth:`prefill`: a block of prompt tokens for some rows, written to their caches;
- :meth:`teacher_forced`: a block of tokens for one row that leaves the caches
  alone and returns the alignment heads' cross-attention scores (word timings).

Logits are computed against a float32 copy of the output embedding whatever the
model's precision: in bfloat16 a logit near 20 is only known to 0.125, enough to
flip a close greedy choice.

:class:`EncoderRunner` runs the encoder over newly admitted windows, on CUDA in
chunks captured as CUDA graphs (1, 2, 4, 8 windows): a 32-layer encoder is some
600 kernel launches, which at one window cost as much as the arithmetic.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn import functional as F

from models.whisper_decoding import MAX_LENGTH

ENCODER_BUCKETS = (1, 2, 4, 8)
"""Windows per encoder graph; larger admissions run in chunks of the largest."""

logger = logging.getLogger("voxserve.whisper_torch")


def step_buckets(rows: int) -> list[int]:
    """Row counts a step is run (and graphed) at: a step for ``n`` rows runs the
    smallest bucket that holds them."""
    buckets = [b for b in (1, 2, 4, 8) if b < rows]
    buckets += list(range(16, rows, 16))
    return [*buckets, rows]


class DecoderRunner:
    """The decoder of ``model`` with caches for ``rows`` rows on ``model``'s device."""

    def __init__(self, model: Any, rows: int, *, cuda_graphs: bool) -> None:
        # transformers' modules are reached by attribute name; torch types those
        # attributes as ``Tensor | Module``, so the model is typed as Any here.
        config = model.config
        decoder = model.model.decoder
        self.decoder: Any = decoder
        self.layers: list[Any] = list(decoder.layers)
        self.rows = rows
        self.heads = int(config.decoder_attention_heads)
        self.width = int(config.d_model)
        self.head_dim = self.width // self.heads
        self.frames = int(config.max_source_positions)
        self.embed_scale = float(getattr(decoder, "embed_scale", 1.0))
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        layers = len(self.layers)
        kv = (layers, rows, self.heads, MAX_LENGTH, self.head_dim)
        cross = (layers, rows + 1, self.heads, self.frames, self.head_dim)
        self.scratch_row = rows
        """A cross-attention row no step reads: padding of a graphed admission lands here."""
        make = {"device": self.device, "dtype": self.dtype}
        self.self_k, self.self_v = torch.zeros(kv, **make), torch.zeros(kv, **make)
        self.cross_k, self.cross_v = torch.zeros(cross, **make), torch.zeros(cross, **make)
        self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)
        """The token each row feeds to the next :meth:`step`; the engine writes it."""
        self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
        """Each row's position for the next :meth:`step` (where its token goes)."""
        embedding: torch.Tensor = decoder.embed_tokens.weight
        self._output_weight = embedding if self.dtype == torch.float32 else embedding.float()
        self._row_index = torch.arange(rows, device=self.device)
        self._kv_index = torch.arange(MAX_LENGTH, device=self.device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.buckets = step_buckets(rows)
        if cuda_graphs and self.device.type == "cuda":
            self._capture()

    @property
    def cache_bytes(self) -> int:
        tensors = (self.self_k, self.self_v, self.cross_k, self.cross_v)
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- admission -------------------------------------------------------------------

    def set_cross(self, rows: torch.Tensor, encoder_output: torch.Tensor) -> None:
        """Project each admitted row's encoder output to cross-attention keys and values."""
        n = encoder_output.shape[0]
        for index, layer in enumerate(self.layers):
            attention = layer.encoder_attn
            keys = self._heads_first(attention.k_proj(encoder_output), n)
            values = self._heads_first(attention.v_proj(encoder_output), n)
            self.cross_k[index].index_copy_(0, rows, keys)
            self.cross_v[index].index_copy_(0, rows, values)

    def prefill(self, rows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` ``(n, T)`` at positions ``0..T-1`` of ``rows``, caching their keys
        and values; returns the final hidden states ``(n, T, width)``.

        Rows whose prompts are shorter are right-padded: a padded position is
        never attended to by the row's real tokens (causal), and each is written
        again by the row's own step before the row attends to it.
        """
        hidden, _ = self._block(rows, tokens, write_cache=True, score_layers={})
        return hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits of final hidden states (the output projection is the embedding)."""
        return hidden.float() @ self._output_weight.T

    def teacher_forced(
        self, row: int, tokens: torch.Tensor, heads: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(T, vocab)`` and the ``heads``' cross-attention scores
        ``(len(heads), T, frames)`` for ``tokens`` ``(T,)`` read against ``row``'s audio."""
        score_layers: dict[int, list[int]] = {}
        for layer, head in heads:
            score_layers.setdefault(layer, []).append(head)
        rows = torch.tensor([row], device=self.device)
        hidden, scores = self._block(
            rows, tokens[None], write_cache=False, score_layers=score_layers
        )
        ordered = [scores[layer][0, score_layers[layer].index(head)] for layer, head in heads]
        return self.logits(hidden[0]), torch.stack(ordered).float()

    # -- the decode step -------------------------------------------------------------

    def bucket(self, count: int) -> int:
        return next(b for b in self.buckets if b >= count)

    def step(self, count: int) -> torch.Tensor:
        """Logits ``(bucket, vocab)`` float32 for the first ``bucket(count)`` rows, each
        fed ``tokens[row]`` at ``positions[row]``; rows past ``count`` compute garbage."""
        bucket = self.bucket(count)
        graph = self._graphs.get(bucket)
        if graph is None:
            return self._step(bucket)
        graph[0].replay()
        return graph[1]

    def _step(self, count: int) -> torch.Tensor:
        positions = self.positions[:count]
        rows = self._row_index[:count]
        x = self.decoder.embed_tokens(self.tokens[:count]) * self.embed_scale
        x = x + self.decoder.embed_positions.weight[positions]
        visible = (self._kv_index[None, :] <= positions[:, None])[:, None, None, :]
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            query = attention.q_proj(h).view(count, self.heads, 1, self.head_dim)
            self.self_k[index][rows, :, positions] = attention.k_proj(h).view(
                count, self.heads, self.head_dim
            )
            self.self_v[index][rows, :, positions] = attention.v_proj(h).view(
                count, self.heads, self.head_dim
            )
            out = F.scaled_dot_product_attention(
                query, self.self_k[index, :count], self.self_v[index, :count], attn_mask=visible
            )
            x = x + attention.out_proj(out.reshape(count, self.width))
            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            query = cross.q_proj(h).view(count, self.heads, 1, self.head_dim)
            out = F.scaled_dot_product_attention(
                query, self.cross_k[index, :count], self.cross_v[index, :count]
            )
            x = x + cross.out_proj(out.reshape(count, self.width))
            x = x + self._feed_forward(layer, x)
        return self.logits(self.decoder.layer_norm(x))

    def _capture(self) -> None:
        """Capture one CUDA graph per bucket, largest first, sharing one memory pool."""
        self._graphs = capture_graphs(self.buckets, self._step, self.device)

    # -- blocks of tokens ------------------------------------------------------------

    def _block(
        self,
        rows: torch.Tensor,
        tokens: torch.Tensor,
        *,
        write_cache: bool,
        score_layers: dict[int, list[int]],
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        n, length = tokens.shape
        x = self.decoder.embed_tokens(tokens) * self.embed_scale
        x = x + self.decoder.embed_positions.weight[:length]
        scores: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(self.layers):
            attention = layer.self_attn
            h = layer.self_attn_layer_norm(x)
            query = self._heads_first(attention.q_proj(h), n)
            keys = self._heads_first(attention.k_proj(h), n)
            values = self._heads_first(attention.v_proj(h), n)
            if write_cache:
                self.self_k[index][:, :, :length].index_copy_(0, rows, keys)
                self.self_v[index][:, :, :length].index_copy_(0, rows, values)
            out = F.scaled_dot_product_attention(query, keys, values, is_causal=True)
            x = x + attention.out_proj(self._heads_last(out))
            cross = layer.encoder_attn
            h = layer.encoder_attn_layer_norm(x)
            query = self._heads_first(cross.q_proj(h), n)
            cross_k = self.cross_k[index].index_select(0, rows)
            out = F.scaled_dot_product_attention(
                query, cross_k, self.cross_v[index].index_select(0, rows)
            )
            if index in score_layers:
                picked = query[:, score_layers[index]]
                keys_picked = cross_k[:, score_layers[index]]
                scores[index] = (picked @ keys_picked.transpose(-1, -2)) * self.head_dim**-0.5
            x = x + cross.out_proj(self._heads_last(out))
            x = x + self._feed_forward(layer, x)
        return self.decoder.layer_norm(x), scores

    @staticmethod
    def _feed_forward(layer: Any, x: torch.Tensor) -> torch.Tensor:
        h = layer.final_layer_norm(x)
        out: torch.Tensor = layer.fc2(layer.activation_fn(layer.fc1(h)))
        return out

    def _heads_first(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """``(n, T, width)`` to ``(n, heads, T, head_dim)``."""
        return x.view(n, -1, self.heads, self.head_dim).transpose(1, 2)

    def _heads_last(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, heads, T, head_dim)`` back to ``(n, T, width)``."""
        n, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(n, length, self.width)


class EncoderRunner:
    """The encoder over admitted windows, and their cross-attention keys and values
    written into their rows; on CUDA as graphs of 1, 2, 4 or 8 windows."""

    def __init__(
        self, model: Any, decoder: DecoderRunner, *, cuda_graphs: bool, chunk: int = 0
    ) -> None:
        self.encoder: Any = model.model.encoder
        self.decoder = decoder
        config = model.config
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        on_gpu = self.device.type == "cuda"
        self.chunk = chunk or (ENCODER_BUCKETS[-1] if on_gpu else 0)
        """Windows per encoder call; 0 is all of an admission at once."""
        frames = 2 * int(config.max_source_positions)
        largest = max(b for b in ENCODER_BUCKETS if b <= max(self.chunk, 1))
        self._buckets = [b for b in ENCODER_BUCKETS if b <= largest]
        self._input = torch.zeros(
            (largest, int(config.num_mel_bins), frames), dtype=self.dtype, device=self.device
        )
        self._rows = torch.full((largest,), decoder.scratch_row, device=self.device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        if cuda_graphs and on_gpu:
            try:
                self._graphs = capture_graphs(self._buckets, self._graphed, self.device)
            except Exception:  # eager still works; only launch overhead is lost
                logger.exception("encoder CUDA graphs could not be captured; running eagerly")
                self._graphs = {}

    def _graphed(self, count: int) -> torch.Tensor:
        return self._encode(self._input[:count], self._rows[:count])

    def _encode(self, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.encoder(input_features=features).last_hidden_state
        self.decoder.set_cross(rows, out)
        return out

    def admit(self, features: torch.Tensor, rows: torch.Tensor) -> None:
        """Encode ``features`` (one window each) into the cross-attention of ``rows``."""
        total = features.shape[0]
        step = self.chunk or total
        for start in range(0, total, step):
            part = slice(start, min(start + step, total))
            self._run(features[part].to(self.dtype), rows[part])

    def _run(self, features: torch.Tensor, rows: torch.Tensor) -> None:
        count = features.shape[0]
        bucket = next((b for b in self._buckets if b >= count), None)
        graph = self._graphs.get(bucket) if bucket is not None else None
        if graph is None:
            self._encode(features, rows)
            return
        self._input[:count].copy_(features)
        self._rows.fill_(self.decoder.scratch_row)
        self._rows[:count].copy_(rows)
        graph[0].replay()


def capture_graphs(
    buckets: Sequence[int], run: Any, device: torch.device
) -> dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]]:
    """One CUDA graph of ``run(bucket)`` per bucket, largest first, in one memory pool."""
    graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
    pool = None
    for bucket in sorted(buckets, reverse=True):
        run(bucket)  # warm up kernels and the allocator outside the capture
        torch.cuda.synchronize(device)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = run(bucket)
        pool = graph.pool()
        graphs[bucket] = (graph, out)
    torch.cuda.synchronize(device)
    return graphs
