"""Clean and split the ``input`` of ``POST /v1/audio/speech`` before synthesis.

:func:`normalize` turns any string into plain, speakable text that every backend can take
(Piper with espeak-ng, and the misaki-style G2P of hibari and Kokoro): no control or
invisible characters, no emoji, no markdown or HTML markup.

:func:`split_sentences` cuts that text into sentence-sized pieces. Splitting is what makes
streaming work: the first piece is synthesized, and can be sent, while the rest still waits;
short pieces from many requests fill a batch evenly instead of one long input holding it; and
no piece exceeds what a model can say in one pass (its phoneme or token limit). Long
sentences are cut at clause boundaries first, then at spaces, and only then mid-word.

A piece never exceeds ``max_chars`` (:data:`MAX_PIECE_CHARS`), whatever holds a sentence
together: an abbreviation or an initial does not end a sentence ("Dr. Smith", "J. K."), so
``"A. " * 1365`` is one sentence of 4095 characters, and is cut like any long one. The
backends bound what such a piece costs (many short clauses, slow speech) themselves.
Numbers, currency and pronunciation are left to the backends.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

MAX_INPUT_CHARS = 4096
MAX_PIECE_CHARS = 300
"""The longest piece :func:`split_sentences` returns by default (~20 s of speech at speed 1)."""

# Control, format (zero-width, bidi, tag), surrogate, private-use and unassigned code points.
_UNSPEAKABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn"})
_EMOJI = re.compile(
    r"[^\S\n]*(?:[0-9#*]\ufe0f?\u20e3"  # keycaps, and the space before an emoji
    r"|[\U0001f000-\U0001fbff"  # emoji, flags (regional indicators), skin tones, symbols
    r"\u2600-\u27bf\u2b00-\u2bff\u25a0-\u25ff"  # misc symbols, dingbats, arrows, shapes
    r"\u231a\u231b\u2328\u23cf\u23e9-\u23fa\u2934\u2935"  # technical symbols used as emoji
    r"\ufe00-\ufe0f\U000e0100-\U000e01ef\u20e3"  # variation selectors, lone keycap mark
    r"\ufffc\ufffd])+"  # object and replacement characters
)

# NFKC writes spacing accents as a space and a combining mark: U+00B4 -> " \u0301". That acute
# accent, often typed as an apostrophe ("don\u00b4t"), becomes one first; other marks left
# dangling after a space are dropped.
_ACUTE_AS_APOSTROPHE = str.maketrans({"\u00b4": "'"})
_ORPHAN_MARKS = re.compile(r"(?:^|(?<=\s))[\u0300-\u036f\u064b-\u065f\u0670\u3099\u309a]+", re.M)

# Markdown and HTML, in the order they are removed. Block rules work on whole lines.
_CODE_FENCE = re.compile(r"^ *(?:```|~~~).*$", re.M)
_HORIZONTAL_RULE = re.compile(r"^ *([-*_=])(?: *\1){2,} *$", re.M)
_TABLE_DIVIDER = re.compile(r"^(?=.*\|)(?=.*-)[ |:-]+$", re.M)
_TABLE_ROW = re.compile(r"^ *\|(.*)$", re.M)
_HEADER = re.compile(r"^ *#{1,6}(?: +|$)(.*?)(?: +#+)? *$", re.M)
_BLOCKQUOTE = re.compile(r"^ *(?:> ?)+", re.M)
_LIST_BULLET = re.compile(r"^ *(?:[-*+•◦‣]|\d{1,3}[.)]) +", re.M)
_LINK_DEFINITION = re.compile(r"^ *\[[^\]\n]+\]: *\S+.*$", re.M)
_TARGET = r"\((?:[^()\n]|\([^()\n]*\))*\)"  # (url "title"), even (a_(b))
_IMAGE = re.compile(rf"!\[([^\]\n]*)\]{_TARGET}")
_LINK = re.compile(rf"\[([^\]\n]+)\](?:{_TARGET}|\[[^\]\n]*\])")
_AUTOLINK = re.compile(r"<((?:https?|ftp|mailto):[^>\s]+|[^>\s@]+@[^>\s]+)>")
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.S)
_HTML_LINE_BREAK = re.compile(r"<br\s*/?>", re.I)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>\n]*)?/?>")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_STRONG = re.compile(r"(\*\*|~~)(?=\S)(.+?)(?<=\S)\1|(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)")
_EMPHASIS = re.compile(
    r"(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])|(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)"
)

_SPACES = re.compile(r"[^\S\n]+")
_SPACES_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")

# Sentence ends. CJK stops end a sentence with no space after them; so does an ASCII ! ? . right
# after a CJK character (NFKC turns the full-width forms into ASCII). Elsewhere the mark must be
# followed by whitespace, which keeps 3.14, $9.99, v1.2.3, example.com and a@b.org whole.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_CJK_STOPS = "\u3002\uff01\uff1f"  # ideographic full stop, full-width ! and ?
_CLOSERS = "\"')\\]}\u00bb\u2019\u201d\u300d\u300f\u3011"  # also curly and CJK quotes
_OPENERS = "\"'([{\u00ab\u00bf\u00a1\u2018\u201c\u300c\u300e\u3010"  # also ¿ and ¡
_SENTENCE_END = re.compile(
    rf"(?:(?P<cjk>[{_CJK_STOPS}]|(?<=[{_CJK}])[.!?])[{_CJK_STOPS}.!?]*"
    rf"|(?P<mark>[.!?\u2026]+)(?=[{_CLOSERS}]*(?:\s|$)))[{_CLOSERS}]*"
)
_WORD_BEFORE = re.compile(rf"[{_OPENERS}]*([^\s{_OPENERS}]*)$")
_NEXT_CHAR = re.compile(rf"\s*[{_OPENERS}]*(\S)")
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "e.g", "i.e", "etc", "inc", "ltd", "jr", "sr"}
    | {"fig", "cf", "approx", "dept"}
)
_NUMBER_ABBREVIATIONS = frozenset({"no", "vol", "pp"})  # only before a number: "No. 5"

# Long sentences: cut after a clause mark or a dash, else at a space, else anywhere.
_CLAUSE_BREAK = re.compile(r"[,;:)\]]+(?=\s)|\u2014+|\u2013(?=\s)|(?<=\s)-(?=\s)")
_WHITESPACE = re.compile(r"\s")
_HAS_WORD = re.compile(r"[^\W_]")  # a letter or a digit, in any script


def normalize(text: str) -> str:
    """Plain, speakable text: what no backend can take or should read aloud is gone."""
    text = "\n".join(str(text).replace("\t", " ").splitlines())  # \r\n, \r, U+2028… -> \n
    text = "".join(
        ch for ch in text if ch == "\n" or unicodedata.category(ch) not in _UNSPEAKABLE_CATEGORIES
    )
    # Before any markup rule, so that full-width asterisks, hashes, backticks and spaces count.
    text = unicodedata.normalize("NFKC", text.translate(_ACUTE_AS_APOSTROPHE))
    text = _ORPHAN_MARKS.sub("", _EMOJI.sub("", text))
    text = _strip_markup(text)
    text = _SPACES_AROUND_NEWLINE.sub("\n", _SPACES.sub(" ", text))
    return _BLANK_LINES.sub("\n\n", text).strip()


def _strip_markup(text: str) -> str:
    text = _HTML_COMMENT.sub("", text)
    for block_rule in (_CODE_FENCE, _HORIZONTAL_RULE, _TABLE_DIVIDER, _LINK_DEFINITION):
        text = block_rule.sub("", text)
    text = _TABLE_ROW.sub(
        lambda m: ", ".join(c.strip() for c in m[1].split("|") if c.strip()), text
    )
    text = _HEADER.sub(r"\1", text)
    text = _BLOCKQUOTE.sub("", text)
    text = _LIST_BULLET.sub("", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _HTML_TAG.sub("", _HTML_LINE_BREAK.sub("\n", text))
    text = _INLINE_CODE.sub(lambda m: m[2].strip(), text)
    text = _STRONG.sub(lambda m: m[2] or m[3], text)
    return _EMPHASIS.sub(lambda m: m[1] or m[2], text)


def split_sentences(
    text: str, *, max_chars: int = MAX_PIECE_CHARS, first_max_chars: int | None = None
) -> list[str]:
    """Sentences of ``text``, each cut into pieces of at most ``max_chars`` characters.

    ``first_max_chars`` caps the first piece more tightly, cutting it at the *earliest*
    clause boundary, so the first audio is ready sooner. Every piece is stripped and holds a
    letter or digit; pieces of punctuation alone are dropped.
    """
    if max_chars < 1 or (first_max_chars is not None and first_max_chars < 1):
        raise ValueError("max_chars and first_max_chars must be at least 1")
    pieces: list[str] = []
    for sentence in _sentences(text):
        while sentence:
            first = not pieces and first_max_chars is not None
            limit = min(first_max_chars or max_chars, max_chars) if first else max_chars
            cut = len(sentence) if len(sentence) <= limit else _cut(sentence, limit, first)
            piece, sentence = sentence[:cut].strip(), sentence[cut:].strip()
            if _HAS_WORD.search(piece):
                pieces.append(piece)
    return pieces


def _sentences(text: str) -> Iterator[str]:
    for line in text.splitlines():  # every newline is a break: paragraphs, list items, rows
        start = 0
        for end in _SENTENCE_END.finditer(line):
            if _ends_sentence(line, end):
                yield line[start : end.end()].strip()
                start = end.end()
        yield line[start:].strip()


def _ends_sentence(line: str, end: re.Match[str]) -> bool:
    if end["cjk"]:
        return True
    following = _NEXT_CHAR.match(line, end.end())
    if following is None:
        return True  # end of the line
    if following[1].islower():
        return False  # "3.30 p.m. and", "wait... what", '"Stop!" he said'
    before = _WORD_BEFORE.search(line, max(0, end.start() - 40), end.start())
    word = before[1] if before else ""
    if end["mark"] != "." or not word:
        return True
    if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper()):  # "J. K."
        return False
    return not (word.lower() in _NUMBER_ABBREVIATIONS and following[1].isdigit())


def _cut(sentence: str, limit: int, earliest: bool) -> int:
    """Where to cut ``sentence`` (longer than ``limit``) so that its head fits ``limit``."""
    window = sentence[: limit + 1]  # one past the limit: is the character after it a space?
    clause_ends = [m.end() for m in _CLAUSE_BREAK.finditer(window) if m.end() <= limit]
    if clause_ends:
        return clause_ends[0] if earliest else clause_ends[-1]
    spaces = [m.start() for m in _WHITESPACE.finditer(window) if m.start() > 0]
    if spaces:
        return spaces[-1]
    cut = limit  # one long word: cut it, but not between a letter and its combining marks
    while cut > 1 and unicodedata.combining(sentence[cut]):
        cut -= 1
    return cut
