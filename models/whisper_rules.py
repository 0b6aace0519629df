"""Whisper's decoding rules for a running batch, as tensor operations over its rows.

Every row of a running batch is at its own point of its own window: some at their
first token, some after a timestamp, some sampling at a temperature, some
greedy. The rules that shape Whisper's output (which tokens are suppressed, when
a timestamp must or must not come, when the text may end) therefore depend on
each row's own history. They are kept here as a few per-row tensors and applied
to the whole batch at once on the device, with no host round trip inside a step.

The rules are CTranslate2's ``ApplyTimestampRules`` and suppression options, in
the order CTranslate2 applies them, so that a row decodes exactly as CTranslate2
decodes the same window alone:

1. always: Whisper's suppressed tokens, and ``<|notimestamps|>``;
2. at the first token: a blank or the end of text (``suppress_blank``), any text
   token (a window opens with a timestamp), and timestamps after 1 s;
3. later: after a single timestamp only another timestamp or the end may follow,
   after a pair only text; timestamps never go back; and if the timestamps
   together are likelier than the best text token, a timestamp it is.

Then a token is picked: the most likely one for greedy rows, a Gumbel-max sample
at the row's temperature for the others (the same distribution as sampling the
softmax). Log-probabilities, for the fallback rule, are of the rule-shaped
distribution before temperature, as openai-whisper and CTranslate2 score them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch

from models.whisper_tokenizer import WhisperTokenizer

NEG_INF = float("-inf")


@dataclass
class RowState:
    """Per-row decoding state on the device; index ``i`` belongs to row ``i``."""

    previous: torch.Tensor
    """The token before the one fed to the next step (meaningful after two tokens)."""
    generated: torch.Tensor
    """Tokens generated so far; 0 means the next step picks the first one."""
    last_timestamp: torch.Tensor
    """The last timestamp token generated, or -1."""
    temperature: torch.Tensor
    logprob_sum: torch.Tensor
    """Of every generated token, the end of text included."""
    no_speech: torch.Tensor
    """The probability of ``<|nospeech|>`` at the start of the transcript."""
    action: torch.Tensor
    """What the row's next token is: a prompt token to feed (>= 0), its language
    (-2), or its own choice (-1); :mod:`models.whisper_torch` keeps it."""
    min_tokens: torch.Tensor
    """The end of text is suppressed until this many tokens (0: no floor)."""
    max_tokens: torch.Tensor
    """The row ends after this many tokens, whatever it writes."""
    force_end: torch.Tensor
    """At ``max_tokens``, write the end of text rather than stop without one."""
    active: torch.Tensor

    @classmethod
    def allocate(cls, rows: int, device: torch.device) -> RowState:
        def zeros(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(rows, dtype=dtype, device=device)

        return cls(
            previous=zeros(torch.long),
            generated=zeros(torch.long),
            last_timestamp=torch.full((rows,), -1, dtype=torch.long, device=device),
            temperature=zeros(torch.float32),
            logprob_sum=zeros(torch.float32),
            no_speech=zeros(torch.float32),
            action=zeros(torch.long),
            min_tokens=zeros(torch.long),
            max_tokens=zeros(torch.long),
            force_end=zeros(torch.bool),
            active=zeros(torch.bool),
        )

    def admit(self, rows: torch.Tensor, **values: torch.Tensor) -> None:
        """Reset ``rows`` for new windows: the given fields take ``values``, the rest
        their starting values."""
        start = {"last_timestamp": -1, "active": True}
        for field in fields(self):
            target: torch.Tensor = getattr(self, field.name)
            if field.name in values:
                target.index_copy_(0, rows, values[field.name].to(target.device, target.dtype))
            else:
                target.index_fill_(0, rows, start.get(field.name, 0))


class DecodingRules:
    """The rules for one tokenizer's vocabulary, with their constant masks on the device."""

    def __init__(
        self,
        tokenizer: WhisperTokenizer,
        vocab: int,
        device: torch.device,
        *,
        max_initial_timestamp_index: int,
    ) -> None:
        self.eot = tokenizer.eot
        self.timestamp_begin = tokenizer.timestamp_begin
        self.no_speech = tokenizer.no_speech
        index = torch.arange(vocab, device=device)
        self.index = index
        self.is_timestamp = index >= self.timestamp_begin
        self.is_text = index < self.eot
        self.before_timestamps = index < self.timestamp_begin
        self.always = self._bias(vocab, device, [*tokenizer.suppressed, tokenizer.no_timestamps])
        first = self._bias(vocab, device, tokenizer.suppressed_at_start)
        first[: self.timestamp_begin] = NEG_INF
        first[self.timestamp_begin + max_initial_timestamp_index + 1 :] = NEG_INF
        self.at_first = first
        self.only_end = torch.full((vocab,), NEG_INF, device=device)
        self.only_end[self.eot] = 0.0

    @staticmethod
    def _bias(vocab: int, device: torch.device, tokens: Iterable[int]) -> torch.Tensor:
        bias = torch.zeros(vocab, device=device)
        bias[torch.tensor(list(tokens), dtype=torch.long, device=device)] = NEG_INF
        return bias

    def apply(self, logits: torch.Tensor, last: torch.Tensor, rows: RowState) -> torch.Tensor:
        """The logits of the first ``n = len(logits)`` rows with every rule applied;
        ``last`` is the token each row was fed (its last generated one, after the first)."""
        n = logits.shape[0]
        generated = rows.generated[:n]
        x = logits + self.always
        x = torch.where((generated == 0)[:, None], x + self.at_first, x)
        started = generated >= 1
        last_is_timestamp = started & (last >= self.timestamp_begin)
        penultimate_is_timestamp = (generated < 2) | (rows.previous[:n] >= self.timestamp_begin)
        text_only = last_is_timestamp & penultimate_is_timestamp
        no_text = last_is_timestamp & ~penultimate_is_timestamp
        last_timestamp = rows.last_timestamp[:n]
        going_back = (started & (last_timestamp >= 0))[:, None] & (
            self.is_timestamp & (self.index[None, :] < last_timestamp[:, None])
        )
        x = x.masked_fill(
            (text_only[:, None] & self.is_timestamp)
            | (no_text[:, None] & self.is_text)
            | going_back,
            NEG_INF,
        )
        logprobs = torch.log_softmax(x, dim=-1)
        timestamp_mass = torch.logsumexp(logprobs[:, self.timestamp_begin :], dim=-1)
        best_text = logprobs[:, : self.timestamp_begin].max(dim=-1).values
        must_stamp = started & ~text_only & (timestamp_mass > best_text)
        x = x.masked_fill(must_stamp[:, None] & self.before_timestamps, NEG_INF)
        too_early = generated < rows.min_tokens[:n]
        x[:, self.eot] = torch.where(too_early, NEG_INF, x[:, self.eot])
        must_end = rows.force_end[:n] & (generated + 1 >= rows.max_tokens[:n])
        return torch.where(must_end[:, None], self.only_end.expand_as(x), x)

    @staticmethod
    def pick(
        x: torch.Tensor,
        temperature: torch.Tensor,
        *,
        sampling: bool,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row and its log-probability.

        ``sampling`` says whether any row samples; when none does, no noise is drawn
        and every row takes its most likely token.
        """
        logprobs = torch.log_softmax(x, dim=-1)
        if sampling:
            uniform = torch.rand(x.shape, device=x.device, generator=generator)
            gumbel = -torch.log(-torch.log(uniform.clamp(min=1e-20, max=1.0 - 1e-7)))
            hot = temperature > 0
            scaled = x / torch.where(hot, temperature, 1.0)[:, None] + gumbel
            chosen = torch.where(hot[:, None], scaled, x).argmax(dim=-1)
        else:
            chosen = x.argmax(dim=-1)
        return chosen, logprobs.gather(1, chosen[:, None]).squeeze(1)
