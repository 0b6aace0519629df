"""The default whisper-1 hears every language, as OpenAI's does: it transcribes Spanish,
Italian, Portuguese and German speech in its own language, names the language it detected,
takes a given language, and translates; English still comes from tiny.en, word for word.

The server is the session's default one (``make_settings()``: the embedded catalog);
the foreign speech is Kokoro-82M reading espeak-ng's IPA (``tests.speech.foreign_wav``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.speech import FOREIGN, SENTENCES, any_words, error_rate, foreign_wav, spoken_wav

# The SDK marks translations deprecated; OpenAI still serves them, and so do we.
pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


@pytest.mark.parametrize(
    ("language", "name", "most_wrong", "key_words"),
    [
        ("es", "spanish", 0.1, ("buenos", "días", "parque")),
        ("it", "italian", 0.1, ("buongiorno", "parco")),
        ("pt", "portuguese", 0.1, ("bom", "dia", "parque")),
        ("de", "german", 0.25, ("guten", "morgen", "wetter", "park")),  # "Hote ist, das"
    ],
)
def test_speech_is_transcribed_in_its_own_language_which_is_detected(
    client: openai.OpenAI, language: str, name: str, most_wrong: float, key_words: tuple[str, ...]
) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=(f"{language}.wav", foreign_wav(language)),
        response_format="verbose_json",
    )
    assert result.language == name, result.text
    heard = any_words(result.text)
    assert all(word in heard for word in key_words), result.text
    wer = error_rate([(FOREIGN[language], result.text)])
    assert wer is not None and wer <= most_wrong, result.text


def test_a_given_language_is_used_with_word_timings(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model="whisper-1",
        file=("es.wav", foreign_wav("es")),
        language="es",
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert result.language == "spanish"
    assert "parque" in any_words(result.text)
    spoken = [w.word.strip(" .,").lower() for w in result.words or []]
    assert "parque" in spoken and "buenos" in spoken


@pytest.mark.parametrize(
    ("language", "greeting"), [("es", "buenos"), ("it", "buongiorno"), ("de", "guten")]
)
def test_translation_gives_english(client: openai.OpenAI, language: str, greeting: str) -> None:
    audio = foreign_wav(language)
    result = client.audio.translations.create(model="whisper-1", file=(f"{language}.wav", audio))
    heard = any_words(result.text)
    assert result.text.lower().startswith("good morning"), result.text
    assert "park" in heard and greeting not in heard, result.text
    verbose = client.audio.translations.create(
        model="whisper-1", file=(f"{language}.wav", audio), response_format="verbose_json"
    )
    assert verbose.language == "english" and verbose.text == result.text
    assert verbose.model_dump()["task"] == "translate"


def test_english_is_still_tiny_en_word_for_word_beside_other_languages(
    client: openai.OpenAI, sentence_wavs: list[bytes]
) -> None:
    """English requests sent together with Spanish ones (so they may share batches)
    still get exactly the text tiny.en writes, and report English."""
    english = list(range(6))

    def english_text(n: int) -> tuple[str, str]:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=("en.wav", sentence_wavs[n]), response_format="verbose_json"
        )
        return result.language, result.text

    def spanish_text(_: int) -> tuple[str, str]:
        result = client.audio.transcriptions.create(
            model="whisper-1", file=("es.wav", foreign_wav("es")), response_format="verbose_json"
        )
        return result.language, result.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        spanish = [pool.submit(spanish_text, n) for n in range(2)]
        heard = list(pool.map(english_text, english))
    assert heard == [("english", SENTENCES[n]) for n in english]
    for future in spanish:
        language, text = future.result()
        assert language == "spanish" and "parque" in any_words(text)
    given = client.audio.transcriptions.create(
        model="whisper-1", file=("en.wav", spoken_wav(SENTENCES[7])), language="en"
    )
    assert given.text == SENTENCES[7]
