"""Batch invariance over HTTP: concurrent requests share batches and get the same text."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import STT_ENGINES, Engine, LiveServer, stt_settings
from tests.patience import patient_http, wait_until_ready
from tests.speech import SENTENCES

BOTH_EXACT = (0, 1, 2, 4, 6, 7, 8, 9)
"""Eight sentences both engines write back exactly. Greedy decoding (torch) writes
three of the fourteen otherwise than beam search (CTranslate2): "Rises often served"
(3), and a lowercase first word (5, 12), as CTranslate2's own greedy search does."""


def metric(server: LiveServer, name: str) -> float:
    """One series of whisper-1 from /metrics (0 when it has no sample yet)."""
    with patient_http(server) as http:
        text = http.get("/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match[1]) if match else 0.0


def model_calls(server: LiveServer) -> tuple[float, float, float]:
    """(model calls, calls with a single item, items admitted into calls) for whisper-1.

    A whole-batch engine makes one call per batch. A step engine makes one per run of
    steps between admissions and finishes, and reports the rows that ran in it; what
    was admitted is counted, in both, by the queue-wait histogram (one sample per item).
    """
    label = '{model="whisper-1"}'
    single = '{le="1.0",model="whisper-1"}'
    return (
        metric(server, f"voxserve_batch_size_count{label}"),
        metric(server, f"voxserve_batch_size_bucket{single}"),
        metric(server, f"voxserve_queue_wait_seconds_count{label}"),
    )


@pytest.mark.parametrize("engine", STT_ENGINES)
def test_eight_concurrent_requests_give_the_texts_of_eight_sequential_ones(
    engine: Engine, model_cache_dir: str, sentence_wavs: list[bytes]
) -> None:
    wavs = [sentence_wavs[n] for n in BOTH_EXACT]
    settings = stt_settings(engine, model_cache_dir, max_batch_size=8, max_queue_delay_ms=200)
    with LiveServer(settings, wait_until_ready=False) as live:
        wait_until_ready(live)
        client = live.openai()

        def transcribe(wav: bytes) -> str:
            return client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text

        sequential = [transcribe(wav) for wav in wavs]
        calls_before, singles_before, items_before = model_calls(live)
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(transcribe, wavs))
        calls_after, singles_after, items_after = model_calls(live)

    assert sequential == [SENTENCES[n] for n in BOTH_EXACT]
    assert concurrent == sequential
    # The concurrent requests really were batched: eight windows were admitted, and
    # some model call ran more than one of them at once.
    assert items_after - items_before == 8
    assert (calls_after - calls_before) - (singles_after - singles_before) >= 1
    if engine == "ctranslate2":  # whole batches: fewer model calls than requests
        assert calls_after - calls_before < 8


def test_two_workers_compute_two_batches_at_once_with_the_same_texts(
    model_cache_dir: str, sentence_wavs: list[bytes]
) -> None:
    """CTranslate2 with two workers of one thread (the CPU layout that pays under load):
    concurrent requests run in two model calls at once, and each text is its own."""
    wavs = [sentence_wavs[n] for n in BOTH_EXACT]
    settings = stt_settings(
        "ctranslate2", model_cache_dir, workers=2, cpu_threads=1, max_batch_size=1
    )
    with LiveServer(settings, wait_until_ready=False) as live:
        wait_until_ready(live)
        backend = live.app.state.runtime.transcription["whisper-1"].backend
        assert backend.model.model.num_workers == 2  # CTranslate2 has two replicas
        client = live.openai()

        def transcribe(wav: bytes) -> str:
            return client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text

        sequential = [transcribe(wav) for wav in wavs]
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(transcribe, wavs))
        config = live.app.state.runtime.transcription["whisper-1"].scheduler.config

    assert sequential == [SENTENCES[n] for n in BOTH_EXACT]
    assert concurrent == sequential
    assert config.workers == 2  # and the scheduler feeds them two batches at once
