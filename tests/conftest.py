"""Shared fixtures: generated speech, and a real voxserve HTTP server per settings."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import uvicorn

from server.app import create_app
from server.settings import Settings
from tests.speech import SENTENCES, spoken_wav


class LiveServer:
    """voxserve under uvicorn on a free local port, in a background thread."""

    def __init__(self, settings: Settings, *, wait_until_ready: bool = True) -> None:
        self.wait_until_ready = wait_until_ready
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.app = create_app(settings)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 120
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("voxserve did not start")
            time.sleep(0.05)
        while self.wait_until_ready:  # models load in the background after start-up
            if httpx.get(f"{self.base_url}/ready").status_code == 200:
                break
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("voxserve did not become ready")
            time.sleep(0.05)
        return self

    def wait_until_loaded(self, timeout: float = 120) -> None:
        """Until no model is still loading (some may have failed)."""
        deadline = time.monotonic() + timeout
        while "loading" in httpx.get(f"{self.base_url}/ready").text:
            if time.monotonic() > deadline:
                raise RuntimeError("voxserve's models are still loading")
            time.sleep(0.05)

    def __exit__(self, *_: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)


def make_settings(**overrides: Any) -> Settings:
    """Settings for tests: the embedded default on two CPU threads, small limits."""
    values: dict[str, Any] = {"cpu_threads": 2, "max_queue_delay_ms": 5.0}
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    with LiveServer(make_settings()) as live:
        yield live


@pytest.fixture(scope="session")
def client(server: LiveServer) -> openai.OpenAI:
    return server.openai()


@pytest.fixture(scope="session")
def sentence_wavs() -> list[bytes]:
    """Each of the exact-text sentences as its own WAV file."""
    return [spoken_wav(text) for text in SENTENCES]


@pytest.fixture(scope="session")
def long_wav() -> tuple[bytes, str]:
    """About 70 s of speech (every sentence, twice over, with pauses) and its text."""
    texts = SENTENCES * 2
    return spoken_wav(*texts, pause_seconds=1.0), " ".join(texts)
