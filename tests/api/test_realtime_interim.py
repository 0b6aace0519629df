"""Interim text (``realtime_interim_seconds``): words go out while the person still speaks,
text sent is never taken back, and the deltas join to exactly the transcript."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from tests.conftest import LiveServer, make_settings
from tests.realtime import COMPLETED, DELTA, Realtime, speech_pcm
from tests.speech import SENTENCES, any_words

LONG = (
    "Please call Stella and ask her to bring these things with her from the store: "
    "six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack "
    "for her brother Bob."
)
"""About eight seconds without a pause long enough to end the turn."""


@pytest.fixture(scope="module")
def interim_server() -> Iterator[LiveServer]:
    settings = make_settings(speech_models=(), realtime_interim_seconds=1.0)
    with LiveServer(settings) as live:
        yield live


async def _speak(live: LiveServer) -> tuple[list[dict[str, object]], dict[str, object], int]:
    """One long turn streamed at real-time pace; its deltas, its completed event, and how
    many deltas arrived before its speech_stopped."""
    samples, _ = speech_pcm(LONG, SENTENCES[0], lead_seconds=0.3, trail_seconds=1.0)
    async with Realtime(live.base_url) as session:
        await session.next("session.created")
        await session.send_pcm(samples, real_time=True)
        started = await session.next("input_audio_buffer.speech_started")
        item = started["item_id"]
        completed = await session.next(COMPLETED, item_id=item)
        events = session.of_item(item)
    types = [e["type"] for e in events]
    stopped_at = types.index("input_audio_buffer.speech_stopped")
    deltas = [e for e in events if e["type"] == DELTA]
    early = sum(1 for t in types[:stopped_at] if t == DELTA)
    return deltas, completed, early


def test_interim_deltas_arrive_while_speaking_and_join_to_the_transcript(
    interim_server: LiveServer,
) -> None:
    deltas, completed, early = asyncio.run(_speak(interim_server))

    assert early >= 1, "no interim text before the end of the turn"
    joined = "".join(str(d["delta"]) for d in deltas)
    assert joined == completed["transcript"]
    heard = set(any_words(str(completed["transcript"])))
    assert {"stella", "store", "cheese", "brother"} <= heard, completed["transcript"]


def test_without_the_setting_each_turn_has_one_delta(server: LiveServer) -> None:
    """The default is OpenAI's behaviour: one delta, the whole text, after the commit."""
    samples, _ = speech_pcm(SENTENCES[1], lead_seconds=0.3)

    async def run() -> list[str]:
        async with Realtime(server.base_url) as session:
            await session.next("session.created")
            await session.send_pcm(np.asarray(samples))
            committed = await session.next("input_audio_buffer.committed")
            await session.next(COMPLETED, item_id=committed["item_id"])
            return [e["type"] for e in session.of_item(committed["item_id"])]

    types = asyncio.run(run())
    assert types.count(DELTA) == 1
    assert types.index(DELTA) > types.index("input_audio_buffer.committed")
