"""Batch invariance over HTTP: concurrent requests share batches and get the same text."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import LiveServer, make_settings
from tests.speech import SENTENCES


def batch_histogram(server: LiveServer) -> tuple[float, float]:
    """(number of batches, items in them) for whisper-1, from /metrics."""
    with server.http() as http:
        text = http.get("/metrics").text
    count = re.search(r'voxserve_batch_size_count\{model="whisper-1"\} (\S+)', text)
    total = re.search(r'voxserve_batch_size_sum\{model="whisper-1"\} (\S+)', text)
    assert count and total
    return float(count[1]), float(total[1])


def test_eight_concurrent_requests_give_the_texts_of_eight_sequential_ones(
    sentence_wavs: list[bytes],
) -> None:
    wavs = sentence_wavs[:8]
    with LiveServer(make_settings(max_batch_size=8, max_queue_delay_ms=200)) as live:
        client = live.openai()

        def transcribe(wav: bytes) -> str:
            return client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav)).text

        sequential = [transcribe(wav) for wav in wavs]
        batches_before, items_before = batch_histogram(live)
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(transcribe, wavs))
        batches_after, items_after = batch_histogram(live)

    assert sequential == list(SENTENCES[:8])
    assert concurrent == sequential
    # The concurrent requests really were batched: fewer model calls than requests.
    assert items_after - items_before == 8
    assert batches_after - batches_before < 8
