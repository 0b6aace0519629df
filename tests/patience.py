"""Waiting without racing the clock, for tests that must pass on a slow, busy machine.

On a 2-core machine with a load average of 7-10, everything takes five to ten times
as long as it does alone: a model loads in minutes, a sentence is transcribed in
seconds, and httpx's default 5 s timeout is hit by a plain ``GET /ready``. A test
may bound time only where time is the behaviour under test; everything else waits
on an event (a metric reaching a value, a status) with :data:`PATIENCE_S` as its
deadline, which is there only so that a real hang fails instead of blocking the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from benchmarks.server_process import metric

if TYPE_CHECKING:  # only a type here, so that tests/conftest.py may import this module
    from tests.conftest import LiveServer

PATIENCE_S = 600.0
"""How long a wait that is not the behaviour under test may take before it is a hang:
the openai SDK's own default timeout, over 10x what anything here takes when busy."""
POLL_S = 0.05


def patient_http(live: LiveServer) -> httpx.Client:
    """A client of ``live`` whose timeout is :data:`PATIENCE_S`, not httpx's 5 s."""
    return httpx.Client(base_url=live.base_url, timeout=PATIENCE_S)


def wait_until(condition: Callable[[], bool], what: str, patience: float = PATIENCE_S) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while not condition():
        assert time.monotonic() < deadline, f"{what}: still not so after {patience:g} s"
        time.sleep(POLL_S)


def wait_until_ready(live: LiveServer) -> None:
    """Until ``/ready`` says 200: every model loaded (minutes on a busy machine)."""
    with patient_http(live) as http:
        wait_until(lambda: http.get("/ready").status_code == 200, "voxserve ready")


def wait_for_metric(live: LiveServer, name: str, at_least: float, **labels: str) -> None:
    """Until the Prometheus sample ``name{labels}`` is at least ``at_least``."""
    with patient_http(live) as http:
        wait_until(
            lambda: metric(http.get("/metrics").text, name, **labels) >= at_least,
            f"{name}{labels} >= {at_least:g}",
        )
