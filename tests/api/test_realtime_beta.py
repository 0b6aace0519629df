"""The beta Realtime protocol (``OpenAI-Beta: realtime=v1``), which clients written in
2025 speak: ``transcription_session.update`` with the session's fields at its top level,
answered in the same shape; utterances and their events are the same as in GA."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import websockets

from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S
from tests.realtime import b64, g711, sentence_pcm
from tests.speech import SENTENCES


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(make_settings(speech_models=())) as server:
        yield server


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    """The next event of type ``kind``; an ``error`` on the way fails the test."""
    while True:
        event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), PATIENCE_S))
        assert event["type"] != "error", event
        if event["type"] == kind:
            return event


async def _beta_session(url: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    headers = {"OpenAI-Beta": "realtime=v1"}
    async with websockets.connect(url, additional_headers=headers) as ws:
        created = await _next(ws, "transcription_session.created")
        update = {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "en"},
                "turn_detection": None,
                "include": ["item.input_audio_transcription.logprobs"],
            },
        }
        await ws.send(json.dumps(update))
        updated = await _next(ws, "transcription_session.updated")
        pcm = sentence_pcm(SENTENCES[6], rate=8000)
        audio = g711(np.concatenate([pcm, np.zeros(4000, dtype=np.int16)]), "pcmu")
        await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": b64(audio)}))
        await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
        await _next(ws, "input_audio_buffer.committed")
        completed = await _next(ws, "conversation.item.input_audio_transcription.completed")
        return created, updated, completed


def test_a_beta_client_configures_and_transcribes_in_the_beta_shape(live: LiveServer) -> None:
    url = live.base_url.replace("http", "ws") + "/v1/realtime?intent=transcription"
    created, updated, completed = asyncio.run(_beta_session(url))

    session = created["session"]
    assert session["object"] == "realtime.transcription_session"
    assert session["input_audio_format"] == "pcm16"
    assert session["turn_detection"]["type"] == "server_vad"
    assert "audio" not in session  # the GA shape is for GA clients

    session = updated["session"]
    assert session["input_audio_format"] == "g711_ulaw"
    assert session["turn_detection"] is None
    assert session["input_audio_transcription"]["model"] == "gpt-4o-transcribe"
    assert session["input_audio_transcription"]["language"] == "en"
    assert session["include"] == ["item.input_audio_transcription.logprobs"]

    assert completed["transcript"] == SENTENCES[6]
    assert completed["logprobs"], "include asked for logprobs"
    assert completed["usage"]["type"] == "duration"
