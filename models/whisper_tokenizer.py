"""Whisper's tokenizer: special tokens, prompts, text and word splits, with no engine attached.

Both Whisper engines read the same ``tokenizer.json`` (CTranslate2 conversions and
Hugging Face repositories ship the same file), and both need the same handful of
facts about it: where the special tokens are, how a prompt is laid out, which
tokens Whisper suppresses by default, and how tokens group into words for word
timings. This module knows them with only the ``tokenizers`` library, so the torch
engine runs on a box without faster-whisper or CTranslate2.

The rules are openai-whisper's (``tokenizer.py``), which faster-whisper follows too:

- a prompt is ``[<|startofprev|>, *previous text] + [<|startoftranscript|>, <|lang|>,
  <|task|>]``; an English-only model has no language or task token;
- timestamp tokens start right after ``<|notimestamps|>``, one per 20 ms;
- text tokens are those below ``<|endoftext|>``.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import tokenizers

from models.base import Task

NON_SPEECH_SEQUENCES = (
    *("<<", ">>", "<<<", ">>>", "--", "---", "-(", "-[", "('", '("'),
    *("((", "))", "(((", ")))", "[[", "]]", "{{", "}}", "♪♪", "♪♪♪"),
)
"""Bracket and note runs Whisper writes around non-speech, beside the single symbols."""
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})
"""Written without spaces between words: words split where a character completes."""


class WhisperTokenizer:
    """One ``tokenizer.json`` seen as Whisper sees it, for one language and task.

    ``for_language`` gives the variant for another language and task; the
    underlying ``tokenizers.Tokenizer`` is shared.
    """

    def __init__(
        self,
        tokenizer: tokenizers.Tokenizer,
        *,
        multilingual: bool,
        language: str = "en",
        task: Task = "transcribe",
    ) -> None:
        self.tokenizer = tokenizer
        self.multilingual = multilingual
        self.language_code = language if multilingual else "en"
        self.task = task
        if multilingual and self.language_token(language) is None:
            raise ValueError(f"unknown language {language!r}")

    @classmethod
    def from_file(cls, path: str | Path, *, multilingual: bool) -> WhisperTokenizer:
        return cls(tokenizers.Tokenizer.from_file(str(path)), multilingual=multilingual)

    def for_language(self, language: str, task: Task) -> WhisperTokenizer:
        return WhisperTokenizer(
            self.tokenizer, multilingual=self.multilingual, language=language, task=task
        )

    # -- special tokens ------------------------------------------------------------

    def _special(self, name: str) -> int:
        token = self.tokenizer.token_to_id(name)
        if token is None:
            raise ValueError(f"tokenizer has no {name} token")
        return int(token)

    @cached_property
    def sot(self) -> int:
        return self._special("<|startoftranscript|>")

    @cached_property
    def eot(self) -> int:
        return self._special("<|endoftext|>")

    @cached_property
    def sot_prev(self) -> int:
        return self._special("<|startofprev|>")

    @cached_property
    def sot_lm(self) -> int:
        return self._special("<|startoflm|>")

    @cached_property
    def transcribe(self) -> int:
        return self._special("<|transcribe|>")

    @cached_property
    def translate(self) -> int:
        return self._special("<|translate|>")

    @cached_property
    def no_timestamps(self) -> int:
        return self._special("<|notimestamps|>")

    @cached_property
    def no_speech(self) -> int:
        token = self.tokenizer.token_to_id("<|nospeech|>")
        return int(token) if token is not None else self._special("<|nocaptions|>")

    @property
    def timestamp_begin(self) -> int:
        """``<|0.00|>``: every token from here on is a time, 20 ms apart."""
        return self.no_timestamps + 1

    def language_token(self, language: str) -> int | None:
        token = self.tokenizer.token_to_id(f"<|{language}|>")
        return None if token is None else int(token)

    @cached_property
    def language_tokens(self) -> dict[int, str]:
        """Every language token of the vocabulary (they sit between SOT and translate)."""
        out: dict[int, str] = {}
        for token in range(self.sot + 1, self.translate):
            piece = self.tokenizer.id_to_token(token) or ""
            if piece.startswith("<|") and piece.endswith("|>"):
                out[token] = piece[2:-2]
        return out

    @property
    def sot_sequence(self) -> list[int]:
        if not self.multilingual:
            return [self.sot]
        language = self.language_token(self.language_code)
        assert language is not None  # checked in __init__
        task = self.translate if self.task == "translate" else self.transcribe
        return [self.sot, language, task]

    def prompt(self, previous: Sequence[int]) -> list[int]:
        """The decoder's prompt: previous text (already cut to its last tokens), then SOT."""
        head = [self.sot_prev, *previous] if previous else []
        return [*head, *self.sot_sequence]

    # -- text ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, tokens: Sequence[int]) -> str:
        return str(self.tokenizer.decode([t for t in tokens if t < self.eot]))

    def decode_with_timestamps(self, tokens: Sequence[int]) -> str:
        parts: list[str] = []
        run: list[int] = []
        for token in tokens:
            if token >= self.timestamp_begin:
                parts.append(self.tokenizer.decode(run))
                run = []
                parts.append(f"<|{(token - self.timestamp_begin) * 0.02:.2f}|>")
            else:
                run.append(token)
        parts.append(self.tokenizer.decode(run))
        return "".join(parts)

    @cached_property
    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of speaker tags, music notes and bracketed asides, which Whisper suppresses
        so that it writes only what is spoken; plain punctuation stays allowed."""
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
        symbols += NON_SPEECH_SEQUENCES
        notes = set("♩♪♫♬♭♮♯")  # multi-token: their first token is safe to suppress
        found = {self.encode(" -")[0], self.encode(" '")[0]}
        for symbol in symbols + sorted(notes):
            for tokens in (self.encode(symbol), self.encode(" " + symbol)):
                if len(tokens) == 1 or symbol in notes:
                    found.add(tokens[0])
        return tuple(sorted(found))

    @cached_property
    def suppressed(self) -> tuple[int, ...]:
        """Whisper's default ``suppress_tokens=[-1]``: non-speech symbols and task tokens."""
        special = {
            self.transcribe,
            self.translate,
            self.sot,
            self.sot_prev,
            self.sot_lm,
            self.no_speech,
        }
        return tuple(sorted(set(self.non_speech_tokens) | special))

    @cached_property
    def suppressed_at_start(self) -> tuple[int, ...]:
        """Not allowed as the first text token: a blank and an immediate end of text."""
        return (*self.encode(" "), self.eot)

    # -- words ---------------------------------------------------------------------

    def split_to_word_tokens(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Group tokens into words (with their leading space), as word timings need."""
        if self.language_code in NO_SPACE_LANGUAGES:
            return self._split_on_unicode(tokens)
        return self._split_on_spaces(tokens)

    def _split_on_unicode(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Cut wherever the tokens so far decode to whole characters."""
        full = self.decode_with_timestamps(tokens)
        replacement = "\ufffd"
        words: list[str] = []
        groups: list[list[int]] = []
        current: list[int] = []
        offset = 0
        for token in tokens:
            current.append(token)
            decoded = self.decode_with_timestamps(current)
            at = decoded.find(replacement)
            if at < 0 or (offset + at < len(full) and full[offset + at] == replacement):
                words.append(decoded)
                groups.append(current)
                current = []
                offset += len(decoded)
        return words, groups

    def _split_on_spaces(self, tokens: list[int]) -> tuple[list[str], list[list[int]]]:
        """Join sub-words until one starts with a space, is punctuation or is special."""
        words: list[str] = []
        groups: list[list[int]] = []
        for piece, piece_tokens in zip(*self._split_on_unicode(tokens), strict=True):
            starts_word = (
                piece_tokens[0] >= self.eot
                or piece.startswith(" ")
                or piece.strip() in string.punctuation
                or not words
            )
            if starts_word:
                words.append(piece)
                groups.append(list(piece_tokens))
            else:
                words[-1] += piece
                groups[-1].extend(piece_tokens)
        return words, groups
