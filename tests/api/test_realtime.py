"""Realtime transcription over a real WebSocket, through the openai SDK's realtime client.

The reference for every transcript is the file endpoint: an utterance the server cut
from the stream must be transcribed exactly as the same stretch of audio (sliced by the
client at the ``audio_start_ms`` / ``audio_end_ms`` the server reported) is when it is
uploaded as a WAV file. Test speech is Piper's (22,050 Hz) resampled by PyAV to the
session's 24 kHz pcm16 (:mod:`tests.realtime`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

import pytest

from tests.conftest import LiveServer, make_settings
from tests.realtime import (
    COMMITTED,
    COMPLETED,
    DELTA,
    G711_RATE,
    MANUAL,
    PCM_RATE,
    STARTED,
    STOPPED,
    Realtime,
    as_wav,
    g711,
    sdk,
    sentence_pcm,
    slice_ms,
    speech_pcm,
)
from tests.speech import SENTENCES, words

pytestmark = pytest.mark.anyio

TEXTS = (SENTENCES[0], SENTENCES[6], SENTENCES[13])
"""Three sentences (2.8, 2.2 and 2.2 s) that tiny.en writes back exactly."""
PADDING_MS = 300
SILENCE_MS = 500
DEFAULT_SESSION: dict[str, Any] = {
    "object": "realtime.transcription_session",
    "type": "transcription",
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "noise_reduction": None,
            "transcription": {"model": "whisper-1", "language": None, "prompt": None},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": PADDING_MS,
                "silence_duration_ms": SILENCE_MS,
            },
        }
    },
    "include": None,
}
"""The session of the spec on connect, less its ``id`` and ``expires_at``."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with LiveServer(make_settings(speech_models=())) as server:
        yield server


async def test_three_sentences_at_real_pace_are_three_utterances_as_the_file_endpoint_hears_them(
    live: LiveServer,
) -> None:
    pcm, times = speech_pcm(*TEXTS, pause_seconds=1.2, lead_seconds=0.5, trail_seconds=1.0)
    async with Realtime(live.base_url) as rt:
        await rt.next("session.created")
        await rt.send_pcm(pcm, real_time=True)
        done = [await rt.next(COMPLETED) for _ in TEXTS]
        types = rt.types()
    assert types.count(STARTED) == types.count(STOPPED) == types.count(COMMITTED) == 3, types
    previous = None
    async with sdk(live.base_url) as client:
        for n, (completed, text, (start_s, end_s)) in enumerate(
            zip(done, TEXTS, times, strict=True)
        ):
            item = completed["item_id"]
            events = rt.of_item(item)
            assert [e["type"] for e in events] == [STARTED, STOPPED, COMMITTED, DELTA, COMPLETED]
            started, stopped, committed, delta, _ = events
            assert committed["previous_item_id"] == previous
            previous = item
            # Where the server says the utterance lies: the speech it heard, the prefix
            # padding before it and the silence that ended it after it. Piper's clips
            # carry up to ~150 ms of near-silence at each edge (measured: starts 37-76 ms
            # after clip start - padding, stops 363-444 ms after the clip's end).
            start_ms, end_ms = started["audio_start_ms"], stopped["audio_end_ms"]
            assert start_s * 1000 - PADDING_MS - 100 <= start_ms <= start_s * 1000, (n, start_ms)
            assert end_s * 1000 + SILENCE_MS - 300 <= end_ms <= end_s * 1000 + 1200, (n, end_ms)
            if n + 1 < len(times):
                assert end_ms < times[n + 1][0] * 1000
            assert delta["content_index"] == completed["content_index"] == 0
            assert delta["delta"] == completed["transcript"]
            assert completed["usage"]["type"] == "duration"
            assert completed["usage"]["seconds"] == pytest.approx((end_ms - start_ms) / 1000, 0.05)
            # The file endpoint, given the same stretch of the same 24 kHz audio.
            wav = as_wav(slice_ms(pcm, start_ms, end_ms))
            reference = await client.audio.transcriptions.create(
                model="whisper-1", file=("utterance.wav", wav)
            )
            assert completed["transcript"] == reference.text, (n, start_ms, end_ms)
            assert words(completed["transcript"]) == words(text)
            assert completed["transcript"] == text  # exact, as the whole sentence's file is


async def test_the_session_starts_with_the_specs_defaults(live: LiveServer) -> None:
    async with Realtime(live.base_url) as rt:
        created = await rt.next("session.created")
        assert rt.types()[0] == "session.created"
    assert created["event_id"].startswith("event_")
    session = dict(created["session"])
    assert session.pop("id").startswith("sess_")
    expires_at = session.pop("expires_at")
    assert isinstance(expires_at, int) and expires_at > time.time()
    assert session == DEFAULT_SESSION


async def test_an_update_changes_only_what_it_names(live: LiveServer) -> None:
    async with Realtime(live.base_url) as rt:
        created = await rt.next("session.created")
        updated = await rt.update(audio={"input": {"transcription": {"language": "en"}}})
        session = updated["session"]
        assert session["id"] == created["session"]["id"]
        expected = created["session"]["audio"]["input"]
        expected["transcription"]["language"] = "en"
        assert session["audio"]["input"] == expected  # turn detection and model kept
        manual = await rt.update(**MANUAL, include=["item.input_audio_transcription.logprobs"])
        assert manual["session"]["audio"]["input"]["turn_detection"] is None
        assert manual["session"]["audio"]["input"]["transcription"]["language"] == "en"
        assert manual["session"]["include"] == ["item.input_audio_transcription.logprobs"]


async def test_manual_commits_transcribe_what_was_appended(live: LiveServer) -> None:
    async with Realtime(live.base_url) as rt:
        await rt.next("session.created")
        await rt.update(**MANUAL)
        done = await rt.transcribe(sentence_pcm(SENTENCES[2]))
        assert done["type"] == COMPLETED, done
        assert done["transcript"] == SENTENCES[2]
        first = done["item_id"]
        again = await rt.transcribe(sentence_pcm(SENTENCES[4]))
        assert again["transcript"] == SENTENCES[4]
        types = rt.types()
    assert STARTED not in types and STOPPED not in types, types
    assert [e["type"] for e in rt.of_item(first)] == [COMMITTED, DELTA, COMPLETED]
    assert rt.of_item(again["item_id"])[0]["previous_item_id"] == first


async def test_a_commit_of_under_100_ms_is_empty_and_clear_empties_the_buffer(
    live: LiveServer,
) -> None:
    async with Realtime(live.base_url) as rt:
        await rt.next("session.created")
        await rt.update(**MANUAL)
        await rt.send_pcm(sentence_pcm(SENTENCES[2])[: PCM_RATE * 80 // 1000])  # 80 ms
        await rt.connection.input_audio_buffer.commit(event_id="evt_short")
        error = await rt.next("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "evt_short"

        await rt.send_pcm(sentence_pcm(SENTENCES[2]))  # 2 s, then cleared
        await rt.connection.input_audio_buffer.clear()
        await rt.next("input_audio_buffer.cleared")
        await rt.connection.input_audio_buffer.commit(event_id="evt_cleared")
        error = await rt.next("error")
        assert error["error"]["code"] == "input_audio_buffer_commit_empty"
        assert error["error"]["event_id"] == "evt_cleared"

        done = await rt.transcribe(sentence_pcm(SENTENCES[3]))  # and it goes on
        assert done["transcript"] == SENTENCES[3]
        assert rt.types().count(COMMITTED) == 1  # neither refused commit committed anything


@pytest.mark.parametrize("law", ["pcmu", "pcma"])
async def test_g711_input_is_transcribed(live: LiveServer, law: Literal["pcmu", "pcma"]) -> None:
    audio = g711(sentence_pcm(SENTENCES[6], G711_RATE), law)
    async with Realtime(live.base_url) as rt:
        await rt.next("session.created")
        updated = await rt.update(
            audio={"input": {"format": {"type": f"audio/{law}"}, "turn_detection": None}}
        )
        assert updated["session"]["audio"]["input"]["format"] == {"type": f"audio/{law}"}
        await rt.send_audio(audio, chunk_bytes=G711_RATE * 40 // 1000)  # 40 ms: 320 bytes
        await rt.connection.input_audio_buffer.commit()
        committed = await rt.next(COMMITTED)
        done = await rt.outcome(committed["item_id"])
    assert done["type"] == COMPLETED, done
    assert words(done["transcript"]) == words(SENTENCES[6])


async def test_logprobs_come_with_the_transcript_when_included(live: LiveServer) -> None:
    async with Realtime(live.base_url) as rt:
        await rt.next("session.created")
        await rt.update(**MANUAL, include=["item.input_audio_transcription.logprobs"])
        done = await rt.transcribe(sentence_pcm(SENTENCES[0]))
        delta = await rt.first(DELTA, item_id=done["item_id"])
        await rt.update(include=[])
        plain = await rt.transcribe(sentence_pcm(SENTENCES[0]))
    assert done["transcript"] == SENTENCES[0]
    logprobs = done["logprobs"]
    assert logprobs and all(set(t) == {"token", "logprob", "bytes"} for t in logprobs)
    assert all(t["logprob"] <= 0 and t["bytes"] == list(t["token"].encode()) for t in logprobs)
    assert "".join(t["token"] for t in logprobs).strip() == done["transcript"]
    if "logprobs" in delta:
        assert delta["logprobs"] == logprobs
    assert plain["transcript"] == SENTENCES[0]
    assert not plain.get("logprobs")


async def test_an_unknown_model_is_refused_and_the_session_goes_on_unchanged(
    live: LiveServer,
) -> None:
    async with Realtime(live.base_url) as rt:
        created = await rt.next("session.created")
        await rt.connection.session.update(
            session={
                "type": "transcription",
                "audio": {"input": {"transcription": {"model": "no-such-model"}}},
            },
            event_id="evt_model",
        )
        error = await rt.next("error")
        assert error["error"]["code"] == "model_not_found"
        assert error["error"]["param"] == "session.audio.input.transcription.model"
        assert error["error"]["event_id"] == "evt_model"
        assert error["error"]["type"] == "invalid_request_error"
        updated = await rt.update(**MANUAL)
        assert rt.types().count("session.updated") == 1  # the refused update said nothing
        expected = created["session"]["audio"]["input"]
        expected["turn_detection"] = None
        assert updated["session"]["audio"]["input"] == expected
        done = await rt.transcribe(sentence_pcm(SENTENCES[2]))
    assert done["transcript"] == SENTENCES[2]
