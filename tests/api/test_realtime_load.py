"""Realtime utterances in the model's queue: admission, withdrawal, and shared batches.

An utterance is one request to the model's scheduler, as an upload is: it is refused
when the queue is full (a ``failed`` event, not a dropped socket), withdrawn when its
client vanishes (never computed, its place given back), and batched with whatever else
is queued, other sessions' utterances included.

The model is held busy by a "hog": an 18 s upload (one Whisper window, so one model
call of one item), made in a thread through the file endpoint. What happens behind it
is then a matter of order, not of speed: an utterance committed while the hog is in
the worker waits in the queue until the hog is done, which takes seconds, while a
commit takes milliseconds. To see the hog's item go from the queue into the worker,
the batching server forms batches 1 s after their first item queued.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from benchmarks.server_process import metric
from server.scheduler import ModelScheduler
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S, patient_http
from tests.realtime import (
    COMPLETED,
    FAILED,
    MANUAL,
    Realtime,
    b64,
    eventually,
    sentence_pcm,
)
from tests.speech import SENTENCES, spoken_wav

pytestmark = pytest.mark.anyio

MODEL = {"model": "whisper-1"}
ITEMS = "voxserve_queue_wait_seconds_count"  # one sample per item the model computed
HOG_TEXTS = SENTENCES[:6]
"""18 s spoken, which tiny.en transcribes in one pass: one item, one model call (a
longer clip may need a second pass, which could join a batch behind it)."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def hog_wav() -> bytes:
    return spoken_wav(*HOG_TEXTS, pause_seconds=0.6)


@pytest.fixture(scope="module")
def one_place() -> Iterator[LiveServer]:
    """One request admitted per model at a time."""
    settings = make_settings(speech_models=(), max_queue_size=1, max_queue_time=300.0)
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def batching(hog_wav: bytes) -> Iterator[LiveServer]:
    """Batches of up to 8, formed 1 s after their first item queued (so that a test sees
    the hog queued, then taken); the hog checked to be one model call of one item."""
    settings = make_settings(
        speech_models=(), max_batch_size=8, max_queue_delay_ms=1000.0, max_queue_time=300.0
    )
    with LiveServer(settings) as live:
        before = _metrics(live)
        assert _transcribe(live, hog_wav).status_code == 200
        after = _metrics(live)
        assert metric(after, ITEMS, **MODEL) - metric(before, ITEMS, **MODEL) == 1
        yield live


def _metrics(live: LiveServer) -> str:
    with patient_http(live) as http:
        return http.get("/metrics").text


def _transcribe(live: LiveServer, wav: bytes) -> httpx.Response:
    with patient_http(live) as http:
        return http.post("/v1/audio/transcriptions", files={"file": ("a.wav", wav)}, data=MODEL)


def _scheduler(live: LiveServer) -> ModelScheduler[Any, Any]:
    scheduler: ModelScheduler[Any, Any] = live.app.state.runtime.transcription[
        "whisper-1"
    ].scheduler
    return scheduler


class Hog:
    """The hog upload in a thread; entered once it is admitted, or (``computing``) once
    the model is computing it: its one item was seen queued, then taken into a batch."""

    def __init__(self, live: LiveServer, wav: bytes, *, computing: bool = True) -> None:
        self.live = live
        self.computing = computing
        self.answers: list[httpx.Response] = []
        self.thread = threading.Thread(target=lambda: self.answers.append(_transcribe(live, wav)))

    async def __aenter__(self) -> Hog:
        scheduler = _scheduler(self.live)
        self.thread.start()
        await eventually(lambda: scheduler.admitted == 1, "the hog admitted")
        if self.computing:
            await eventually(lambda: scheduler.queue_depth == 1, "the hog's item queued")
            await eventually(lambda: scheduler.queue_depth == 0, "the hog's item taken")
        return self

    async def __aexit__(self, *_: object) -> None:
        await asyncio.to_thread(self.thread.join, PATIENCE_S)
        assert [a.status_code for a in self.answers] == [200]

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


async def _until_or_hog_done(hog: Hog, condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` while the hog runs: the test's premise fails at once if the
    hog ends first, instead of waiting forever."""
    await eventually(lambda: condition() or not hog.running, what)
    assert condition(), f"the hog finished before {what}"


async def test_a_full_queue_fails_the_utterance_and_the_session_goes_on(
    one_place: LiveServer, hog_wav: bytes
) -> None:
    async with Realtime(one_place.base_url) as rt:
        await rt.next("session.created")
        await rt.update(**MANUAL)
        async with Hog(one_place, hog_wav, computing=False):
            failed = await rt.transcribe(sentence_pcm(SENTENCES[2]))
        assert failed["type"] == FAILED, failed
        assert failed["content_index"] == 0
        error = failed["error"]
        assert error["code"] == "queue_full" and error["type"] and error["message"], error
        assert rt.close_code is None
        assert rt.types().count(COMPLETED) == 0
        done = await rt.transcribe(sentence_pcm(SENTENCES[2]))  # a place is free again
        assert done["type"] == COMPLETED and done["transcript"] == SENTENCES[2]
    metrics = _metrics(one_place)
    outcomes = {"model": "whisper-1"}
    assert metric(metrics, "voxserve_realtime_utterances_total", outcome="failed", **outcomes) == 1
    assert metric(metrics, "voxserve_realtime_utterances_total", outcome="completed", **outcomes)


async def test_a_vanished_clients_queued_utterance_is_withdrawn_and_never_computed(
    batching: LiveServer, hog_wav: bytes
) -> None:
    live, scheduler = batching, _scheduler(batching)
    before = _metrics(live)
    url = f"{live.base_url.replace('http', 'ws', 1)}/v1/realtime?intent=transcription"
    audio = b64(sentence_pcm(SENTENCES[4]).tobytes())
    # A raw socket: the SDK closes politely; this client's connection just drops.
    async with connect(url, open_timeout=PATIENCE_S) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        session = {"type": "transcription", **MANUAL}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
        assert json.loads(await ws.recv())["type"] == "session.updated"
        async with Hog(live, hog_wav) as hog:
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            assert json.loads(await ws.recv())["type"] == "input_audio_buffer.committed"
            await _until_or_hog_done(
                hog, lambda: scheduler.queue_depth == 1, "the utterance queued behind the hog"
            )
            assert scheduler.admitted == 2
            ws.transport.abort()  # no close frame: the client is simply gone
            await eventually(
                lambda: scheduler.admitted == 1 and scheduler.queue_depth == 0,
                "the utterance withdrawn and its place given back",
            )
            assert hog.running  # withdrawn while queued, not answered
        await eventually(lambda: scheduler.admitted == 0, "every place given back")
    after = _metrics(live)
    assert metric(after, ITEMS, **MODEL) - metric(before, ITEMS, **MODEL) == 1  # the hog only
    assert metric(after, "voxserve_queue_depth", **MODEL) == 0
    cancelled = {"model": "whisper-1", "outcome": "cancelled"}
    assert (
        metric(after, "voxserve_realtime_utterances_total", **cancelled)
        - metric(before, "voxserve_realtime_utterances_total", **cancelled)
        == 1
    )
    with patient_http(live) as http:
        await eventually(
            lambda: metric(http.get("/metrics").text, "voxserve_realtime_sessions") == 0,
            "the session closed",
        )


async def test_two_sessions_committing_together_share_a_batch(
    batching: LiveServer, hog_wav: bytes
) -> None:
    live, scheduler = batching, _scheduler(batching)
    texts = (SENTENCES[6], SENTENCES[9])
    before = _metrics(live)
    async with Realtime(live.base_url) as one, Realtime(live.base_url) as two:
        sessions = (one, two)
        for rt, text in zip(sessions, texts, strict=True):
            await rt.next("session.created")
            await rt.update(**MANUAL)
            await rt.send_pcm(sentence_pcm(text))
        async with Hog(live, hog_wav) as hog:
            await asyncio.gather(*(rt.connection.input_audio_buffer.commit() for rt in sessions))
            await _until_or_hog_done(
                hog, lambda: scheduler.queue_depth == 2, "both utterances queued behind the hog"
            )
        done = [await rt.next(COMPLETED) for rt in sessions]
    assert [d["transcript"] for d in done] == list(texts)
    after = _metrics(live)

    def batches(size: str) -> float:  # model calls of at most ``size`` items, in this test
        labels = {"model": "whisper-1", "le": size}
        return metric(after, "voxserve_batch_size_bucket", **labels) - metric(
            before, "voxserve_batch_size_bucket", **labels
        )

    assert metric(after, ITEMS, **MODEL) - metric(before, ITEMS, **MODEL) == 3
    assert batches("1.0") == 1  # the hog
    assert batches("2.0") == 2  # and one call of both utterances
    assert batches("+Inf") == 2
