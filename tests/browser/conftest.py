"""The playground in a real browser: headless Chromium, driven by Playwright, against a
real voxserve.

One browser and two servers serve the whole session (the keys-off ``server`` of
``tests/conftest.py`` and a keyed one); each test gets a fresh browser context, so that
nothing a test leaves in storage reaches the next. The browser's microphone is
Chromium's fake capture device reading a WAV of real speech, so recording and live
transcription hear words a test can check.

Playwright's sync API runs its own event loop: these are plain (not async) tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, expect, sync_playwright

from models.voices import EMBEDDED_VOICES
from server.catalog import CatalogModel, SpeechModel
from tests.browser.chromium import find_chromium
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S
from tests.speech import SENTENCES, spoken_wav

PATIENCE_MS = PATIENCE_S * 1000
"""Playwright's timeouts are in milliseconds: every wait that is not the behaviour."""

CAPTURE_SENTENCES = (SENTENCES[0], SENTENCES[1], SENTENCES[5])
"""What the fake microphone says, over and over (Chromium loops the file)."""

API_KEY = "playground-browser-test-key"

LAUNCH_ARGS = (
    "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces
    "--disable-gpu",
    "--disable-background-networking",  # no requests to anyone else's hosts
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-ui-for-media-stream",  # grant getUserMedia without a prompt
    "--use-fake-device-for-media-stream",
)

ARTIFACTS_ENV = "VOXSERVE_TEST_ARTIFACTS"
DEFAULT_ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "playground"

expect.set_options(timeout=PATIENCE_MS)


@pytest.fixture(scope="session")
def capture_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fake microphone's file: Piper's 22.05 kHz 16-bit mono PCM, 1 s between sentences.

    Chromium's file source converts any rate of 16-bit PCM WAV to the capture
    stream's own (48 kHz here); 22.05 kHz and 48 kHz files were both heard back
    word for word through getUserMedia.
    """
    path = tmp_path_factory.mktemp("fake-mic") / "capture.wav"
    path.write_bytes(spoken_wav(*CAPTURE_SENTENCES, pause_seconds=1.0))
    return path


@pytest.fixture(scope="package")
def browser(capture_wav: Path) -> Iterator[Browser]:
    """One Chromium for the browser tests, closed after the last of them.

    Not session-wide: while Playwright's sync API is open its event loop counts as
    running in this thread, and every later test that calls ``asyncio.run`` would fail.
    """
    executable = find_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            args=[*LAUNCH_ARGS, f"--use-file-for-fake-audio-capture={capture_wav}"],
        )
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[LiveServer]:
    """A server with an API key, kept small: tiny.en and one voice load quickly."""
    settings = make_settings(
        api_keys=(API_KEY,),
        models=(CatalogModel(id="whisper-1", weights="embedded:tiny.en"),),
        speech_models=(SpeechModel(id="tts-1", voices={"alloy": EMBEDDED_VOICES["alloy"]}),),
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: ``$VOXSERVE_TEST_ARTIFACTS`` or tests/artifacts/playground/."""
    folder = Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class PageProblems:
    """What went wrong inside the page: uncaught exceptions fail the test, console errors
    are shown with any failure (a 401 is a console error too, and an expected one)."""

    uncaught: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console.append(message.text)

    def on_page_error(self, error: Error) -> None:
        self.uncaught.append(f"{error.name}: {error.message}\n{error.stack}")


@pytest.fixture
def problems() -> PageProblems:
    return PageProblems()


@pytest.fixture
def page(browser: Browser, problems: PageProblems) -> Iterator[Page]:
    """A page in a fresh context (own storage) that may use the (fake) microphone."""
    context = browser.new_context(
        permissions=["microphone"], viewport={"width": 1280, "height": 900}
    )
    context.set_default_timeout(PATIENCE_MS)
    opened = context.new_page()
    opened.on("console", problems.on_console)
    opened.on("pageerror", problems.on_page_error)
    yield opened
    context.close()
    for line in problems.console:  # shown by pytest only when the test fails
        print(f"console error: {line}")
    # A strict CSP blocks inline script and foreign hosts; a page that needs them logs this.
    blocked = [text for text in problems.console if "Content Security Policy" in text]
    assert not problems.uncaught, f"uncaught errors in the page: {problems.uncaught}"
    assert not blocked, f"the page broke its CSP: {blocked}"


Screenshot = Callable[[Page, str], Path]


@pytest.fixture(scope="session")
def screenshot(artifacts: Path) -> Screenshot:
    """Save the whole page as ``artifacts/<name>`` and check a real PNG was written."""

    def save(page: Page, name: str) -> Path:
        path = artifacts / name
        path.unlink(missing_ok=True)
        page.screenshot(path=str(path), full_page=True)
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n"), f"{path} is not a PNG"
        assert len(data) > 10_000, f"{path} is only {len(data)} bytes: a blank page?"
        return path

    return save


def open_playground(page: Page, live: LiveServer, tab: str) -> None:
    """Load ``/`` at ``#<tab>`` and wait until that tab's panel shows."""
    page.goto(f"{live.base_url}/#{tab}")
    expect(page.locator(f"#tab-{tab}")).to_have_attribute("aria-selected", "true")
    expect(page.locator(f"#panel-{tab}")).to_be_visible()


def wait_for_state(page: Page, status: str, state: str) -> None:
    """Until ``#<status>[data-state]`` is ``state``; a failure quotes the panel's error."""
    try:
        expect(page.locator(f"#{status}")).to_have_attribute("data-state", state)
    except AssertionError as failure:
        error = page.locator(f"#{status.split('-')[0]}-error")
        shown = error.text_content(timeout=1000) if error.count() else None
        message = f"#{status} never {state!r}; the panel's error: {shown!r}"
        raise AssertionError(message) from failure
