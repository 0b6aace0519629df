"""The server tab in Chromium: readiness, the model list and the metrics, refreshed."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import Screenshot, open_playground
from tests.conftest import LiveServer
from tests.speech import SENTENCES, spoken_wav

BATCH_SIZE = """() => {
    const entry = document.querySelector(
        '#server-metrics dd[data-metric="voxserve_batch_size"][data-model="whisper-1"]');
    const value = entry ? parseFloat(entry.textContent) : NaN;
    return value >= 1 ? value : null;
}"""
"""whisper-1's mean batch size, once it has one (at least one item per model call)."""


def test_the_server_tab_shows_readiness_models_and_metrics(
    page: Page, server: LiveServer, screenshot: Screenshot
) -> None:
    open_playground(page, server, "server")
    expect(page.locator("#server-ready")).to_have_attribute("data-state", "ready")
    models = page.locator("#server-models")
    expect(models).to_contain_text("whisper-1")
    expect(models).to_contain_text("tts-1")
    depth = page.locator('#server-metrics dd[data-metric="voxserve_queue_depth"]')
    expect(depth.first).to_be_attached()
    assert all(entry.get_attribute("data-model") for entry in depth.all())

    server.openai().audio.transcriptions.create(
        model="whisper-1", file=("s.wav", spoken_wav(SENTENCES[4]))
    )
    page.click("#server-refresh")
    mean = page.wait_for_function(BATCH_SIZE).json_value()
    assert mean >= 1, mean
    expect(page.locator("#server-updated")).to_contain_text("Updated")
    screenshot(page, "server.png")
