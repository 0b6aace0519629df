"""``stream=true``: SSE deltas as windows complete, through the SDK and on the wire."""

from __future__ import annotations

import json

import openai
import pytest

from tests.api.test_errors import assert_error
from tests.conftest import LiveServer
from tests.patience import patient_http
from tests.speech import SENTENCES, spoken_wav


def test_streamed_text_equals_the_non_streamed_text(
    stt_client: openai.OpenAI, long_wav: tuple[bytes, str]
) -> None:
    audio = long_wav[0]
    whole = stt_client.audio.transcriptions.create(model="whisper-1", file=("long.wav", audio))
    events = list(
        stt_client.audio.transcriptions.create(
            model="whisper-1", file=("long.wav", audio), stream=True
        )
    )
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    done = [e for e in events if e.type == "transcript.text.done"]
    assert len(done) == 1 and events[-1] is done[0]
    assert len(deltas) >= 3  # one per window of a 70 s file, as each completes
    assert all(d.delta for d in deltas)
    assert "".join(d.delta for d in deltas) == done[0].text == whole.text
    usage = done[0].usage
    assert usage is not None
    assert usage.model_dump()["seconds"] == whole.usage.seconds  # type: ignore[union-attr]


def test_stream_with_logprobs_sends_each_deltas_tokens(stt_client: openai.OpenAI) -> None:
    audio = spoken_wav(SENTENCES[2], SENTENCES[3])
    events = list(
        stt_client.audio.transcriptions.create(
            model="whisper-1",
            file=("a.wav", audio),
            stream=True,
            include=["logprobs"],
            response_format="json",
        )
    )
    delta, done = events[0], events[-1]
    assert delta.type == "transcript.text.delta" and done.type == "transcript.text.done"
    assert delta.logprobs and done.logprobs
    assert "".join(t.token or "" for t in delta.logprobs).strip() == delta.delta
    assert [t.token for t in done.logprobs] == [t.token for t in delta.logprobs]


def test_the_wire_format_is_sse_data_lines(stt_server: LiveServer) -> None:
    audio = spoken_wav(SENTENCES[4])
    with patient_http(stt_server) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", audio)},
            data={"model": "whisper-1", "stream": "true", "response_format": "text"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in response.text.split("\n\n") if b]
    assert all(b.startswith("data: ") and "\n" not in b for b in blocks)
    payloads = [json.loads(b.removeprefix("data: ")) for b in blocks]
    assert payloads == [
        {"type": "transcript.text.delta", "delta": SENTENCES[4]},
        {
            "type": "transcript.text.done",
            "text": SENTENCES[4],
            "usage": {"type": "duration", "seconds": payloads[-1]["usage"]["seconds"]},
        },
    ]


@pytest.mark.parametrize(
    ("content", "status", "param"), [(b"not audio", 400, "file"), (b"", 400, "file")]
)
def test_a_bad_file_is_refused_before_the_stream_starts(
    stt_server: LiveServer, content: bytes, status: int, param: str
) -> None:
    with patient_http(stt_server) as http:
        response = http.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", content)},
            data={"model": "whisper-1", "stream": "true"},
        )
    assert_error(response, status, param, "")


def test_silence_streams_only_an_empty_done(stt_client: openai.OpenAI) -> None:
    import numpy as np

    from tests.speech import wav_bytes

    silence = wav_bytes(np.zeros(16_000 * 5, dtype=np.int16), 16_000)
    events = list(
        stt_client.audio.transcriptions.create(
            model="whisper-1", file=("quiet.wav", silence), stream=True
        )
    )
    assert [e.type for e in events] == ["transcript.text.done"]
    assert events[0].model_dump()["text"] == ""
