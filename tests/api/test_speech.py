"""``POST /v1/audio/speech`` over real HTTP, with the official SDK where it can be used.

Intelligibility is checked the honest way: the audio goes back through the same
server's Whisper and the words must come back.
"""

from __future__ import annotations

import base64
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from models.voices import EMBEDDED_VOICES
from tests.conftest import LiveServer
from tests.patience import patient_http
from tests.speech import decode_native, word_error_rate

VOICES = ("alloy", "echo", "fable", "onyx", "nova", "shimmer")
SENTENCE = "Please send me the report by the end of the week."
PARAGRAPH = (
    "The weather today is sunny with a light breeze. "
    "We will meet at the library after lunch. "
    "My brother plays the piano every evening."
)
CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


ENGINES = {"alloy": "hibari:embedded:heart", "echo": "piper:embedded:joe"}


def batch_counts(server: LiveServer, engine: str) -> tuple[float, float]:
    """(model calls, sentences in them) of one engine so far, from /metrics."""
    with patient_http(server) as http:
        text = http.get("/metrics").text
    label = re.escape(engine)
    count = re.search(rf'voxserve_batch_size_count\{{model="{label}"\}} (\S+)', text)
    total = re.search(rf'voxserve_batch_size_sum\{{model="{label}"\}} (\S+)', text)
    assert count and total
    return float(count[1]), float(total[1])


def speech(server: LiveServer, **body: Any) -> httpx.Response:
    with patient_http(server) as http:
        return http.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alloy", **body})


def pcm(server: LiveServer, text: str, **body: Any) -> bytes:
    response = speech(server, input=text, response_format="pcm", **body)
    assert response.status_code == 200, response.text
    return response.content


@pytest.mark.parametrize("model", ["tts-1", "tts-1-hd"])
def test_every_voice_speaks_words_whisper_writes_back(
    server: LiveServer, client: openai.OpenAI, model: str
) -> None:
    pairs = []
    for voice in VOICES:
        audio = client.audio.speech.create(
            model=model, voice=voice, input=SENTENCE, response_format="wav"
        ).read()
        text = client.audio.transcriptions.create(model="whisper-1", file=("s.wav", audio)).text
        wer = word_error_rate([(SENTENCE, text)])
        assert wer is not None and wer <= 0.15, (voice, text)
        pairs.append((SENTENCE, text))
    assert word_error_rate(pairs) is not None


@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
def test_every_format_decodes_to_24_khz_mono_of_the_same_length(
    server: LiveServer, fmt: str
) -> None:
    reference, _, _ = decode_native(pcm(server, SENTENCE), "s16le")
    response = speech(server, input=SENTENCE, response_format=fmt)
    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == CONTENT_TYPES[fmt]
    samples, rate, channels = decode_native(response.content, "s16le" if fmt == "pcm" else None)
    # Decoders always give Opus at 48 kHz; the stream itself is encoded from 24 kHz.
    assert (rate, channels) == (48_000 if fmt == "opus" else 24_000, 1)
    # Lossy codecs pad a frame or two; the durations still agree within 80 ms.
    assert abs(len(samples) / rate - len(reference) / 24_000) < 0.08, fmt
    assert len(reference) / 24_000 > 1.5


def test_mp3_is_the_default_and_the_sdk_reads_it(client: openai.OpenAI) -> None:
    response = client.audio.speech.create(model="tts-1", voice="nova", input="Good morning.")
    audio = response.read()
    assert response.response.headers["content-type"] == "audio/mpeg"
    samples, rate, _ = decode_native(audio)
    assert rate == 24_000 and len(samples) > 0.4 * rate


def test_speed_changes_the_duration(server: LiveServer) -> None:
    normal = len(pcm(server, SENTENCE))
    fast = len(pcm(server, SENTENCE, speed=2.0))
    slow = len(pcm(server, SENTENCE, speed=0.5))
    assert fast < 0.7 * normal < 0.7 * slow


def test_voice_object_and_instructions_are_accepted(server: LiveServer) -> None:
    by_name = pcm(server, "Hello there.")
    by_object = pcm(server, "Hello there.", voice={"id": "alloy"}, instructions="Speak warmly.")
    assert by_object == by_name


def test_the_first_bytes_arrive_before_the_input_is_spoken(server: LiveServer) -> None:
    text = " ".join([PARAGRAPH] * 4)  # twelve sentences
    with patient_http(server) as http:
        started = time.perf_counter()
        first = 0.0
        chunks = 0
        body = {"model": "tts-1", "voice": "echo", "input": text, "response_format": "pcm"}
        with http.stream("POST", "/v1/audio/speech", json=body) as response:
            assert response.status_code == 200
            assert response.headers.get("transfer-encoding") == "chunked"
            for chunk in response.iter_raw():
                if chunk and not first:
                    first = time.perf_counter() - started
                chunks += 1
        total = time.perf_counter() - started
    assert chunks >= 6  # sentence by sentence, not one blob
    assert first < 0.3 * total, (first, total)


def test_sse_sends_deltas_then_done_with_the_same_audio(server: LiveServer) -> None:
    expected = pcm(server, PARAGRAPH, voice="onyx")
    with patient_http(server) as http:
        response = http.post(
            "/v1/audio/speech",
            json={
                "model": "tts-1",
                "voice": "onyx",
                "input": PARAGRAPH,
                "response_format": "pcm",
                "stream_format": "sse",
            },
        )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")
    ]
    deltas = [e for e in events[:-1] if e["type"] == "speech.audio.delta"]
    assert len(deltas) == len(events) - 1 >= 3
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == expected
    done = events[-1]
    assert done["type"] == "speech.audio.done"
    usage = done["usage"]
    assert usage["input_tokens"] == len(PARAGRAPH)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["output_tokens"] == pytest.approx(len(expected) / 2 / 24_000 * 50, abs=1)


@pytest.mark.parametrize(("voice", "tolerance"), [("alloy", 0), ("echo", 1)])
def test_eight_concurrent_requests_give_the_audio_of_one_alone(
    server: LiveServer, voice: str, tolerance: int
) -> None:
    """Hibari never batches: bit-identical. Piper's batched matrix products sum in
    another order than a batch of one, which moves a sample by at most one 16-bit
    step; lengths, and so every sentence's timing, stay exact."""
    engine = ENGINES[voice]
    alone = np.frombuffer(pcm(server, PARAGRAPH, voice=voice), "<i2").astype(np.int32)
    batches_before, items_before = batch_counts(server, engine)
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda _: pcm(server, PARAGRAPH, voice=voice), range(8)))
    batches, items = batch_counts(server, engine)
    for audio in together:
        samples = np.frombuffer(audio, "<i2").astype(np.int32)
        assert len(samples) == len(alone)
        assert np.abs(samples - alone).max() <= tolerance
    if voice == "echo":  # the 24 sentences really shared model calls
        assert items - items_before == 24 and batches - batches_before < 24


def test_voices_lists_each_models_voices(server: LiveServer) -> None:
    with patient_http(server) as http:
        listing = http.get("/v1/audio/voices").json()
        one = http.get("/v1/audio/voices", params={"model": "tts-1-hd"}).json()
        missing = http.get("/v1/audio/voices", params={"model": "nope"})
    models = {entry["model"]: entry["voices"] for entry in listing["data"]}
    assert set(models) == {"tts-1", "tts-1-hd"}
    for voices in models.values():
        assert [v["id"] for v in voices] == list(EMBEDDED_VOICES)  # all 13 of OpenAI's names
        assert {v["backend"] for v in voices} == {"hibari", "piper"}
    assert [entry["model"] for entry in one["data"]] == ["tts-1-hd"]
    assert missing.status_code == 404


def test_models_lists_the_speech_models(client: openai.OpenAI) -> None:
    ids = {model.id for model in client.models.list()}
    assert {"whisper-1", "tts-1", "tts-1-hd"} <= ids
