"""Realtime transcription: bad client events, refused handshakes and the session's limits.

A bad event is answered with an ``error`` event that carries the client's ``event_id``,
and the session goes on: every case ends by transcribing a sentence on the same socket,
half of which was appended before the bad event (so the buffer survived it too).
A handshake that cannot be served is refused before the upgrade with a real HTTP
status in OpenAI's envelope, which any client can read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.typing import Subprotocol

from benchmarks.server_process import metric
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S, patient_http, wait_until
from tests.realtime import COMPLETED, MANUAL, PCM_RATE, Realtime, b64, eventually, sentence_pcm
from tests.speech import SENTENCES

pytestmark = pytest.mark.anyio

KEY = "k1"
MAX_BUFFER_S = 4.0
SHORT = SENTENCES[13]  # 2.2 s: the proof that a session still works
IDLE_S = 2.0
SESSION_S = 4.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def guarded() -> Iterator[LiveServer]:
    """A server that wants the key ``k1`` and holds at most 4 s in a manual buffer."""
    settings = make_settings(
        speech_models=(), api_keys=(KEY,), realtime_max_buffer_seconds=MAX_BUFFER_S
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture(scope="module")
def limited() -> Iterator[LiveServer]:
    """One session at a time, which ends after 2 s of silence or 4 s in all."""
    settings = make_settings(
        speech_models=(),
        realtime_max_sessions=1,
        realtime_idle_seconds=IDLE_S,
        realtime_max_session_seconds=SESSION_S,
    )
    with LiveServer(settings) as live:
        yield live


@pytest.fixture
def alone(limited: LiveServer) -> LiveServer:
    """``limited`` once the sessions of earlier tests have ended on the server's side."""
    with patient_http(limited) as http:
        wait_until(
            lambda: metric(http.get("/metrics").text, "voxserve_realtime_sessions") == 0,
            "no realtime session open",
        )
    return limited


def ws_url(live: LiveServer, query: str = "intent=transcription") -> str:
    return f"{live.base_url.replace('http', 'ws', 1)}/v1/realtime?{query}"


async def refusal(url: str, **options: Any) -> httpx.Response:
    """The HTTP answer to a WebSocket handshake that must be refused."""
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, open_timeout=PATIENCE_S, **options):
            pass
    answer = refused.value.response
    response = httpx.Response(
        answer.status_code, headers=dict(answer.headers), content=bytes(answer.body)
    )
    response.read()
    return response


async def still_works(rt: Realtime) -> None:
    """The session transcribes a sentence after whatever went before (manual mode)."""
    done = await rt.transcribe(sentence_pcm(SHORT))
    assert done["type"] == COMPLETED and done["transcript"] == SHORT, done


def assert_error_event(event: dict[str, Any], code: str, event_id: str | None) -> None:
    assert event["type"] == "error" and event["event_id"].startswith("event_")
    error = event["error"]
    assert set(error) == {"type", "code", "message", "param", "event_id"}, error
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["code"] == code, error
    assert error["event_id"] == event_id


BAD_EVENTS: list[tuple[str, str | bytes, str, str | None, str | None]] = [
    ("not-json", "{not json", "invalid_json", None, None),
    ("json-array", "[1, 2]", "invalid_json", None, None),
    ("json-string", '"input_audio_buffer.commit"', "invalid_json", None, None),
    ("unknown-type", '{"type": "nope.nope", "event_id": "e1"}', "invalid_value", "type", "e1"),
    ("no-type", '{"event_id": "e2"}', "missing_required_parameter", "type", "e2"),
    (
        "bad-base64",
        '{"type": "input_audio_buffer.append", "audio": "***not base64***", "event_id": "e3"}',
        "invalid_base64",
        "audio",
        "e3",
    ),
    (
        "no-audio",
        '{"type": "input_audio_buffer.append", "event_id": "e4"}',
        "missing_required_parameter",
        "audio",
        "e4",
    ),
    ("binary-frame", b"\x00\x01" * 800, "invalid_value", None, None),
    (
        "wrong-format",
        '{"type": "session.update", "event_id": "e5", "session": {"type": "transcription",'
        ' "audio": {"input": {"format": {"type": "audio/mp3"}}}}}',
        "invalid_value",
        "session.audio.input.format.type",
        "e5",
    ),
    (
        "unsupported-language",
        '{"type": "session.update", "event_id": "e6", "session": {"type": "transcription",'
        ' "audio": {"input": {"transcription": {"model": "whisper-1", "language": "xx"}}}}}',
        "unsupported_language",
        "session.audio.input.transcription.language",
        "e6",
    ),
    (
        "response-create",
        '{"type": "response.create", "event_id": "e7"}',
        "unsupported_event",
        "type",
        "e7",
    ),
    (
        "conversation-item",
        '{"type": "conversation.item.create", "event_id": "e8", "item": {"type": "message"}}',
        "unsupported_event",
        "type",
        "e8",
    ),
]


@pytest.mark.parametrize(
    ("frame", "code", "param", "event_id"),
    [case[1:] for case in BAD_EVENTS],
    ids=[case[0] for case in BAD_EVENTS],
)
async def test_a_bad_event_is_an_error_event_and_the_session_goes_on(
    guarded: LiveServer, frame: str | bytes, code: str, param: str | None, event_id: str | None
) -> None:
    async with Realtime(guarded.base_url, api_key=KEY) as rt:
        created = await rt.next("session.created")
        await rt.update(**MANUAL)
        speech = sentence_pcm(SHORT)
        await rt.send_pcm(speech[:PCM_RATE])  # the first second of the sentence
        await rt.send_raw(frame)
        error = await rt.next("error")
        assert_error_event(error, code, event_id)
        assert error["error"]["param"] == param
        updated = await rt.update(include=[])
        done = await rt.transcribe(speech[PCM_RATE:])  # the rest: the buffer was kept
        assert done["type"] == COMPLETED and done["transcript"] == SHORT, done
        assert rt.close_code is None
    # A refused update changed nothing.
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
    language = created["session"]["audio"]["input"]["transcription"]["language"]
    assert updated["session"]["audio"]["input"]["transcription"]["language"] == language
    assert rt.types().count("error") == 1


async def test_an_append_past_the_buffer_limit_is_refused_and_dropped(
    guarded: LiveServer,
) -> None:
    first, second = sentence_pcm(SENTENCES[2]), sentence_pcm(SENTENCES[0])  # 2.0 s, 2.8 s
    assert len(first) < MAX_BUFFER_S * PCM_RATE < len(first) + len(second)
    async with Realtime(guarded.base_url, api_key=KEY) as rt:
        await rt.next("session.created")
        await rt.update(**MANUAL)
        await rt.send_pcm(first)
        await rt.connection.input_audio_buffer.append(
            audio=b64(second.tobytes()), event_id="evt_big"
        )
        error = await rt.next("error")
        assert_error_event(error, "input_audio_buffer_too_large", "evt_big")
        await rt.connection.input_audio_buffer.commit()
        committed = await rt.next("input_audio_buffer.committed")
        done = await rt.outcome(committed["item_id"])
        assert done["transcript"] == SENTENCES[2]  # the refused chunk was not kept
        await still_works(rt)


async def test_no_key_or_a_wrong_key_is_a_401_before_the_upgrade(guarded: LiveServer) -> None:
    missing = await refusal(ws_url(guarded))
    assert_error(missing, 401, None, "")
    wrong = await refusal(ws_url(guarded), additional_headers={"Authorization": "Bearer k2"})
    assert_error(wrong, 401, None, "")
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus) as through_sdk:
        async with Realtime(guarded.base_url, api_key="k2"):
            pass
    assert through_sdk.value.response.status_code == 401


async def test_the_key_may_come_as_a_subprotocol(guarded: LiveServer) -> None:
    for offered, chosen in [
        (["realtime", f"openai-insecure-api-key.{KEY}"], "realtime"),
        ([f"openai-insecure-api-key.{KEY}", "realtime"], "realtime"),
        ([f"openai-insecure-api-key.{KEY}"], None),
    ]:
        protocols = [Subprotocol(p) for p in offered]
        async with connect(ws_url(guarded), subprotocols=protocols) as ws:
            # Without "realtime" on offer, none or the one offered will do (RFC 6455).
            assert ws.subprotocol == chosen or (chosen is None and ws.subprotocol in offered)
            assert '"session.created"' in str(await ws.recv())
    wrong = await refusal(
        ws_url(guarded),
        subprotocols=[Subprotocol("realtime"), Subprotocol("openai-insecure-api-key.k2")],
    )
    assert_error(wrong, 401, None, "")


async def test_an_intent_other_than_transcription_is_a_400(guarded: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = await refusal(ws_url(guarded, "intent=conversation"), additional_headers=headers)
    assert_error(answer, 400, "intent", "")


async def test_past_the_session_limit_the_handshake_is_a_429(alone: LiveServer) -> None:
    async with Realtime(alone.base_url) as first:
        await first.next("session.created")
        answer = await refusal(ws_url(alone))
        assert_error(answer, 429, None, "")
        assert int(answer.headers["retry-after"]) >= 1
        await first.update(**MANUAL)  # the open session is not disturbed
        assert first.close_code is None
    with patient_http(alone) as http:  # its place is given back once it has closed
        await eventually(
            lambda: metric(http.get("/metrics").text, "voxserve_realtime_sessions") == 0,
            "the first session closed",
        )
    async with Realtime(alone.base_url) as again:
        await again.next("session.created")


async def test_a_silent_client_is_told_and_closed(alone: LiveServer) -> None:
    async with Realtime(alone.base_url) as rt:
        await rt.next("session.created")
        started = time.monotonic()
        code = await rt.closed()
        waited = time.monotonic() - started
    assert rt.types() == ["session.created", "error"]
    error = rt.events[-1]["error"]
    assert error["code"] == "session_idle_timeout"
    assert error["type"] == "invalid_request_error"  # as OpenAI says it
    assert code == 1000
    assert waited >= IDLE_S - 0.5


async def test_a_session_ends_at_its_time_limit_even_while_the_client_talks(
    alone: LiveServer,
) -> None:
    silence = bytes(PCM_RATE * 2 // 10)  # 100 ms
    async with Realtime(alone.base_url) as rt:
        created = await rt.next("session.created")
        opened = time.time()
        assert opened - 2 <= created["session"]["expires_at"] <= opened + SESSION_S + 2
        while rt.close_code is None:  # an append every 0.2 s: never idle for 2 s
            try:
                await rt.connection.input_audio_buffer.append(audio=b64(silence))
            except (ConnectionClosed, openai.OpenAIError):  # closed between two appends
                break
            await asyncio.sleep(0.2)
        code = await rt.closed()
    assert rt.types() == ["session.created", "error"], rt.types()
    error = rt.events[-1]["error"]
    assert error["code"] == "session_expired"
    assert error["type"] == "invalid_request_error"  # as OpenAI says it
    assert code == 1000
    assert time.time() - opened >= SESSION_S - 1
