"""The live tab in Chromium: the fake microphone streamed over the realtime WebSocket.

The microphone says sentences with a second of silence between them, so the server's
VAD ends turns by itself and utterances complete while the test watches.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from benchmarks.server_process import metric
from tests.browser.conftest import (
    CAPTURE_SENTENCES,
    Screenshot,
    open_playground,
    wait_for_state,
)
from tests.conftest import LiveServer
from tests.patience import patient_http, wait_until
from tests.speech import words

HEARD = """(sentences) => {
    const spoken = new Set(sentences.join(' ').toLowerCase().match(/[a-z']+/g));
    for (const p of document.querySelectorAll('#live-transcript .utterance.done')) {
        const heard = (p.textContent.toLowerCase().match(/[a-z']+/g) || [])
            .filter((word) => word.length > 3 && spoken.has(word));
        if (heard.length >= 2) return p.textContent;
    }
    return null;
}"""
"""The first finished utterance with at least two longer words the microphone said."""
START = re.compile(r"\bstart\b", re.IGNORECASE)
STOP = re.compile(r"\bstop\b", re.IGNORECASE)


def listen_until_an_utterance_is_done(page: Page) -> str:
    start = page.locator("#live-start")
    start.click()
    wait_for_state(page, "live-status", "listening")
    expect(start).to_have_text(STOP)
    heard: str = page.wait_for_function(HEARD, arg=list(CAPTURE_SENTENCES)).json_value()
    return heard


def stop_and_check_the_session_closed(page: Page, live: LiveServer) -> None:
    page.click("#live-start")
    wait_for_state(page, "live-status", "idle")
    expect(page.locator("#live-start")).to_have_text(START)
    expect(page.locator("#live-error")).to_have_text("")
    with patient_http(live) as http:
        wait_until(
            lambda: metric(http.get("/metrics").text, "voxserve_realtime_sessions") == 0,
            "the realtime session closed",
        )


def test_live_transcription_hears_the_microphone(
    page: Page, server: LiveServer, screenshot: Screenshot
) -> None:
    open_playground(page, server, "live")
    heard = listen_until_an_utterance_is_done(page)
    spoken = {word for sentence in CAPTURE_SENTENCES for word in words(sentence)}
    assert len({w for w in words(heard) if len(w) > 3} & spoken) >= 2, heard
    utterance = page.locator("#live-transcript .utterance.done").first
    assert utterance.get_attribute("data-item-id"), "an utterance names its item"
    screenshot(page, "live.png")
    stop_and_check_the_session_closed(page, server)
