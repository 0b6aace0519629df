"""The speech tab in Chromium: speak, hear the whole clip, download it.

The yardstick for every clip's length is the same request made with the official
``openai`` SDK as a WAV: whatever path the page plays by (MediaSource while mp3
streams, Web Audio for pcm, a blob once complete), the audio element must end up
holding the whole clip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Screenshot, open_playground, wait_for_state
from tests.conftest import LiveServer
from tests.speech import decode_native

SENTENCE = (
    "The weather today is sunny with a light breeze. "
    "We will meet at the library after lunch. "
    "My brother plays the piano every evening."
)
"""Three sentences: the server sends each as it is made, so the body comes in pieces."""
VOICE = "alloy"
TOLERANCE = 0.10

AUDIO_STATE = """([el, previous]) => {
    const ok = el.src && el.src !== previous && el.readyState >= 1
        && Number.isFinite(el.duration) && el.duration > 0;
    return ok ? {src: el.src, duration: el.duration} : null;
}"""
"""The audio element's new clip once its metadata is in: a replaced src, a real duration."""


def reference_seconds(live: LiveServer, *, speed: float = 1.0) -> float:
    """The clip's length as the SDK gets it (WAV), from its samples, not its header."""
    audio = (
        live.openai()
        .audio.speech.create(
            model="tts-1", voice=VOICE, input=SENTENCE, response_format="wav", speed=speed
        )
        .read()
    )
    samples, rate, _ = decode_native(audio)
    return len(samples) / rate


def speak(page: Page, *, fmt: str, speed: float = 1.0) -> dict[str, Any]:
    """Fill the form, press Speak, wait until done; the new clip's src and duration."""
    page.fill("#speech-text", SENTENCE)
    page.select_option("#speech-model", "tts-1")
    expect(page.locator(f"#speech-voice option[value={VOICE}]")).to_be_attached()
    page.select_option("#speech-voice", VOICE)
    page.select_option("#speech-format", fmt)
    page.fill("#speech-speed", str(speed))
    previous = page.eval_on_selector("#speech-audio", "el => el.src")
    with page.expect_request(lambda r: r.url.endswith("/v1/audio/speech")) as sent:
        page.click("#speech-submit")
    body = sent.value.post_data_json
    assert body is not None
    assert body["response_format"] == fmt and body["voice"] == VOICE, body
    assert float(body["speed"]) == speed and body["input"] == SENTENCE, body
    wait_for_state(page, "speech-status", "done")
    expect(page.locator("#speech-error")).to_have_text("")
    audio = page.locator("#speech-audio").element_handle()
    handle = page.wait_for_function(AUDIO_STATE, arg=[audio, previous])
    result: dict[str, Any] = handle.json_value()
    return result


@pytest.fixture
def speech_page(page: Page, server: LiveServer) -> Page:
    open_playground(page, server, "speech")
    return page


def test_mp3_plays_the_whole_clip_and_downloads_it(
    speech_page: Page, server: LiveServer, screenshot: Screenshot
) -> None:
    page = speech_page
    expected = reference_seconds(server)
    clip = speak(page, fmt="mp3")
    assert clip["src"].startswith("blob:"), clip
    assert abs(clip["duration"] - expected) <= TOLERANCE * expected, (clip, expected)

    ttfa = page.locator("#speech-ttfa")
    milliseconds = float(ttfa.get_attribute("data-ms") or "nan")
    assert milliseconds > 0, ttfa.get_attribute("data-ms")

    link = page.locator("#speech-download")
    expect(link).to_be_visible()
    href = link.get_attribute("href") or ""
    assert href.startswith("blob:"), href
    assert (link.get_attribute("download") or "").endswith(".mp3")
    # Saved as a person would: the page's CSP (connect-src 'self') forbids fetching blobs.
    with page.expect_download() as saving:
        link.click()
    saved = Path(saving.value.path()).read_bytes()
    assert saving.value.suggested_filename.endswith(".mp3")
    samples, rate, _ = decode_native(saved, "mp3")
    assert abs(len(samples) / rate - clip["duration"]) <= 0.05 * expected, (len(saved), clip)
    screenshot(page, "speech.png")


def test_speed_two_gives_a_clearly_shorter_clip(speech_page: Page) -> None:
    normal = speak(speech_page, fmt="mp3")["duration"]
    fast = speak(speech_page, fmt="mp3", speed=2.0)["duration"]
    assert fast < 0.75 * normal, (fast, normal)


@pytest.mark.parametrize("fmt", ["pcm", "wav"])
def test_pcm_and_wav_play_the_whole_clip(speech_page: Page, server: LiveServer, fmt: str) -> None:
    expected = reference_seconds(server)
    clip = speak(speech_page, fmt=fmt)
    assert abs(clip["duration"] - expected) <= TOLERANCE * expected, (clip, expected)
    link = speech_page.locator("#speech-download")
    assert (link.get_attribute("download") or "").endswith(f".{fmt}")
