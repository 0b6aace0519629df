"""The transcription tab in Chromium: upload or record, transcribe, read, seek, recover.

The sentences are ones the embedded Whisper writes back exactly from Piper's voice
(``tests.speech``); through Chromium's fake microphone (its audio processing, opus in
WebM) a word may change, so recorded text is held to words heard, not to equality.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import FilePayload, Page, expect

from tests.browser.conftest import (
    CAPTURE_SENTENCES,
    Screenshot,
    open_playground,
    wait_for_state,
)
from tests.conftest import LiveServer
from tests.patience import patient_http
from tests.speech import SENTENCES, spoken_wav, word_error_rate, words

SPOKEN = (SENTENCES[3], SENTENCES[6])
"""Two sentences with a pause: two segments, the second starting well after 0 s."""
RECORD_SECONDS = 4.0

ELAPSED = """(el) => {
    const text = el.textContent || '';
    const clock = text.match(/(\\d+):(\\d+(?:\\.\\d+)?)/);
    if (clock) return Number(clock[1]) * 60 + Number(clock[2]);
    const plain = text.match(/\\d+(?:\\.\\d+)?/);
    return plain ? Number(plain[0]) : 0;
}"""
"""Seconds in ``#stt-record-status``, written as "0:04", "4 s" or "4.2"."""


@pytest.fixture(scope="module")
def spoken_file() -> FilePayload:
    return {"name": "spoken.wav", "mimeType": "audio/wav", "buffer": spoken_wav(*SPOKEN)}


@pytest.fixture
def stt_page(page: Page, server: LiveServer) -> Page:
    open_playground(page, server, "transcribe")
    return page


def transcribe(page: Page, endpoint: str = "/v1/audio/transcriptions") -> str:
    """Press Transcribe, check the request went to ``endpoint``, wait until done; the text."""
    with page.expect_request(lambda r: r.method == "POST" and "/v1/audio/" in r.url) as sent:
        page.click("#stt-submit")
    assert sent.value.url.endswith(endpoint), sent.value.url
    wait_for_state(page, "stt-status", "done")
    expect(page.locator("#stt-error")).to_have_text("")
    return page.locator("#stt-text").inner_text()


def test_an_uploaded_file_is_transcribed_with_segments_that_seek(
    stt_page: Page, spoken_file: FilePayload, screenshot: Screenshot
) -> None:
    page = stt_page
    page.set_input_files("#stt-file", spoken_file)
    expect(page.locator("#stt-file-name")).to_contain_text("spoken.wav")
    page.select_option("#stt-format", "verbose_json")
    page.check("#stt-ts-segment")
    text = transcribe(page)
    wer = word_error_rate([(" ".join(SPOKEN), text)])
    assert wer is not None and wer <= 0.15, text

    segments = page.locator("#stt-segments button.segment")
    expect(segments.nth(1)).to_be_attached()  # two sentences, a pause between: two segments
    second = segments.nth(1)
    start = float(second.get_attribute("data-start") or "nan")
    assert 1.0 < start < float(second.get_attribute("data-end") or "nan"), start
    assert set(words(SPOKEN[1])) & set(words(second.inner_text())), second.inner_text()
    audio_src = page.eval_on_selector("#stt-audio", "el => el.src")
    assert audio_src.startswith("blob:"), audio_src
    # Where the seek landed, read when it lands: playback moves on right after.
    page.eval_on_selector(
        "#stt-audio",
        "el => { window.seeks = []; "
        "el.addEventListener('seeked', () => window.seeks.push(el.currentTime)) }",
    )
    second.click()
    landed = page.wait_for_function("() => window.seeks.length && window.seeks").json_value()
    assert any(abs(at - start) < 0.1 for at in landed), (landed, start)
    screenshot(page, "transcribe.png")


def test_text_format_and_translation_show_their_text(
    stt_page: Page, spoken_file: FilePayload
) -> None:
    page = stt_page
    page.set_input_files("#stt-file", spoken_file)
    page.select_option("#stt-format", "text")
    expect(page.locator("#stt-ts-segment")).to_be_disabled()  # verbose_json only
    text = transcribe(page)
    wer = word_error_rate([(" ".join(SPOKEN), text)])
    assert wer is not None and wer <= 0.15, text
    expect(page.locator("#stt-text pre")).to_be_attached()  # the body, verbatim

    page.check("#stt-translate")
    page.select_option("#stt-format", "json")
    translated = transcribe(page, "/v1/audio/translations")
    # English in, English out: Whisper base's "translation" is close to a transcript.
    wer = word_error_rate([(" ".join(SPOKEN), translated)])
    assert wer is not None and wer <= 0.5, translated


def test_a_bad_file_shows_the_servers_message_and_the_next_request_works(
    stt_page: Page, server: LiveServer, spoken_file: FilePayload
) -> None:
    page = stt_page
    bad: FilePayload = {"name": "bad.wav", "mimeType": "audio/wav", "buffer": b"not audio " * 50}
    with patient_http(server) as http:
        refused = http.post(
            "/v1/audio/transcriptions",
            files={"file": (bad["name"], bad["buffer"], bad["mimeType"])},
            data={"model": "whisper-1"},
        )
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]

    page.set_input_files("#stt-file", bad)
    page.click("#stt-submit")
    wait_for_state(page, "stt-status", "error")
    expect(page.locator("#stt-error")).to_contain_text(message)

    page.set_input_files("#stt-file", spoken_file)
    text = transcribe(page)
    assert set(words(SPOKEN[0])) <= set(words(text)), text
    expect(page.locator("#stt-error")).to_have_text("")


def test_a_recording_from_the_microphone_is_transcribed(stt_page: Page) -> None:
    page = stt_page
    record = page.locator("#stt-record")
    expect(record).to_have_text(re.compile("record", re.IGNORECASE))
    record.click()
    expect(record).to_have_text(re.compile("stop", re.IGNORECASE))
    status = page.locator("#stt-record-status").element_handle()
    page.wait_for_function(f"(el) => ({ELAPSED})(el) >= {RECORD_SECONDS}", arg=status)
    record.click()
    expect(page.locator("#stt-file-name")).to_contain_text("recording.webm")
    text = transcribe(page)
    heard = {word for word in words(text) if len(word) > 3}
    spoken = {word for sentence in CAPTURE_SENTENCES for word in words(sentence)}
    assert len(heard & spoken) >= 3, text
