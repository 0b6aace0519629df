"""Session settings the other realtime tests leave alone: the URL's ``model``, and
transcription turned off (commits are still answered, nothing is transcribed)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer, make_settings
from tests.realtime import COMMITTED, COMPLETED, Realtime, sentence_pcm
from tests.speech import SENTENCES


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(make_settings(speech_models=())) as server:
        yield server


def test_the_urls_model_is_the_sessions_model_when_it_names_one(live: LiveServer) -> None:
    async def run(model: str) -> object:
        async with Realtime(live.base_url, query={"model": model}) as session:
            created = await session.next("session.created")
        return created["session"]["audio"]["input"]["transcription"]["model"]

    assert asyncio.run(run("gpt-4o-transcribe")) == "gpt-4o-transcribe"  # an alias
    assert asyncio.run(run("gpt-realtime")) == "whisper-1"  # not ours: the default


def test_transcription_null_commits_without_transcribing(live: LiveServer) -> None:
    async def run() -> tuple[object, list[str], dict[str, object]]:
        async with Realtime(live.base_url) as session:
            await session.next("session.created")
            updated = await session.update(
                audio={"input": {"transcription": None, "turn_detection": None}}
            )
            await session.send_pcm(sentence_pcm(SENTENCES[4]))
            await session.connection.input_audio_buffer.commit()
            first = await session.next(COMMITTED)
            # Transcription back on: the next commit is transcribed, and nothing of the
            # first one ever arrives before it.
            await session.update(audio={"input": {"transcription": {"model": "whisper-1"}}})
            await session.send_pcm(sentence_pcm(SENTENCES[5]))
            await session.connection.input_audio_buffer.commit()
            second = await session.next(COMMITTED)
            completed = await session.next(COMPLETED, item_id=second["item_id"])
            kinds = [e["type"] for e in session.of_item(str(first["item_id"]))]
        return updated["session"]["audio"]["input"]["transcription"], kinds, completed

    transcription, first_events, completed = asyncio.run(run())
    assert transcription is None
    assert first_events == [COMMITTED]
    heard = str(completed["transcript"]).lower()
    assert "weather" in heard and "breeze" in heard, heard
