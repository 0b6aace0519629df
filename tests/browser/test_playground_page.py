"""The page itself: labelled controls, tabs and forms by keyboard, small, same-origin."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, Response, expect

from tests.browser.conftest import open_playground, wait_for_state
from tests.conftest import LiveServer

PAGE_WEIGHT_LIMIT = 200_000

UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea, button')]
    .filter((el) => el.type !== 'hidden')
    .filter((el) => !((el.labels && el.labels.length)
        || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
        || (el.tagName === 'BUTTON' && el.textContent.trim())))
    .map((el) => el.outerHTML.slice(0, 120))"""
"""Every form control without a name a screen reader can read out."""

TABS = ("speech", "transcribe", "live", "server")


def test_every_control_is_labelled(page: Page, server: LiveServer) -> None:
    open_playground(page, server, "speech")
    expect(page.locator("main h1")).to_have_text("voxserve")
    expect(page.locator("label[for=api-key]")).to_have_text("API key")
    assert page.evaluate(UNLABELLED) == []


def expect_selected(page: Page, tab: str) -> None:
    expect(page.locator(f"#tab-{tab}")).to_have_attribute("aria-selected", "true")
    expect(page.locator(f"#tab-{tab}")).to_have_attribute("tabindex", "0")
    expect(page.locator(f"#panel-{tab}")).to_be_visible()
    for other in TABS:
        if other != tab:
            expect(page.locator(f"#tab-{other}")).to_have_attribute("aria-selected", "false")
            expect(page.locator(f"#tab-{other}")).to_have_attribute("tabindex", "-1")
            expect(page.locator(f"#panel-{other}")).to_be_hidden()
    expect(page.locator(f"#tab-{tab}")).to_be_focused()
    assert page.evaluate("() => location.hash") == f"#{tab}"


def test_tabs_follow_the_arrow_keys_home_and_end(page: Page, server: LiveServer) -> None:
    open_playground(page, server, "speech")
    page.focus("#tab-speech")
    page.keyboard.press("ArrowRight")
    expect_selected(page, "transcribe")
    page.keyboard.press("End")
    expect_selected(page, "server")
    page.keyboard.press("ArrowRight")  # wraps around
    expect_selected(page, "speech")
    page.keyboard.press("ArrowLeft")
    expect_selected(page, "server")
    page.keyboard.press("Home")
    expect_selected(page, "speech")


def test_speak_works_by_keyboard_alone(page: Page, server: LiveServer) -> None:
    open_playground(page, server, "speech")
    expect(page.locator("#speech-voice option[value=alloy]")).to_be_attached()
    page.focus("#speech-text")
    page.keyboard.press("Control+A")
    page.keyboard.type("Rice is often served in round bowls.")
    for _ in range(20):  # Tab through the form's controls to its button
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "speech-submit":
            break
    else:
        raise AssertionError("Tab never reached #speech-submit")
    with page.expect_request(lambda r: r.url.endswith("/v1/audio/speech")) as sent:
        page.keyboard.press("Enter")
    body = sent.value.post_data_json
    assert body is not None
    assert body["input"] == "Rice is often served in round bowls."
    wait_for_state(page, "speech-status", "done")


def test_the_page_is_small_and_loads_nothing_from_elsewhere(page: Page, server: LiveServer) -> None:
    origin = urlsplit(server.base_url).netloc
    requested: list[str] = []
    responses: list[Response] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("response", lambda response: responses.append(response))
    page.goto(f"{server.base_url}/", wait_until="networkidle")
    foreign = [
        url
        for url in requested
        if url.split(":")[0] in ("http", "https", "ws", "wss") and urlsplit(url).netloc != origin
    ]
    assert not foreign, foreign
    files = {
        urlsplit(r.url).path: len(r.body())
        for r in responses
        if not urlsplit(r.url).path.startswith(("/v1/", "/ready", "/metrics", "/health"))
    }
    assert "/" in files and any(path.endswith(".js") for path in files), files
    others = [
        p for p in files if p not in ("/", "/favicon.ico") and not p.startswith("/playground/")
    ]
    assert not others, others
    assert sum(files.values()) < PAGE_WEIGHT_LIMIT, files
