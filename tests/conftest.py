"""Shared fixtures: generated speech, and a real voxserve HTTP server per settings."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import openai
import pytest
import uvicorn

from server.app import create_app
from server.catalog import CatalogModel
from server.connections import uvicorn_config
from server.settings import Settings
from tests.patience import PATIENCE_S
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
        config = uvicorn_config(
            self.app, settings, host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + PATIENCE_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("voxserve did not start")
            time.sleep(0.05)
        while self.wait_until_ready:  # models load in the background after start-up
            if httpx.get(f"{self.base_url}/ready", timeout=PATIENCE_S).status_code == 200:
                break
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("voxserve did not become ready")
            time.sleep(0.05)
        return self

    def wait_until_loaded(self, timeout: float = PATIENCE_S) -> None:
        """Until no model is still loading (some may have failed)."""
        deadline = time.monotonic() + timeout
        while "loading" in httpx.get(f"{self.base_url}/ready", timeout=PATIENCE_S).text:
            if time.monotonic() > deadline:
                raise RuntimeError("voxserve's models are still loading")
            time.sleep(0.05)

    def __exit__(self, *_: Any) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0, timeout=PATIENCE_S
        )

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=PATIENCE_S)


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


Engine = Literal["ctranslate2", "torch"]
STT_ENGINES: tuple[Engine, ...] = ("ctranslate2", "torch")
"""The two Whisper engines every transcription feature is proven on."""


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One model cache for the session: the torch engine converts tiny.en into it once."""
    return str(tmp_path_factory.mktemp("model-cache"))


def stt_settings(engine: Engine, model_cache_dir: str, **overrides: Any) -> Settings:
    """A transcription-only server whose whisper-1 is the embedded tiny.en on ``engine``.

    CTranslate2 runs it in int8 with beam search 5, torch in float32 greedily (and with
    continuous batching): the features must hold on both.
    """
    values: dict[str, Any] = {
        "models": (CatalogModel(id="whisper-1", engine=engine),),
        "speech_models": (),
        "model_cache_dir": model_cache_dir,
    }
    values.update(overrides)
    return make_settings(**values)


ENGINE_CLASSES: dict[Engine, str] = {
    "ctranslate2": "WhisperCT2Backend",
    "torch": "WhisperTorchEngine",
}


def assert_engine(live: LiveServer, model_id: str, engine: Engine) -> None:
    """``model_id`` really runs on ``engine``: a test meant for one engine must not pass
    on the other because a setting was ignored."""
    backend = live.app.state.runtime.transcription[model_id].backend
    assert type(backend).__name__ == ENGINE_CLASSES[engine]


@pytest.fixture(scope="session", params=STT_ENGINES)
def stt_engine(request: pytest.FixtureRequest) -> Engine:
    engine: Engine = request.param
    return engine


@pytest.fixture(scope="session")
def stt_server(stt_engine: Engine, model_cache_dir: str) -> Iterator[LiveServer]:
    """The transcription server, once per engine (tests using it run once for each)."""
    with LiveServer(stt_settings(stt_engine, model_cache_dir)) as live:
        assert_engine(live, "whisper-1", stt_engine)
        yield live


@pytest.fixture(scope="session")
def stt_client(stt_server: LiveServer) -> openai.OpenAI:
    return stt_server.openai()


@pytest.fixture(scope="session")
def sentence_wavs() -> list[bytes]:
    """Each of the exact-text sentences as its own WAV file."""
    return [spoken_wav(text) for text in SENTENCES]


@pytest.fixture(scope="session")
def long_wav() -> tuple[bytes, str]:
    """About 70 s of speech (every sentence, twice over, with pauses) and its text."""
    texts = SENTENCES * 2
    return spoken_wav(*texts, pause_seconds=1.0), " ".join(texts)
