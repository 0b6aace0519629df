"""The Whisper backend on the embedded tiny.en, with exact-text expectations."""

from __future__ import annotations

import numpy as np
import pytest

from models.alignment import token_bytes
from models.base import DecodingOptions, TranscriptionItem
from models.whisper_ct2 import WhisperCT2Backend
from models.whisper_decoding import split_at_timestamps
from tests.models.conftest import to_16k
from tests.speech import SENTENCES


def test_a_batch_of_every_sentence_comes_back_word_for_word(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    items = [TranscriptionItem(audio=to_16k(wav)) for wav in sentence_wavs]
    results = whisper.transcribe_batch(items)
    # Word for word, in any case: on audio decoded as faster-whisper decodes it (16-bit
    # samples, which voxserve keeps), int8 tiny.en writes "our team" for "Our team".
    assert [r.text.lower() for r in results] == [s.lower() for s in SENTENCES]
    for item, result in zip(items, results, strict=True):
        assert result.language == "en"
        duration = len(item.audio) / 16_000
        for segment in result.segments:
            assert 0 <= segment.start <= segment.end <= duration + 0.02
            assert segment.tokens and segment.avg_logprob < 0
            assert 0 <= segment.no_speech_prob <= 1


def test_results_do_not_depend_on_the_rest_of_the_batch(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    items = [TranscriptionItem(audio=to_16k(wav)) for wav in sentence_wavs[:6]]
    alone = [whisper.transcribe_batch([item])[0] for item in items]
    together = whisper.transcribe_batch(items)
    reversed_batch = whisper.transcribe_batch(items[::-1])[::-1]
    assert alone == together == reversed_batch


def test_offsets_make_segment_times_absolute(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    audio = to_16k(sentence_wavs[0])
    (at_zero,) = whisper.transcribe_batch([TranscriptionItem(audio=audio)])
    (later,) = whisper.transcribe_batch([TranscriptionItem(audio=audio, offset=90.0)])
    assert later.text == at_zero.text
    assert later.segments[0].start == pytest.approx(at_zero.segments[0].start + 90.0)
    assert later.segments[0].seek == 9000


def test_prompts_change_the_batch_key_and_mixed_keys_are_refused(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    audio = to_16k(sentence_wavs[1])
    plain = TranscriptionItem(audio=audio)
    prompted = TranscriptionItem(audio, options=DecodingOptions(prompt="Stella, the store."))
    same_length = TranscriptionItem(audio, options=DecodingOptions(prompt="Stella, the shop."))
    assert whisper.batch_key(plain) == (0, 0.0)
    prompted_key = whisper.batch_key(prompted)
    assert isinstance(prompted_key, tuple) and prompted_key[0] > 1
    assert whisper.batch_key(prompted) == whisper.batch_key(same_length)
    with pytest.raises(ValueError, match="batch keys"):
        whisper.transcribe_batch([plain, prompted])
    (result,) = whisper.transcribe_batch([prompted])
    assert result.text == SENTENCES[1]


def test_splitting_at_timestamp_tokens() -> None:
    ts = 1000  # the first timestamp token; each step is 20 ms

    closed = split_at_timestamps([ts, 1, 2, ts + 50, ts + 50, 3, ts + 120], ts, duration=5.0)
    assert closed == ([(0.0, 1.0, [1, 2]), (1.0, 2.4, [3])], None)
    # Without a pair of timestamps, unclosed text runs to the end of the window.
    assert split_at_timestamps([ts + 10, 7, 8], ts, duration=3.0) == ([(0.2, 3.0, [7, 8])], None)
    # Timestamps past the audio are clamped to it.
    assert split_at_timestamps([ts, 4, ts + 500], ts, duration=2.0) == ([(0.0, 2.0, [4])], None)
    assert split_at_timestamps([ts, ts + 5], ts, duration=2.0) == ([], None)


def test_a_window_that_ends_on_a_timestamp_pair_asks_to_be_read_again() -> None:
    ts = 1000
    # "<|0.00|> a <|2.00|><|2.00|>" then end of text: nothing after 2 s was read.
    assert split_at_timestamps([ts, 1, ts + 100, ts + 100], ts, duration=9.0) == (
        [(0.0, 2.0, [1])],
        2.0,
    )
    # Unclosed text after a complete segment is dropped and read again.
    tokens = [ts, 1, ts + 100, ts + 100, 2, 3]
    assert split_at_timestamps(tokens, ts, duration=9.0) == ([(0.0, 2.0, [1])], 2.0)
    # A resume point that would not move forward, or would leave almost nothing,
    # ends the window instead: no endless passes.
    assert split_at_timestamps([ts, 1, ts + 25, ts + 25], ts, duration=9.0)[1] is None
    assert split_at_timestamps([ts, 1, ts + 440, ts + 440], ts, duration=8.9)[1] is None


def test_word_timings_and_logprobs_do_not_depend_on_the_batch(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    asking = DecodingOptions(word_timestamps=True, token_logprobs=True)
    target = TranscriptionItem(to_16k(sentence_wavs[1]), offset=40.0, options=asking)
    others = [TranscriptionItem(to_16k(w)) for w in sentence_wavs[2:5]]
    (alone,) = whisper.transcribe_batch([target])
    mixed = whisper.transcribe_batch([others[0], target, *others[1:]])
    assert mixed[1].segments == alone.segments
    assert all(not s.words and not s.logprobs for r in mixed[::2] for s in r.segments)
    words = [w for s in alone.segments for w in s.words]
    assert "".join(w.word for w in words).strip() == alone.text
    assert words[0].start >= 40.0 and words[-1].end <= 40.0 + len(target.audio) / 16_000
    tokens = [t for s in alone.segments for t in s.logprobs]
    assert [t for s in alone.segments for t in s.tokens] == [
        whisper.model.hf_tokenizer.token_to_id(whisper.model.hf_tokenizer.id_to_token(t))
        for s in alone.segments
        for t in s.tokens
    ]
    assert len(tokens) == sum(len(s.tokens) for s in alone.segments)
    assert all(t.logprob <= 0 for t in tokens)


def test_only_word_timestamps_leaves_logprobs_empty_and_the_reverse(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    audio = to_16k(sentence_wavs[0])
    only_words, only_tokens = whisper.transcribe_batch(
        [
            TranscriptionItem(audio, options=DecodingOptions(word_timestamps=True)),
            TranscriptionItem(audio, options=DecodingOptions(token_logprobs=True)),
        ]
    )
    assert only_words.segments[0].words and not only_words.segments[0].logprobs
    assert only_tokens.segments[0].logprobs and not only_tokens.segments[0].words


def test_each_window_reports_the_measures_a_fallback_policy_reads(
    whisper: WhisperCT2Backend, sentence_wavs: list[bytes]
) -> None:
    (speech,) = whisper.transcribe_batch(
        [TranscriptionItem(to_16k(sentence_wavs[0]), options=DecodingOptions(temperature=0.2))]
    )
    assert speech.temperature == 0.2 and not speech.silent
    assert -1.0 < speech.avg_logprob < 0 and 0.5 < speech.compression_ratio < 2.4
    assert all(s.temperature == 0.2 for s in speech.segments)
    (silence,) = whisper.transcribe_batch([TranscriptionItem(np.zeros(16_000 * 5, np.float32))])
    # The model knows it heard nothing, and still says "You" with confidence, so
    # Whisper's rule keeps it: why the server asks the VAD before the model.
    assert silence.no_speech_prob > 0.6 and not speech.no_speech_prob > 0.6


def test_token_bytes_are_the_utf8_pieces_of_the_text(whisper: WhisperCT2Backend) -> None:
    tokenizer = whisper._tokenizer("transcribe", "en")
    for text in (" naïve café", " 東京", " emoji 🎉"):
        tokens = tokenizer.encode(text)
        pieces = [token_bytes(tokenizer, t) for t in tokens]
        assert b"".join(pieces).decode() == text
