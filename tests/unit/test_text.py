"""Text for speech: normalize() cleans any input, split_sentences() cuts it into pieces."""

from __future__ import annotations

import random

import pytest

from server.text import MAX_INPUT_CHARS, MAX_PIECE_CHARS, normalize, split_sentences


def _words(text: str) -> list[str]:
    """Whitespace-separated tokens that hold a letter or digit: what must survive splitting."""
    return [word for word in text.split() if any(ch.isalnum() for ch in word)]


def _alnum(text: str) -> list[str]:
    return [ch for ch in text if ch.isalnum()]


def test_max_input_chars_matches_the_openai_limit() -> None:
    assert MAX_INPUT_CHARS == 4096


# --- normalize ------------------------------------------------------------------------------

KEPT_AS_IS = [
    "Hello, world! How are you?",
    "Price: $9.99, \u20ac5 or \u00a5300 - 50% off; call 555-0100 at 3:30.",
    "\u041f\u0440\u0438\u0432\u0435\u0442, \u043c\u0438\u0440! \u0645\u0631\u062d\u0628\u0627",
    "今日は晴れです。你好。",
    "Caf\u00e9 na\u00efve \u00fcber \u0915\u093f\u0924\u093e\u092c",
    "snake_case_name and _private? No: my_var_2 and 2*3*4 = 24.",
    "a < b and c > d, C# and F# are languages, #1 hit.",
    "Version 2.0.1 at example.com or a.b@example.org: 3.14 \u00a9 2024.",
    "Dashes \u2014 like this \u2013 and quotes \u201clike this\u201d stay.",
]


@pytest.mark.parametrize("text", KEPT_AS_IS)
def test_ordinary_text_passes_through(text: str) -> None:
    assert normalize(text) == text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # control characters; tabs become spaces; newlines of every kind become \n
        ("a\x00b\x07c\x1bd\x7fe\x9ff", "abcdef"),
        ("one\ttwo\t\tthree", "one two three"),
        ("a\r\nb\rc\u2028d\u2029e\x85f\x0bg\x0ch", "a\nb\nc\nd\ne\nf\ng\nh"),
        ("para one\n\n\n\n\npara two", "para one\n\npara two"),
        ("  line one   \n   line two  ", "line one\nline two"),
        ("lots    of \u00a0 \u2003 spaces", "lots of spaces"),
        # zero-width and bidi controls, soft hyphen, byte order mark
        ("zero\u200bwidth\u200c\u200d\u2060\ufeff here", "zerowidth here"),
        ("\u202eevil\u202c \u2066iso\u2069 \u200emark\u200f", "evil iso mark"),
        ("soft\u00adhyphen", "softhyphen"),
        # lone surrogates, private use, noncharacters, replacement characters
        ("a\ud800b\udfffc", "abc"),
        ("private\ue000\U000f0000 use\uffff\ufffe", "private use"),
        ("broken \ufffd\ufffc text", "broken text"),
        # NFKC: full-width forms, compatibility characters, ellipsis
        ("\uff21\uff22\uff23\uff01\uff1f\uff0c\uff11\uff12\uff13", "ABC!?,123"),
        ("wide\u3000space\uff08yes\uff09", "wide space(yes)"),
        ("\ufb01ne \u2160 \u2474", "fine I (1)"),
        ("wait\u2026 what", "wait... what"),
        # NFKC spells spacing accents as space + combining mark; none may be left dangling
        ("don\u00b4t", "don't"),
        ("a \u00a8 b\u02dc \uffe3 c゛", "a b c"),
        ("\u0301\u0308start", "start"),
        ("\uff76\uff9e\uff77\uff9e", "ガギ"),  # half-width kana compose
    ],
)
def test_unspeakable_characters_are_removed_or_replaced(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Great job \U0001f600!", "Great job!"),
        ("Thumbs \U0001f44d\U0001f3fd up", "Thumbs up"),  # skin tone modifier
        ("Family \U0001f468\u200d\U0001f469\u200d\U0001f467 time", "Family time"),  # ZWJ
        ("Made in \U0001f1fa\U0001f1f8 and \U0001f1ef\U0001f1f5.", "Made in and."),  # flags
        (
            "Scotland \U0001f3f4\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",
            "Scotland",
        ),
        ("Step 1\ufe0f\u20e3 then #\ufe0f\u20e3 and *\u20e3", "Step then and"),  # keycaps
        ("I \u2764\ufe0f NY \u2600 \u2702 \u2b50 \u25b6 \u231b", "I NY"),
        ("text\ufe0e with\ufe0f selectors", "text with selectors"),
        ("\U0001f600\U0001f389\U0001f44d", ""),
    ],
)
def test_emoji_and_pictographs_are_removed(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Some **bold**, __strong__ and ~~gone~~ words.", "Some bold, strong and gone words."),
        ("An *emphasis* and _another_ one.", "An emphasis and another one."),
        ("***both*** at once", "both at once"),
        (
            "keep snake_case_id, _private_var and 5 * 3 * 2",
            "keep snake_case_id, _private_var and 5 * 3 * 2",
        ),
        ("Run `pip install x` now.", "Run pip install x now."),
        ("Use ``a `tick` b`` here", "Use a `tick` b here"),
        ("Before\n```python\nprint(1)\n```\nAfter", "Before\n\nprint(1)\n\nAfter"),
        ("~~~\ncode\n~~~", "code"),
        ("# Title\n## Sub title ##\n###### Deep", "Title\nSub title\nDeep"),
        ("> quoted\n> > nested quote", "quoted\nnested quote"),
        ("- one\n* two\n+ three\n1. four\n12) five", "one\ntwo\nthree\nfour\nfive"),
        ('See [the docs](https://x.org/a_(b) "Title") now.', "See the docs now."),
        ("A ![small cat](cat.png) sits.", "A small cat sits."),
        ("Read [this][ref].\n\n[ref]: https://example.com", "Read this."),
        ("Go to <https://example.com> now", "Go to https://example.com now"),
        ("Some <b>bold</b> and <a href='x'>link</a><br/>end", "Some bold and link\nend"),
        ("Hidden <!-- a\ncomment --> text", "Hidden text"),
        ("Above\n\n---\n***\n_ _ _\n\nBelow", "Above\n\nBelow"),
        ("Heading\n=======\nText", "Heading\n\nText"),
        ("| Name | Age |\n|:-----|----:|\n| Ann | 31 |", "Name, Age\n\nAnn, 31"),
        ("\uff0a\uff0awide bold\uff0a\uff0a and \uff03 wide header", "wide bold and # wide header"),
    ],
)
def test_markdown_and_html_markup_is_removed(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_a_markdown_document_reads_as_plain_sentences() -> None:
    document = (
        "# Release notes\n\n"
        "Version **2.0.1** is out! Highlights:\n\n"
        "- Faster `decode()` \U0001f680\n"
        "- Fixed [issue 42](https://github.com/x/y/issues/42).\n\n"
        "> Thanks to *everyone* who helped.\n"
    )
    assert split_sentences(normalize(document)) == [
        "Release notes",
        "Version 2.0.1 is out!",
        "Highlights:",
        "Faster decode()",
        "Fixed issue 42.",
        "Thanks to everyone who helped.",
    ]


def test_normalize_is_stable_on_its_own_output() -> None:
    text = normalize("# Hi \U0001f600\n\n**Dr.** Smith\u2019s\tnotes\u2026 \uff01\n\n\n- a\n- b")
    assert text == "Hi\n\nDr. Smith\u2019s notes... !\n\na\nb"
    assert normalize(text) == text


# --- split_sentences ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Dr. Smith arrived at 3.30 p.m. and left.", ["Dr. Smith arrived at 3.30 p.m. and left."]),
        ('He said "Stop!" Then he left.', ['He said "Stop!"', "Then he left."]),
        ('"Stop!" he said.', ['"Stop!" he said.']),
        ("Visit example.com today. It works.", ["Visit example.com today.", "It works."]),
        ("Version 2.0.1 is out. Get v1.2.3 now!", ["Version 2.0.1 is out.", "Get v1.2.3 now!"]),
        ("It costs $9.99. Pi is 3.14. Done", ["It costs $9.99.", "Pi is 3.14.", "Done"]),
        ("Mail a.b@example.org. Thanks.", ["Mail a.b@example.org.", "Thanks."]),
        ("Wait... what? No way... Really.", ["Wait... what?", "No way...", "Really."]),
        ("Wait\u2026 what\u2026 Oh.", ["Wait\u2026 what\u2026", "Oh."]),
        ("Really?! Yes!!! Ok.", ["Really?!", "Yes!!!", "Ok."]),
        ("Mr. and Mrs. Dursley met Prof. Lupin.", ["Mr. and Mrs. Dursley met Prof. Lupin."]),
        ("Cats vs. Dogs, e.g. Rex, i.e. Mine.", ["Cats vs. Dogs, e.g. Rex, i.e. Mine."]),
        ("See Fig. 3 and No. 5 here.", ["See Fig. 3 and No. 5 here."]),
        ("No. I refuse.", ["No.", "I refuse."]),
        ("J. K. Rowling wrote it. She is famous.", ["J. K. Rowling wrote it.", "She is famous."]),
        (
            "She smiled. (It was late.) Then [sic.] Go",
            ["She smiled.", "(It was late.)", "Then [sic.]", "Go"],
        ),
        ("\u201cHello.\u201d She waved.", ["\u201cHello.\u201d", "She waved."]),
        ("one\ntwo\r\nthree\rfour\n\nfive", ["one", "two", "three", "four", "five"]),
        ("Line one\nstill line two. Three", ["Line one", "still line two.", "Three"]),
        # CJK stops need no space after them; NFKC turns full-width ! and ? into ASCII
        ("今日は晴れ。明日は雨\uff01本当\uff1f", ["今日は晴れ。", "明日は雨\uff01", "本当\uff1f"]),
        ("你好!再见?好。", ["你好!", "再见?", "好。"]),
        ("「はい。」そう。", ["「はい。」", "そう。"]),
        ("Hi. ... !!! . Bye.", ["Hi.", "Bye."]),
        ("", []),
        ("  \n\n ", []),
        ("... ?! \u2014", []),
    ],
)
def test_sentences_end_where_a_reader_would_stop(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


_TITLES = ["Mr.", "Mrs.", "Ms.", "Dr.", "Prof.", "St.", "Jr.", "Sr.", "DR.", "(Dr."]
_ABBREVIATIONS = ["vs.", "e.g.", "i.e.", "etc.", "Inc.", "Ltd.", "Fig.", "E.g.", "cf."]


@pytest.mark.parametrize("abbreviation", [*_TITLES, *_ABBREVIATIONS])
def test_no_sentence_ends_after_an_abbreviation(abbreviation: str) -> None:
    text = f"We met {abbreviation} Smith today. Bye."
    assert split_sentences(text) == [f"We met {abbreviation} Smith today.", "Bye."]


def test_emoji_only_input_has_no_sentences() -> None:
    assert split_sentences(normalize("\U0001f600 \U0001f389\u200d\U0001f44d\U0001f3fd")) == []


def test_control_characters_never_reach_a_sentence() -> None:
    text = normalize("Stop\x00 here.\x1b Go\u200b on!\x07\x1b")
    assert split_sentences(text) == ["Stop here.", "Go on!"]


@pytest.mark.parametrize(
    ("text", "max_chars", "expected"),
    [
        # the latest clause boundary that fits wins
        ("alpha beta, gamma delta; epsilon zeta", 25, ["alpha beta, gamma delta;", "epsilon zeta"]),
        ("one: two, three four five six", 12, ["one: two,", "three four", "five six"]),
        ("left\u2014right side of it", 12, ["left\u2014", "right side", "of it"]),
        ("left \u2013 right - side of it", 10, ["left \u2013", "right -", "side of it"]),
        ("f(x) and g(y) are here", 10, ["f(x)", "and g(y)", "are here"]),
        # no clause boundary: the latest space; no space: a hard cut
        ("aaaa bbbb cccc dddd", 9, ["aaaa bbbb", "cccc dddd"]),
        ("abcdefghij", 4, ["abcd", "efgh", "ij"]),
        ("1,000,000 dollars", 12, ["1,000,000", "dollars"]),  # commas inside a number hold
        (
            "e\u0301e\u0301e\u0301",
            3,
            ["e\u0301", "e\u0301", "e\u0301"],
        ),  # marks stay on their letter
    ],
)
def test_long_sentences_are_cut_at_clauses_then_spaces(
    text: str, max_chars: int, expected: list[str]
) -> None:
    assert split_sentences(text, max_chars=max_chars) == expected


def test_first_piece_is_cut_at_the_first_clause_that_fits() -> None:
    text = "Well, as I said before, the answer is simple: we go home. Then we rest."
    assert split_sentences(text, max_chars=300, first_max_chars=40) == [
        "Well,",
        "as I said before, the answer is simple: we go home.",
        "Then we rest.",
    ]
    # without a clause boundary under the cap it falls back to the last space that fits
    assert split_sentences("Short words only here. Next one.", first_max_chars=12) == [
        "Short words",
        "only here.",
        "Next one.",
    ]
    # a first sentence under the cap is left whole; later pieces use max_chars
    assert split_sentences("Hi there. A, b, c, d.", max_chars=10, first_max_chars=10) == [
        "Hi there.",
        "A, b, c,",
        "d.",
    ]
    assert split_sentences("Hi, you.", first_max_chars=None) == ["Hi, you."]


@pytest.mark.parametrize(("max_chars", "first_max_chars"), [(0, None), (10, 0), (-1, 5)])
def test_limits_below_one_are_refused(max_chars: int, first_max_chars: int | None) -> None:
    with pytest.raises(ValueError):
        split_sentences("text", max_chars=max_chars, first_max_chars=first_max_chars)


def test_a_full_length_input_without_punctuation_is_cut_at_spaces() -> None:
    rng = random.Random(7)
    words = ["speech", "model", "batch", "audio", "early", "x", "tokenizer", "go"]
    text = " ".join(rng.choice(words) for _ in range(2000))[:MAX_INPUT_CHARS].strip()
    pieces = split_sentences(normalize(text))
    assert all(len(piece) <= 300 for piece in pieces)
    assert sum(len(piece) > 280 for piece in pieces) >= len(pieces) - 1  # pieces are full
    assert " ".join(pieces).split() == text.split()


def test_a_word_longer_than_the_limit_comes_out_in_pieces() -> None:
    pieces = split_sentences("x" * 3000, max_chars=300)
    assert [len(piece) for piece in pieces] == [300] * 10
    pieces = split_sentences("Start " + "y" * 700 + " end.", max_chars=300, first_max_chars=50)
    assert [len(piece) for piece in pieces] == [5, 300, 300, 105]


# --- properties over random input -----------------------------------------------------------

_TRICKY = (
    "aZ9 .,;:!?\u2026。\uff01\n\r\t*_`#>|-+[]()<>\"'\u201d\u2014\u200b\ud800"
    "\U0001f600\u20e3\ufe0f\u0301\u00e9漢字"
)
_PROSE = (
    "Dr. Mr. e.g. etc. No. 5 3.14 $9.99 v1.2.3 example.com a@b.org J. K. word, clause; "
    'yes: end. what? wow! wait... (aside) "quoted." 你好。 caf\u00e9 \u2014 - 42'
)
_TOKENS = _PROSE.split(" ")


def _random_text(rng: random.Random) -> str:
    kind = rng.randrange(3)
    length = rng.randint(0, 400)
    if kind == 0:  # any code point at all
        return "".join(chr(rng.randrange(0x110000)) for _ in range(length))
    if kind == 1:  # dense in the characters the rules care about
        return "".join(rng.choice(_TRICKY) for _ in range(length))
    return " ".join(rng.choice(_TOKENS) for _ in range(length // 4))


def test_random_input_never_raises_and_pieces_stay_bounded() -> None:
    rng = random.Random(20240611)
    for _ in range(1500):
        raw = _random_text(rng)
        max_chars = rng.randint(1, 80)
        first_max_chars = rng.choice([None, 1, rng.randint(1, 80)])
        text = normalize(raw)
        pieces = split_sentences(text, max_chars=max_chars, first_max_chars=first_max_chars)
        for piece in pieces:
            assert piece == piece.strip() and 0 < len(piece) <= max_chars
            assert any(ch.isalnum() for ch in piece)
        if pieces and first_max_chars is not None:
            assert len(pieces[0]) <= first_max_chars
        # no letter or digit is lost, added or reordered, even when a word is hard-cut
        assert _alnum("".join(pieces)) == _alnum(text)
        assert _alnum("".join(split_sentences(raw, max_chars=max_chars))) == _alnum(raw)


def test_random_prose_keeps_every_word_in_order() -> None:
    rng = random.Random(99)
    for _ in range(500):
        text = " ".join(rng.choice(_TOKENS) for _ in range(rng.randint(0, 200)))
        # the longest token fits, so no word needs a hard cut
        max_chars = rng.randint(12, 120)
        pieces = split_sentences(normalize(text), max_chars=max_chars)
        assert _words(" ".join(pieces)) == _words(text)


HOSTILE = [
    "A. " * 1365,  # every "A." an initial: no sentence ends in 4095 characters
    "Dr. " * 1000,
    "i.e., " * 680,
    "Mr. Mrs. Ms. Prof. St. vs. etc. e.g. " * 110,
    "J. K. R. T. " * 340,
    "No. 5 " * 680,  # a number abbreviation before a number
    "a." * 2048,
    "x" * 4096,
    "," * 4095 + "a",
    "9" * 4096,
    "\ufdfa" * 4096,  # NFKC writes this one character as 18
    ("Well, \u2014 um \u2014 so, " * 200)[:4096],
]


@pytest.mark.parametrize("text", HOSTILE, ids=lambda text: repr(text[:12]))
def test_no_piece_exceeds_the_bound_whatever_holds_a_sentence_together(text: str) -> None:
    # as the server splits a request: a short first piece, then pieces up to the default
    normalized = normalize(text)
    pieces = split_sentences(normalized, first_max_chars=120)
    assert pieces and len(pieces[0]) <= 120
    assert max(len(piece) for piece in pieces) <= MAX_PIECE_CHARS
    assert len(pieces) >= len(_alnum(normalized)) // MAX_PIECE_CHARS  # nothing left whole
    assert _alnum("".join(pieces)) == _alnum(normalized)


def test_a_run_of_initials_is_cut_near_the_bound_between_initials() -> None:
    pieces = split_sentences("A. " * 1365)
    assert all(piece.startswith("A.") and piece.endswith("A.") for piece in pieces)
    assert min(len(piece) for piece in pieces[:-1]) >= MAX_PIECE_CHARS - 3
    assert MAX_PIECE_CHARS == 300  # ~20 s of speech at speed 1; the backends assume about this
