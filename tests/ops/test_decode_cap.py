"""``max_concurrent_decodes`` bounds how many uploads are decoded at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from benchmarks.server_process import metric
from server.runtime import Runtime
from tests.conftest import LiveServer, make_settings
from tests.speech import wav_bytes


def test_uploads_beyond_the_cap_wait_for_a_decode_slot() -> None:
    # Ten minutes of near-silence: a real decode of ~19 MB, then nothing for the model.
    quiet = (np.random.default_rng(0).standard_normal(600 * 16_000) * 3).astype(np.int16)
    wav = wav_bytes(quiet, 16_000)
    settings = make_settings(speech_models=(), max_concurrent_decodes=1)
    with LiveServer(settings) as live:
        state: Runtime = live.app.state.runtime
        seen = {"running": 0, "waiting": 0}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                seen["running"] = max(seen["running"], state.decodes.borrowed_tokens)
                waiting = state.decodes.statistics().tasks_waiting
                seen["waiting"] = max(seen["waiting"], waiting)
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with live.http() as http, ThreadPoolExecutor(6) as pool:

            def post(_: int) -> int:
                response = http.post(
                    "/v1/audio/transcriptions",
                    files={"file": ("quiet.wav", wav)},
                    data={"model": "whisper-1"},
                )
                return response.status_code

            statuses = list(pool.map(post, range(6)))
            metrics = http.get("/metrics").text
        done.set()
        watcher.join()
    assert statuses == [200] * 6
    assert seen["running"] == 1  # never two decodes at once
    assert seen["waiting"] >= 1  # and some upload did have to wait for the slot
    assert metric(metrics, "voxserve_decodes", state="running") == 0
