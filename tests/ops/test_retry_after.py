"""A client refused with 429 that waits ``Retry-After`` and retries is usually admitted.

One place per model (``max_queue_size`` 1), over real HTTP: a long request holds
the place, another client is refused, sleeps what ``Retry-After`` says and tries
again. ``Retry-After`` counts the work admitted (audio seconds, characters) at the
measured rate, so it covers the long request; counting only the items queued said
about one second while the long request ran for several.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from server.scheduler import ModelScheduler
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S
from tests.speech import SENTENCES, spoken_wav

TRIALS = 3
VOICE = "echo"
LONG_TEXT = " ".join(SENTENCES * 2)
"""About 1,300 characters: many sentences, of which a speech request queues only four."""


@pytest.fixture(scope="module")
def one_place() -> Iterator[LiveServer]:
    """One request at a time per model; no queue timeout gets in the way."""
    with LiveServer(make_settings(max_queue_size=1, max_queue_time=300.0)) as live:
        yield live


def _scheduler(live: LiveServer, kind: str) -> ModelScheduler[Any, Any]:
    runtime = live.app.state.runtime
    if kind == "transcription":
        scheduler: ModelScheduler[Any, Any] = runtime.transcription["whisper-1"].scheduler
        return scheduler
    return runtime.speech.voice("tts-1", VOICE).engine.scheduler  # type: ignore[no-any-return]


def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.002)


def _transcribe(live: LiveServer, wav: bytes) -> httpx.Response:
    with live.http() as http:
        return http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav)},
            data={"model": "whisper-1"},
            timeout=PATIENCE_S,
        )


def _speak(live: LiveServer, text: str) -> httpx.Response:
    with live.http() as http:
        return http.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": VOICE, "input": text, "response_format": "pcm"},
            timeout=PATIENCE_S,
        )


class Hog:
    """A long request in a thread, holding the one place until it is answered."""

    def __init__(self, send: Callable[[], httpx.Response]) -> None:
        self.answers: list[httpx.Response] = []
        self._thread = threading.Thread(target=lambda: self.answers.append(send()))

    def __enter__(self) -> Hog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._thread.join(timeout=PATIENCE_S)
        assert self.answers and self.answers[0].status_code == 200, self.answers


def _obeying_client(
    live: LiveServer, kind: str, hog: Callable[[], httpx.Response], request: Callable[[], Any]
) -> tuple[int, int]:
    """Trials of: the hog holds the place, the client is refused, sleeps Retry-After
    and retries once. Returns (refusals, retries admitted)."""
    scheduler = _scheduler(live, kind)
    refused = admitted = 0
    for _ in range(TRIALS):
        with Hog(hog):
            _until(lambda: scheduler.admitted == 1, "the hog admitted")
            first = request()
            if first.status_code != 429:  # the hog was already done: no refusal to obey
                continue
            refused += 1
            time.sleep(int(first.headers["retry-after"]))
            again = request()
            assert again.status_code in (200, 429), again.text
            admitted += again.status_code == 200
    return refused, admitted


def test_a_transcription_client_obeying_retry_after_is_usually_admitted(
    one_place: LiveServer, long_wav: tuple[bytes, str]
) -> None:
    wav, _ = long_wav
    short = spoken_wav(SENTENCES[0])
    assert _transcribe(one_place, wav).status_code == 200  # the rate is measured
    refused, admitted = _obeying_client(
        one_place,
        "transcription",
        lambda: _transcribe(one_place, wav),
        lambda: _transcribe(one_place, short),
    )
    assert refused >= 2, "the long request was never still running: nothing to obey"
    assert admitted >= refused - 1 and admitted * 3 >= refused * 2, (refused, admitted)


def test_a_speech_client_obeying_retry_after_is_usually_admitted(one_place: LiveServer) -> None:
    assert _speak(one_place, LONG_TEXT).status_code == 200  # the rate is measured
    refused, admitted = _obeying_client(
        one_place,
        "speech",
        lambda: _speak(one_place, LONG_TEXT),
        lambda: _speak(one_place, "Good morning."),
    )
    assert refused >= 2, "the long request was never still running: nothing to obey"
    assert admitted >= refused - 1 and admitted * 3 >= refused * 2, (refused, admitted)


def _refusal_while(live: LiveServer, wav: bytes, work_at_least: float) -> int:
    """Retry-After given while ``wav`` holds the place and has declared its work; retried
    if the request was done before the refusal could be asked for."""
    scheduler = _scheduler(live, "transcription")
    probe = spoken_wav(SENTENCES[1])
    for _ in range(5):
        with Hog(lambda: _transcribe(live, wav)):
            _until(lambda: scheduler.pending_work >= work_at_least, "the work declared")
            answer = _transcribe(live, probe)
        if answer.status_code == 429:
            return int(answer.headers["retry-after"])
    raise AssertionError("the held place was never seen")


def test_retry_after_grows_with_the_work_admitted(long_wav: tuple[bytes, str]) -> None:
    """A 70 s upload holding the place says to wait longer than a 5 s one does."""
    five = spoken_wav(*SENTENCES[:2])
    with LiveServer(make_settings(speech_models=(), max_queue_size=1)) as live:
        assert _transcribe(live, five).status_code == 200  # the rate is measured
        after_short = _refusal_while(live, five, 1.0)
        after_long = _refusal_while(live, long_wav[0], 30.0)
    assert after_long >= 2 * after_short, (after_short, after_long)
