"""A full queue answers 429 before reading the upload; a long wait answers 503.

Nothing here races the clock but the refusal itself: the long request is known to be
queued from ``/metrics``, not after a sleep, and every client waits with
``PATIENCE_S`` (a 70 s clip transcribed window by window takes minutes on a busy
machine: a 60 s client timeout lost its answer there).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import openai
import pytest

from benchmarks.server_process import metric
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.ops.rawhttp import post_without_body
from tests.patience import PATIENCE_S, patient_http, wait_for_metric, wait_until_ready
from tests.speech import SENTENCES, spoken_wav

REFUSAL_BOUND_S = 10.0
"""A refusal before the upload takes milliseconds; 10 s is the bound on a busy machine.
Its speed is the behaviour, but what proves the body was not read is that an answer
comes at all while the body is never sent."""


@pytest.fixture(scope="module")
def one_place() -> Iterator[LiveServer]:
    """One request at a time on whisper-1, items one by one, and a 1 s queue timeout."""
    settings = make_settings(
        speech_models=(), max_queue_size=1, max_batch_size=1, max_queue_time=1.0
    )
    with LiveServer(settings, wait_until_ready=False) as live:
        wait_until_ready(live)
        yield live


def _openai(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live.base_url}/v1", api_key="unused", max_retries=0, timeout=PATIENCE_S
    )


def _busy(live: LiveServer, wav: bytes) -> tuple[threading.Thread, list[httpx.Response]]:
    """Start a long transcription and return once its windows are queued."""
    answers: list[httpx.Response] = []

    def post() -> None:
        with patient_http(live) as http:
            answers.append(
                http.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("long.wav", wav)},
                    data={"model": "whisper-1"},
                )
            )

    thread = threading.Thread(target=post)
    thread.start()
    wait_for_metric(live, "voxserve_queue_depth", 1, model="whisper-1")
    return thread, answers


def test_a_full_queue_refuses_before_the_upload_is_read(
    one_place: LiveServer, long_wav: tuple[bytes, str]
) -> None:
    thread, answers = _busy(one_place, long_wav[0])
    try:
        # 20 MB announced, a few bytes sent: only an answer before the body can arrive.
        raw = post_without_body(
            one_place.base_url, "/v1/audio/transcriptions", 20 << 20, timeout=PATIENCE_S
        )
        with pytest.raises(openai.RateLimitError) as caught:
            _openai(one_place).audio.transcriptions.create(
                model="whisper-1", file=("a.wav", spoken_wav(SENTENCES[0]))
            )
    finally:
        thread.join()
    assert raw.status == 429 and raw.seconds < REFUSAL_BOUND_S, raw
    assert int(raw.headers["retry-after"]) >= 1
    assert b'"code":"queue_full"' in raw.body
    assert caught.value.status_code == 429
    assert [a.status_code for a in answers] == [200]  # the one admitted is served in full
    with patient_http(one_place) as http:  # and its place is free again
        after = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", spoken_wav(SENTENCES[0]))},
            data={"model": "whisper-1"},
        )
        metrics = http.get("/metrics").text
    assert after.json()["text"] == SENTENCES[0]
    assert metric(metrics, "voxserve_rejections_total", model="", reason="queue_full") >= 2


def test_a_request_that_waits_past_max_queue_time_gets_503(long_wav: tuple[bytes, str]) -> None:
    settings = make_settings(
        speech_models=(), max_queue_size=4, max_batch_size=1, max_queue_time=0.3
    )
    with LiveServer(settings, wait_until_ready=False) as live:
        wait_until_ready(live)
        thread, answers = _busy(live, long_wav[0])
        try:
            with patient_http(live) as http:
                late = http.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("a.wav", spoken_wav(SENTENCES[0]))},
                    data={"model": "whisper-1"},
                )
        finally:
            thread.join()
        with patient_http(live) as http:
            metrics = http.get("/metrics").text
    assert_error(late, 503, None, "waited longer than 0.3 s")
    assert late.json()["error"]["code"] == "queue_timeout"
    assert int(late.headers["retry-after"]) >= 1
    # The long request's own windows queue behind each other for longer than 0.3 s, but
    # it was being served: the timeout bounds the wait for service, not the work.
    assert [a.status_code for a in answers] == [200]
    assert (
        metric(metrics, "voxserve_rejections_total", model="whisper-1", reason="queue_timeout") == 1
    )
