"""The playground on a server with API keys: the page is public, the API is not, and the
key typed into the page is sent, kept for the tab only, and works for the WebSocket too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from server.catalog import CatalogModel
from tests.browser.conftest import API_KEY, open_playground, wait_for_state
from tests.browser.test_playground_live import (
    listen_until_an_utterance_is_done,
    stop_and_check_the_session_closed,
)
from tests.conftest import LiveServer, make_settings
from tests.patience import patient_http

SENTENCE = "The museum is closed on Mondays."


def test_the_page_is_public_and_the_api_is_not(keyed_server: LiveServer) -> None:
    with patient_http(keyed_server) as http:
        page = http.get("/")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert "voxserve" in page.text and 'id="api-key"' in page.text
        refused = http.get("/v1/models")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["message"]
        allowed = http.get("/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
        assert allowed.status_code == 200, allowed.text


def speak(page: Page) -> None:
    page.fill("#speech-text", SENTENCE)
    page.click("#speech-submit")


def test_the_key_is_asked_for_sent_and_kept_for_the_tab_only(
    page: Page, keyed_server: LiveServer
) -> None:
    open_playground(page, keyed_server, "speech")
    status = page.locator("#key-status")
    expect(status).to_have_attribute("data-state", "needed")

    speak(page)
    wait_for_state(page, "speech-status", "error")
    expect(page.locator("#speech-error")).not_to_have_text("")

    with page.expect_request(lambda r: r.url.endswith("/v1/models")) as probe:
        page.fill("#api-key", API_KEY)
    assert probe.value.headers.get("authorization") == f"Bearer {API_KEY}"
    expect(status).to_have_attribute("data-state", "ok")
    expect(page.locator("#speech-voice option[value=alloy]")).to_be_attached()
    page.select_option("#speech-voice", "alloy")
    with page.expect_request(lambda r: r.url.endswith("/v1/audio/speech")) as sent:
        speak(page)
    assert sent.value.headers.get("authorization") == f"Bearer {API_KEY}"
    wait_for_state(page, "speech-status", "done")
    expect(page.locator("#speech-error")).to_have_text("")

    stored = page.evaluate(
        """() => ({
            session: sessionStorage.getItem('voxserve.apiKey'),
            local: Object.keys(localStorage).map((k) => k + '=' + localStorage.getItem(k)),
            cookie: document.cookie,
        })"""
    )
    assert stored["session"] == API_KEY, stored
    assert not any(API_KEY in entry for entry in stored["local"]), stored
    assert API_KEY not in stored["cookie"], stored
    assert not any(API_KEY in c["value"] for c in page.context.cookies()), "key in a cookie"

    page.fill("#api-key", API_KEY + "-wrong")
    expect(status).to_have_attribute("data-state", "needed")
    expect(status).to_have_text(re.compile("refused", re.IGNORECASE))


def test_live_works_with_the_key(page: Page, keyed_server: LiveServer) -> None:
    open_playground(page, keyed_server, "live")
    page.fill("#api-key", API_KEY)
    expect(page.locator("#key-status")).to_have_attribute("data-state", "ok")
    expect(page.locator("#live-model option[value=whisper-1]")).to_be_attached()
    with page.expect_websocket() as opened:
        listen_until_an_utterance_is_done(page)
    assert "/v1/realtime" in opened.value.url
    assert API_KEY not in opened.value.url  # a subprotocol, never the URL (logs keep URLs)
    stop_and_check_the_session_closed(page, keyed_server)


@pytest.fixture(scope="module")
def private_probes() -> Iterator[LiveServer]:
    """Keys on and only ``/health`` public: ``/ready`` and ``/metrics`` want the key too."""
    settings = make_settings(
        api_keys=(API_KEY,),
        public_paths=("/health",),
        models=(CatalogModel(id="whisper-1", weights="embedded:tiny.en"),),
        speech_models=(),
    )
    with LiveServer(settings, wait_until_ready=False) as live:
        yield live


def test_the_server_tab_sends_the_key_to_probes_an_operator_made_private(
    page: Page, private_probes: LiveServer
) -> None:
    open_playground(page, private_probes, "server")
    expect(page.locator("#server-ready")).to_have_attribute("data-state", "not-ready")
    expect(page.locator("#server-ready")).to_contain_text("401")
    page.fill("#api-key", API_KEY)
    page.press("#api-key", "Enter")
    page.click("#server-refresh")
    expect(page.locator("#server-ready")).to_have_attribute("data-state", "ready")
    depth = page.locator('#server-metrics dd[data-metric="voxserve_queue_depth"]')
    expect(depth.first).to_have_attribute("data-model", "whisper-1")
