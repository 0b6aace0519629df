"""Uploads whose clients hang up while they are decoded: one decode at a time, stopped soon.

The decode runs in a worker thread, which a cancelled request cannot kill. Before
the fix, the hang-up gave the decode slot back at once while the thread decoded
and ran the VAD on for minutes: with ``max_concurrent_decodes=1`` the next upload
started beside it, and the gauge read 0. Here the server's threads are watched
directly (the Python stacks of the live server's threads, sampled every few
milliseconds), not through the limiter whose count was the lie.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from benchmarks.server_process import metric
from benchmarks.upload_memory import long_speech_mp3, send_upload
from server.runtime import Runtime
from server.transcription import TranscriptionService
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S

UPLOADS = 4
UPLOAD_SECONDS = 2 * 3600
"""Two hours each (7 MB): a full decode and VAD take over 15 s on an idle core, more
than the stop bound, so a decode that ran on to its end cannot pass for a stopped one."""
STOP_BOUND_S = 10.0
"""The issue asks for 2 s; five times that for a busy shared machine."""
PREPARE_CODE = TranscriptionService._prepare.__code__


def preparing() -> int:
    """Threads whose stack is inside ``TranscriptionService._prepare`` now."""
    count = 0
    for frame in sys._current_frames().values():
        current: FrameType | None = frame
        while current is not None:
            if current.f_code is PREPARE_CODE:
                count += 1
                break
            current = current.f_back
    return count


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    assert eventually(check, timeout), f"timed out waiting for {what}"


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_abandoned_uploads_decode_one_at_a_time_and_stop_soon() -> None:
    data = long_speech_mp3(UPLOAD_SECONDS)
    assert len(data) < 25 << 20
    settings = make_settings(speech_models=(), max_concurrent_decodes=1)
    with LiveServer(settings) as live:
        state: Runtime = live.app.state.runtime
        seen = {"threads": 0, "uncounted": 0}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                borrowed_before = state.decodes.borrowed_tokens
                threads = preparing()
                borrowed_after = state.decodes.borrowed_tokens
                seen["threads"] = max(seen["threads"], threads)
                if threads > max(borrowed_before, borrowed_after):  # a decode off the gauge
                    seen["uncounted"] += 1
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            # As in the report: each client hangs up once its upload is being decoded,
            # and the next upload arrives; the hang-up must not free the slot early.
            borrowers: set[object] = set()
            stops: list[float] = []  # from each hang-up until the slot is free again
            hung_up: float | None = None
            for _ in range(UPLOADS):
                sock = send_upload(live.base_url, data)

                def new_holder() -> bool:
                    holders = set(state.decodes.statistics().borrowers) - borrowers
                    borrowers.update(holders)
                    return bool(holders)

                wait_until(new_holder, timeout=PATIENCE_S, what="the upload to get the decode slot")
                if hung_up is not None:  # the last one's thread has ended (and this upload
                    stops.append(time.monotonic() - hung_up)  # was sent): an upper bound
                wait_until(lambda: preparing() >= 1, timeout=PATIENCE_S, what="its decode to start")
                sock.close()
                hung_up = time.monotonic()
            eventually(
                lambda: preparing() == 0 and state.decodes.borrowed_tokens == 0,
                timeout=PATIENCE_S,
            )
            assert hung_up is not None
            stops.append(time.monotonic() - hung_up)
            time.sleep(1.0)  # a decode started late by a freed slot would show up here
            with live.http() as http:
                metrics = http.get("/metrics").text
        finally:
            done.set()
            watcher.join()
    assert seen["threads"] == 1  # never two decodes at once, however they ended
    assert seen["uncounted"] == 0  # and never one the gauge did not count
    assert max(stops) < STOP_BOUND_S, f"decoding went on after hang-up: {stops}"
    assert metric(metrics, "voxserve_decodes", state="running") == 0
    assert metric(metrics, "voxserve_decodes", state="waiting") == 0
    assert metric(metrics, "voxserve_requests_in_flight") == 0
