"""SIGTERM on a real ``voxserve serve`` process with realtime sessions open.

A drain answers what each session has in flight before it ends the session: an
utterance already committed gets its ``completed``, speech still in progress (server
VAD) is committed and transcribed as it stands; then the session is told
``server_shutting_down`` and closed with 1012 ("service restart"), which tells a client
to reconnect, to another replica. A new handshake meanwhile is refused with 503.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from benchmarks.server_process import metric, serving
from tests.patience import PATIENCE_S
from tests.realtime import (
    COMMITTED,
    COMPLETED,
    DELTA,
    MANUAL,
    STARTED,
    Realtime,
    eventually,
    sentence_pcm,
)
from tests.speech import SENTENCES, words

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _queue_depth(base_url: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=PATIENCE_S).text
    return metric(text, "voxserve_queue_depth", model="whisper-1")


async def test_sigterm_answers_each_sessions_utterances_then_closes_with_1012(
    tmp_path: Path, long_wav: tuple[bytes, str]
) -> None:
    wav, _ = long_wav
    hog: list[httpx.Response] = []
    half = sentence_pcm(SENTENCES[0])[: 24_000 * 3 // 2]  # "The quick brown fox ..." 1.5 s
    with serving(tmp_path, drain_seconds=PATIENCE_S, max_batch_size=1) as (process, base_url):
        async with Realtime(base_url) as manual, Realtime(base_url) as talking:
            for rt in (manual, talking):
                await rt.next("session.created")
            await manual.update(**MANUAL)
            await manual.send_pcm(sentence_pcm(SENTENCES[2]))
            # A 70 s upload holds the model (its windows one at a time), so the manual
            # session's utterance waits in the queue behind it.
            thread = threading.Thread(
                target=lambda: hog.append(
                    httpx.post(
                        f"{base_url}/v1/audio/transcriptions",
                        files={"file": ("long.wav", wav)},
                        data={"model": "whisper-1"},
                        timeout=PATIENCE_S,
                    )
                )
            )
            thread.start()
            await eventually(lambda: _queue_depth(base_url) >= 1, "the upload's windows queued")
            await manual.connection.input_audio_buffer.commit()
            await manual.next(COMMITTED)
            await talking.send_pcm(half)  # speech, and no silence to end it
            await talking.update(include=[])  # answered once every append before it was read
            await talking.first(STARTED)
            assert COMPLETED not in manual.types()  # the premise: still queued

            process.send_signal(signal.SIGTERM)
            await eventually(
                lambda: httpx.get(f"{base_url}/ready", timeout=PATIENCE_S).status_code == 503,
                "draining",
            )
            with pytest.raises(InvalidStatus) as refused:
                url = f"{base_url.replace('http', 'ws', 1)}/v1/realtime?intent=transcription"
                async with connect(url, open_timeout=PATIENCE_S):
                    pass
            codes = [await manual.closed(), await talking.closed()]
        await asyncio.to_thread(thread.join, PATIENCE_S)
        exit_code = await asyncio.to_thread(process.wait, PATIENCE_S)

    assert refused.value.response.status_code == 503
    assert codes == [1012, 1012]
    assert [h.status_code for h in hog] == [200]
    assert exit_code == 0
    # The manual session: its committed utterance answered, then told why it ends.
    after_commit = manual.types()[manual.types().index(COMMITTED) :]
    assert after_commit == [COMMITTED, DELTA, COMPLETED, "error"], manual.types()
    assert (await manual.first(COMPLETED))["transcript"] == SENTENCES[2]
    # The talking session: the speech it had begun committed and transcribed as it was.
    types = talking.types()
    assert types[0] == "session.created" and types[-1] == "error", types
    assert types.index(STARTED) < types.index(COMMITTED) < types.index(COMPLETED), types
    heard = words((await talking.first(COMPLETED))["transcript"])
    assert heard[:2] == ["the", "quick"], heard  # and then a word cut off
    for rt in (manual, talking):
        error = rt.events[-1]["error"]
        assert error["code"] == "server_shutting_down" and error["type"] == "server_error"
