"""Whisper on torch + transformers, with a running batch of rows (continuous batching).

The GPU engine. Where the CTranslate2 backend takes a batch and returns when all of
it is done, this engine keeps up to ``rows`` windows decoding at once and lets them
come and go one step at a time, the way vLLM and TGI serve LLMs:

- :meth:`WhisperTorchEngine.admit` puts windows into free rows: one batched
  encoder pass over the newcomers (a CUDA graph with their cross-attention keys
  and values written into their rows); their prompts then enter through the
  decode steps, a token per step, like generated tokens, so that a newcomer
  costs no pass of its own (only a long text prompt is run as one block first);
  a window without a language has it picked, at its
  ``<|startoftranscript|>`` step, from the language tokens, as CTranslate2's
  ``detect_language`` does;
- :meth:`WhisperTorchEngine.step` advances every running row by one token (one
  CUDA graph launch on a GPU, then Whisper's rules applied per row on the device)
  and returns the windows that finished, whose rows are free again at once;
- :meth:`WhisperTorchEngine.release` drops rows whose requests went away.

Which items go into which rows, and when, is the scheduler's decision, not the
engine's. Rows differ freely: prompt, language, task and temperature are per row,
so retries up the temperature ladder batch with everything else. A window decodes
exactly as it would alone: nothing in a row's computation reads another row.

:meth:`WhisperTorchEngine.transcribe_batch` offers the whole-batch contract on the
same machinery (admit all, step until all are done), for the whole-batch mode
that benchmarks compare against.

Decoding is greedy at temperature 0 and a single sample above it (CTranslate2's
beam search and best-of-5 are not reproduced); the rules and measures are
CTranslate2's, so converted weights give CTranslate2's greedy tokens. This module
imports nothing of faster-whisper, CTranslate2, PyAV or the server: it runs on a
box with only torch, transformers, tokenizers and numpy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.alignment import Alignment, alignment_path, words_and_logprobs
from models.base import SAMPLE_RATE, Task, TranscriptionItem, WindowTranscript
from models.whisper_decoding import (
    HOP_LENGTH,
    MAX_INITIAL_TIMESTAMP,
    MAX_LENGTH,
    MAX_PROMPT_TOKENS,
    TIME_PRECISION,
    DecodedWindow,
    decode_window,
    prompt_tail,
)
from models.whisper_features import FeatureExtractor
from models.whisper_rules import DecodingRules, RowState
from models.whisper_runner import DecoderRunner, EncoderRunner
from models.whisper_tokenizer import WhisperTokenizer

logger = logging.getLogger("voxserve.whisper_torch")

LengthLimits = Callable[[TranscriptionItem], tuple[int, int] | None]
"""For synthetic benchmarks: ``(min, max)`` tokens for an item (end of text suppressed
below ``min`` and forced at ``max``), or ``None`` to decode normally."""

RowResult = tuple[int, WindowTranscript | BaseException]


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float16 on a GPU and float32 on the CPU.

    float16 rather than bfloat16: Whisper's weights and activations sit well inside
    float16's range, and its three more mantissa bits decide close greedy choices
    (on an H200, converted tiny.en wrote the CPU's text in float16 on every test
    window, and one word differently in bfloat16).
    """
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    choices = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in choices:
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, not {dtype!r}")
    return choices[dtype]


def default_alignment_heads(layers: int, heads: int) -> list[tuple[int, int]]:
    """openai-whisper's default when a model names none: every head of the upper half."""
    return [(layer, head) for layer in range(layers // 2, layers) for head in range(heads)]


DETECT = -2
"""In a row's script: the next token is the language, picked from the step's logits."""
GENERATE = -1
"""The row's next token is its own choice: it is past its prompt."""
PREFILL_FROM = 16
"""Prompt text longer than this many tokens is run as one block at admission rather
than a token per step."""


@dataclass(slots=True)
class _Row:
    """Host-side bookkeeping of one running window.

    ``script`` holds what the row's next steps must produce before it decodes on its
    own: prompt tokens to feed, or :data:`DETECT` for its language.
    """

    item: TranscriptionItem
    language: str | None
    tokenizer: WhisperTokenizer | None
    script: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)

    @property
    def next_action(self) -> int:
        return self.script[0] if self.script else GENERATE


class WhisperTorchEngine:
    """A Whisper model in Hugging Face format, decoding up to ``rows`` windows at once."""

    window_seconds = 30.0

    def __init__(
        self,
        model_path: str | Path | None,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        rows: int = 8,
        cuda_graphs: bool = True,
        encoder_batch_size: int = 0,
        length_limits: LengthLimits | None = None,
        seed: int = 0,
    ) -> None:
        if rows < 1:
            raise ValueError("rows must be at least 1")
        self.model_path = None if model_path is None else Path(model_path)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self._rows = rows
        self.cuda_graphs = cuda_graphs
        self.encoder_batch_size = encoder_batch_size
        self.length_limits = length_limits
        self.seed = seed
        self._model: Any = None  # transformers' WhisperForConditionalGeneration
        self._tokenizer: WhisperTokenizer | None = None
        self._alignment_heads: list[tuple[int, int]] = []
        self._running: list[_Row | None] = [None] * rows
        self._sampling = 0  # running rows with a temperature above 0
        self._at_start = 0  # rows that feed <|startoftranscript|> at the next step
        self._prompt_tokens = lru_cache(maxsize=1024)(self._encode_prompt)
        self._tokenizer_for = lru_cache(maxsize=256)(self._make_tokenizer)

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: WhisperTokenizer,
        *,
        alignment_heads: Sequence[tuple[int, int]] | None = None,
        **options: Any,
    ) -> WhisperTorchEngine:
        """An engine over a model already in memory (random weights, in benchmarks)."""
        parameter = next(model.parameters())
        engine = cls(None, device=str(parameter.device), **options)
        engine.dtype = parameter.dtype
        engine._start(model, tokenizer, alignment_heads)
        return engine

    def load(self) -> None:
        """Load the weights from ``model_path`` (transformers' ``from_pretrained``)."""
        from transformers import WhisperForConditionalGeneration

        if self.model_path is None:
            raise RuntimeError("no model_path to load from")
        model: Any = WhisperForConditionalGeneration.from_pretrained(
            str(self.model_path),
            dtype=self.dtype,
            attn_implementation="sdpa",
            device_map=str(self.device) if self.device.type == "cuda" else None,
        )
        model.to(self.device)
        tokenizer = WhisperTokenizer.from_file(
            self.model_path / "tokenizer.json", multilingual=model.config.vocab_size >= 51865
        )
        self._start(model, tokenizer, _alignment_heads(self.model_path))

    def _start(
        self,
        model: Any,
        tokenizer: WhisperTokenizer,
        alignment_heads: Sequence[tuple[int, int]] | None,
    ) -> None:
        model.eval()
        config = model.config
        self._model = model
        self._tokenizer = tokenizer
        self._alignment_heads = list(
            alignment_heads
            or default_alignment_heads(config.decoder_layers, config.decoder_attention_heads)
        )
        self._features = FeatureExtractor(config.num_mel_bins, self.device)
        with torch.inference_mode():
            self._runner = DecoderRunner(model, self.rows, cuda_graphs=self.cuda_graphs)
            self._encoder = EncoderRunner(
                model, self._runner, cuda_graphs=self.cuda_graphs, chunk=self.encoder_batch_size
            )
        self._state = RowState.allocate(self.rows, self.device)
        self._language_ids = torch.tensor(
            list(tokenizer.language_tokens) or [tokenizer.eot], device=self.device
        )
        self._rules = DecodingRules(
            tokenizer,
            config.vocab_size,
            self.device,
            max_initial_timestamp_index=round(MAX_INITIAL_TIMESTAMP / TIME_PRECISION),
        )
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self.seed)
        logger.info(
            "whisper torch engine: %d rows on %s in %s, KV caches %.1f MiB",
            self.rows,
            self.device,
            str(self.dtype).removeprefix("torch."),
            self._runner.cache_bytes / 2**20,
        )

    @property
    def model(self) -> Any:
        if self._model is None:
            raise RuntimeError("WhisperTorchEngine.load() was not called")
        return self._model

    @property
    def tokenizer(self) -> WhisperTokenizer:
        if self._tokenizer is None:
            raise RuntimeError("WhisperTorchEngine.load() was not called")
        return self._tokenizer

    @property
    def multilingual(self) -> bool:
        return self.tokenizer.multilingual

    def _make_tokenizer(self, language: str, task: Task) -> WhisperTokenizer:
        return self.tokenizer.for_language(language, task)

    def _encode_prompt(self, prompt: str) -> tuple[int, ...]:
        tokens = self.tokenizer.encode(" " + prompt)
        return tuple(tokens[-MAX_PROMPT_TOKENS:])

    # -- the step contract ---------------------------------------------------------

    @property
    def rows(self) -> int:
        return self._rows

    @property
    def admission_batch(self) -> int:
        """Windows worth admitting together: one encoder graph's worth on a GPU, where
        the encoder pays for batching, and 1 on the CPU, where it does not."""
        return max(1, self._encoder.chunk) if self.device.type == "cuda" else 1

    @property
    def running(self) -> int:
        """Rows decoding now."""
        return sum(row is not None for row in self._running)

    def free_rows(self) -> list[int]:
        return [i for i, row in enumerate(self._running) if row is None]

    def admit(
        self, assignments: Sequence[tuple[int, TranscriptionItem]]
    ) -> list[tuple[int, BaseException]]:
        """Start each item in its (free) row. Items that cannot start come back with
        their error, and their rows stay free; the others decode from the next step."""
        failed: list[tuple[int, BaseException]] = []
        accepted: list[tuple[int, TranscriptionItem]] = []
        for row, item in assignments:
            try:
                self._check(row, item)
            except Exception as exc:
                failed.append((row, exc))
            else:
                accepted.append((row, item))
        if accepted:
            try:
                with torch.inference_mode():
                    self._start_rows(accepted)
            except Exception as exc:  # the pass itself failed: no row of it starts
                self.release([row for row, _ in accepted])
                failed += [(row, exc) for row, _ in accepted]
        return failed

    def step(self) -> list[RowResult]:
        """Advance every running row by one token; the windows that finished, by row."""
        if not self.running:
            return []
        with torch.inference_mode():
            return self._step()

    def release(self, rows: Iterable[int]) -> None:
        """Stop ``rows`` now (their requests went away); they are free at once."""
        stopped = [row for row in rows if self._running[row] is not None]
        if not stopped:
            return
        for row in stopped:
            self._leave(row)
        with torch.inference_mode():
            index = torch.tensor(stopped, device=self.device)
            self._state.active.index_fill_(0, index, False)

    # -- the whole-batch contract ------------------------------------------------------

    def batch_key(self, item: TranscriptionItem) -> Hashable:
        """Every item can share a batch with every other: rows are independent."""
        return 0

    def transcribe_batch(self, items: Sequence[TranscriptionItem]) -> list[WindowTranscript]:
        """Decode ``items`` together until the last is done (whole-batch mode)."""
        if self.running:
            raise RuntimeError("transcribe_batch needs an idle engine")
        results: list[WindowTranscript] = []
        for start in range(0, len(items), self.rows):
            chunk = items[start : start + self.rows]
            done: dict[int, WindowTranscript | BaseException] = dict(
                self.admit(list(enumerate(chunk)))
            )
            try:
                while self.running:
                    done.update(self.step())
            except BaseException:  # leave the engine idle for the caller's retry
                self.release(range(self.rows))
                raise
            for row in range(len(chunk)):
                outcome = done[row]
                if isinstance(outcome, BaseException):
                    raise outcome
                results.append(outcome)
        return results

    # -- admission -------------------------------------------------------------------

    def _check(self, row: int, item: TranscriptionItem) -> None:
        if not 0 <= row < self.rows or self._running[row] is not None:
            raise RuntimeError(f"row {row} is not free")
        if len(item.audio) > self.window_seconds * SAMPLE_RATE:
            raise ValueError("a window is at most 30 seconds of audio")
        language = item.options.language
        if language and self.multilingual and self.tokenizer.language_token(language) is None:
            raise ValueError(f"unknown language {language!r}")

    def _start_rows(self, accepted: list[tuple[int, TranscriptionItem]]) -> None:
        rows = torch.tensor([row for row, _ in accepted], device=self.device)
        features = self._features([item.audio for _, item in accepted])
        self._encoder.admit(features, rows)
        items = [item for _, item in accepted]
        prompted_unknown = [
            i for i, item in enumerate(items) if item.options.prompt and self._unknown(item)
        ]
        detected = self._detect(rows, items, prompted_unknown)
        first_tokens: list[int] = []
        positions: list[int] = []
        actions: list[int] = []
        limits: list[tuple[int, int, bool]] = []
        blocks: list[tuple[int, list[int]]] = []
        for i, (row, item) in enumerate(accepted):
            language = detected.get(i) or (None if self._unknown(item) else self._language(item))
            previous = self._prompt_tokens(prompt_tail(item.options.prompt or ""))
            head = [self.tokenizer.sot_prev, *previous] if item.options.prompt else []
            if language is None:
                tokenizer = None
                task = self._task_token(item)
                sequence = [*head, self.tokenizer.sot, DETECT, task]
            else:
                tokenizer = self._tokenizer_for(language, item.options.task)
                sequence = tokenizer.prompt(previous if item.options.prompt else ())
            fed_at = len(head) if len(head) > PREFILL_FROM else 0
            if fed_at:
                blocks.append((i, head))
            entry = _Row(item, language, tokenizer, script=sequence[fed_at + 1 :])
            self._running[row] = entry
            self._sampling += item.options.temperature > 0
            first_tokens.append(sequence[fed_at])
            self._at_start += sequence[fed_at] == self.tokenizer.sot
            positions.append(fed_at)
            actions.append(entry.next_action)
            limits.append(self._limits(item, len(sequence)))
        if blocks:
            self._prefill([(int(rows[i]), head) for i, head in blocks])
        self._runner.tokens.index_copy_(0, rows, self._long(first_tokens))
        self._runner.positions.index_copy_(0, rows, self._long(positions))
        self._state.admit(
            rows,
            temperature=torch.tensor([item.options.temperature for item in items]),
            action=torch.tensor(actions),
            min_tokens=torch.tensor([low for low, _, _ in limits]),
            max_tokens=torch.tensor([high for _, high, _ in limits]),
            force_end=torch.tensor([forced for _, _, forced in limits]),
        )

    def _unknown(self, item: TranscriptionItem) -> bool:
        return self.multilingual and not item.options.language

    def _language(self, item: TranscriptionItem) -> str:
        return (item.options.language or "en") if self.multilingual else "en"

    def _task_token(self, item: TranscriptionItem) -> int:
        tokenizer = self.tokenizer
        return tokenizer.translate if item.options.task == "translate" else tokenizer.transcribe

    def _long(self, values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def _limits(self, item: TranscriptionItem, prompt_length: int) -> tuple[int, int, bool]:
        """``(min tokens, max tokens, end forced)``: CTranslate2's length cap, half the
        context but never past it, unless a benchmark sets lengths."""
        natural = min(MAX_LENGTH // 2, MAX_LENGTH + 1 - prompt_length)
        forced = self.length_limits(item) if self.length_limits else None
        if forced is None:
            return 0, natural, False
        low, high = forced
        return min(low, natural - 1), min(high, natural), True

    def _detect(
        self, rows: torch.Tensor, items: Sequence[TranscriptionItem], which: Sequence[int]
    ) -> dict[int, str]:
        """Languages for the items in ``which``, detected from ``<|startoftranscript|>``
        alone, as CTranslate2's ``detect_language`` does: for windows with a text
        prompt, whose own start-of-transcript step would read the prompt too."""
        if not which:
            return {}
        index = torch.tensor(list(which), device=self.device)
        sot = torch.full((len(which), 1), self.tokenizer.sot, device=self.device)
        hidden = self._runner.prefill(rows.index_select(0, index), sot)
        ids = self._language_ids
        best = ids[self._runner.logits(hidden[:, 0]).index_select(1, ids).argmax(dim=-1)]
        languages = self.tokenizer.language_tokens
        return {i: languages[int(token)] for i, token in zip(which, best.tolist(), strict=True)}

    def _prefill(self, blocks: Sequence[tuple[int, list[int]]]) -> None:
        """Run long prompt heads as one block each (right-padded), into their rows."""
        longest = max(len(head) for _, head in blocks)
        padded = [head + [self.tokenizer.eot] * (longest - len(head)) for _, head in blocks]
        rows = self._long([row for row, _ in blocks])
        self._runner.prefill(rows, torch.tensor(padded, device=self.device))

    # -- the step --------------------------------------------------------------------

    def _step(self) -> list[RowResult]:
        count = max(i for i, row in enumerate(self._running) if row is not None) + 1
        state = self._state
        logits = self._runner.step(count)[:count]
        fed = self._runner.tokens[:count]
        action = state.action[:count]
        if self._at_start:  # the no-speech probability is read at that step
            at_start = fed == self.tokenizer.sot
            no_speech = logits.softmax(dim=-1)[:, self._rules.no_speech]
            state.no_speech[:count] = torch.where(at_start, no_speech, state.no_speech[:count])
            self._at_start = 0
        shaped = self._rules.apply(logits, fed, state)
        chosen, logprob = self._rules.pick(
            shaped,
            state.temperature[:count],
            sampling=self._sampling > 0,
            generator=self._generator,
        )
        ids = self._language_ids
        language = ids[logits.index_select(1, ids).argmax(dim=-1)]
        chosen = torch.where(action >= 0, action, torch.where(action == DETECT, language, chosen))
        active = state.active[:count]
        own = active & (action == GENERATE)
        state.logprob_sum[:count] += torch.where(own, logprob, 0.0)
        state.previous[:count] = fed
        state.generated[:count] += own
        self._runner.positions[:count] += active
        self._runner.tokens[:count] = chosen
        is_timestamp = chosen >= self._rules.timestamp_begin
        state.last_timestamp[:count] = torch.where(
            own & is_timestamp, chosen, state.last_timestamp[:count]
        )
        finished = own & (
            (chosen == self._rules.eot) | (state.generated[:count] >= state.max_tokens[:count])
        )
        state.active[:count] &= ~finished
        host = torch.stack(
            (chosen.float(), finished.float(), state.logprob_sum[:count], state.no_speech[:count])
        ).cpu()
        return self._collect(host.numpy())

    def _collect(self, host: np.ndarray) -> list[RowResult]:
        """Record each running row's new token; move scripted rows on; finish the ended."""
        tokens, finished, logprob_sums, no_speech = host
        done: list[RowResult] = []
        moved: list[tuple[int, int]] = []
        for index, row in enumerate(self._running[: len(tokens)]):
            if row is None:
                continue
            token = int(tokens[index])
            if row.script:
                self._at_start += token == self.tokenizer.sot
                if row.script.pop(0) == DETECT:
                    row.language = self.tokenizer.language_tokens.get(token, "en")
                    row.tokenizer = self._tokenizer_for(row.language, row.item.options.task)
                moved.append((index, row.next_action))
                continue
            row.tokens.append(token)
            if not finished[index]:
                continue
            try:
                result = self._finish(index, row, logprob_sums[index], no_speech[index])
                done.append((index, result))
            except Exception as exc:  # one row's failure is that row's alone
                logger.exception("whisper torch engine: finishing row %d failed", index)
                done.append((index, exc))
            self._leave(index)
        if moved:
            rows = self._long([index for index, _ in moved])
            self._state.action.index_copy_(0, rows, self._long([action for _, action in moved]))
        return done

    def _leave(self, row: int) -> None:
        entry = self._running[row]
        if entry is not None:
            self._sampling -= entry.item.options.temperature > 0
            self._running[row] = None

    def _finish(
        self, index: int, row: _Row, logprob_sum: float, no_speech: float
    ) -> WindowTranscript:
        assert row.language is not None and row.tokenizer is not None  # set by its prompt
        tokens = row.tokens[:-1] if row.tokens and row.tokens[-1] == self._rules.eot else row.tokens
        avg_logprob = float(logprob_sum) / (len(tokens) + 1)
        decoded = decode_window(
            row.item, row.language, row.tokenizer, tokens, avg_logprob, float(no_speech)
        )
        options = row.item.options
        alignment = None
        if (options.word_timestamps or options.token_logprobs) and decoded.tokens:
            alignment = self._align(index, row, decoded)
        return decoded.transcript(row.tokenizer, alignment)

    def _align(self, index: int, row: _Row, decoded: DecodedWindow) -> Alignment:
        """Word timings and token probabilities from one teacher-forced pass over the
        window's text, with the row's cross-attention still in place."""
        tokenizer = row.tokenizer
        assert tokenizer is not None
        start = tokenizer.sot_sequence
        text = decoded.tokens
        sequence = [*start, tokenizer.no_timestamps, *text, tokenizer.eot]
        logits, scores = self._runner.teacher_forced(
            index, torch.tensor(sequence, device=self.device), self._alignment_heads
        )
        offset = len(start)
        text_probs = logits[offset : offset + len(text), : tokenizer.eot].softmax(dim=-1)
        chosen = torch.tensor(text, device=self.device)[:, None]
        probs = text_probs.gather(1, chosen).squeeze(1).tolist()
        path = alignment_path(
            scores.cpu().numpy(), len(row.item.audio) // HOP_LENGTH, slice(offset, -1)
        )
        return words_and_logprobs(tokenizer, decoded.spans, row.item.offset, path, probs)


def _alignment_heads(model_path: Path) -> list[tuple[int, int]] | None:
    """The ``alignment_heads`` of a Hugging Face ``generation_config.json``, if any."""
    path = model_path / "generation_config.json"
    if not path.is_file():
        return None
    heads = json.loads(path.read_text()).get("alignment_heads")
    return [(int(layer), int(head)) for layer, head in heads] if heads else None
