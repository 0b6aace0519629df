"""The API docs work offline, and the OpenAPI document says what each route answers.

``/docs`` must render on an air-gapped box: the page names no other host, and every
file it loads is served here with its content type. ``/openapi.json`` is a valid
OpenAPI 3.1 document. Its statuses are checked against the server itself: every
error status documented for a route is provoked over HTTP, and every status the
provocations get is documented (``GET /v1/models/{id}`` once documented a 400 it
never answered, and no 404).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from html.parser import HTMLParser
from typing import Any, Literal

import httpx
import jsonschema_rs
import numpy as np
import pytest
from schemathesis.specs.openapi.definitions import OPENAPI_31

from models.voices import VoiceSpec
from server.catalog import DEFAULT_SPEECH_CATALOG, CatalogModel, SpeechModel
from server.errors import ErrorEnvelope
from server.openapi import json_schema
from server.routes.docs import swagger_ui_dir
from tests.conftest import LiveServer, make_settings
from tests.ops.rawhttp import post_without_body
from tests.patience import PATIENCE_S, patient_http, wait_until
from tests.speech import SENTENCES, speak, spoken_wav, wav_bytes

KEY = "docs-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
AUDIO_ROUTES = {"/v1/audio/transcriptions", "/v1/audio/translations", "/v1/audio/speech"}
TYPES = {".css": "text/css", ".js": "text/javascript", ".png": "image/png"}


@pytest.fixture(scope="module")
def docs_server() -> Iterator[LiveServer]:
    """A server with API keys and no models: the docs need none."""
    with LiveServer(make_settings(api_keys=(KEY,), models=(), speech_models=())) as live:
        yield live


class _Links(HTMLParser):
    """Every URL a page loads or links to: ``href``, ``src`` and ``data-*`` attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name in ("href", "src") or name.startswith("data-")):
                self.urls.append(value)


def _links(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.urls


@pytest.mark.parametrize("path", ["/docs", "/schema"])
def test_the_docs_page_names_no_other_host(docs_server: LiveServer, path: str) -> None:
    with patient_http(docs_server) as http:
        response = http.get(path)  # no key: a browser opening the page sends none
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert "http://" not in response.text and "https://" not in response.text
    assert "<script>" not in response.text  # no inline script: a strict CSP still works
    assert all(url.startswith("/") and not url.startswith("//") for url in _links(response.text))


def test_every_file_the_page_loads_is_served_with_its_type(docs_server: LiveServer) -> None:
    with patient_http(docs_server) as http:
        page = http.get("/docs").text
        urls = _links(page)
        answers = {url: http.get(url) for url in urls}
    assets = [url for url in urls if url.startswith("/docs/")]
    assert {url.split("?")[0].rsplit("/", 1)[-1] for url in assets} >= {
        "swagger-ui-bundle.js",
        "swagger-ui.css",
    }
    for url, response in answers.items():
        assert response.status_code == 200, (url, response.text[:200])
        assert response.content, url
        if url in assets:
            suffix = "." + url.split("?")[0].rsplit(".", 1)[-1]
            assert response.headers["content-type"].split(";")[0] == TYPES[suffix], url
        else:  # the spec the page loads
            assert url == "/openapi.json"
            assert response.json()["openapi"].startswith("3.1")
    bundle = next(r for u, r in answers.items() if "swagger-ui-bundle.js" in u).content
    assert bundle == (swagger_ui_dir() / "swagger-ui-bundle.js").read_bytes()
    start = next(r for u, r in answers.items() if u.startswith("/docs/voxserve-docs.js")).text
    assert "SwaggerUIBundle(" in start and "validatorUrl: null" in start  # no call to swagger.io


def test_only_the_files_the_page_loads_are_served(docs_server: LiveServer) -> None:
    with patient_http(docs_server) as http:
        served = http.get("/docs/swagger-ui.css")
        missing = http.get("/docs/index.html")  # in the bundle, but it loads a petstore
        escaped = http.get("/docs/..%2Fpyproject.toml")
    assert served.status_code == 200
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    assert escaped.status_code == 404


def test_openapi_json_is_a_valid_document_of_the_audio_routes(docs_server: LiveServer) -> None:
    with patient_http(docs_server) as http:
        document = http.get("/openapi.json")
        litestars = http.get("/schema/openapi.json")
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/json"
    body = document.json()
    jsonschema_rs.Draft202012Validator(OPENAPI_31).validate(body)
    assert body == litestars.json() == docs_server.app.openapi_schema.to_schema()
    assert set(body["paths"]) >= AUDIO_ROUTES
    assert "/docs" not in body["paths"] and "/openapi.json" not in body["paths"]


def test_get_model_documents_404_not_400(docs_server: LiveServer) -> None:
    with patient_http(docs_server) as http:
        document = http.get("/openapi.json").json()
    responses = document["paths"]["/v1/models/{model_id}"]["get"]["responses"]
    assert set(responses) == {"200", "401", "404", "503"}
    envelope = json_schema(ErrorEnvelope)
    for status in ("401", "404", "503"):
        assert responses[status]["content"]["application/json"]["schema"] == envelope
    model = responses["200"]["content"]["application/json"]["schema"]  # not Litestar's "string"
    assert {"id", "created"} <= set(model["required"])


def test_the_docs_are_public_and_the_api_is_not(docs_server: LiveServer) -> None:
    with patient_http(docs_server) as http:
        for path in ("/docs", "/docs/swagger-ui.css", "/openapi.json", "/schema/openapi.json"):
            assert http.get(path).status_code == 200, path
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers=AUTH).status_code == 200


def test_an_operator_can_put_the_docs_behind_the_key() -> None:
    settings = make_settings(
        api_keys=(KEY,), models=(), speech_models=(), public_paths=("/health", "/ready")
    )
    with LiveServer(settings) as live, patient_http(live) as http:
        closed = [
            http.get(p).status_code for p in ("/docs", "/docs/swagger-ui.css", "/openapi.json")
        ]
        opened = http.get("/openapi.json", headers=AUTH)
    assert closed == [401, 401, 401]
    assert opened.status_code == 200


def test_a_public_path_opens_the_paths_below_it_only() -> None:
    settings = make_settings(public_paths=("/docs",))
    assert settings.is_public("/docs") and settings.is_public("/docs/swagger-ui.css")
    assert not settings.is_public("/docsx") and not settings.is_public("/openapi.json")


# -- every documented status is answered, every answer is documented ----------------

BROKEN = VoiceSpec(backend="piper", weights="/nonexistent/voice.onnx")
PROVOKED = make_settings(
    api_keys=(KEY,),
    max_queue_size=1,
    max_batch_size=1,
    models=(
        CatalogModel(id="whisper-1", weights="embedded:tiny.en"),
        CatalogModel(id="broken-stt", weights="/nonexistent/whisper"),
    ),
    speech_models=(*DEFAULT_SPEECH_CATALOG, SpeechModel(id="broken-tts", voices={"alloy": BROKEN})),
)
"""Keys on, one place per queue, and a model of each kind that fails to load (its
routes answer 503): what it takes to provoke every documented status."""

Kind = Literal["stt", "tts", "any"]
MODELS: dict[Kind, str] = {"stt": "whisper-1", "tts": "tts-1", "any": "whisper-1"}
OTHER_KIND: dict[Kind, str] = {"stt": "tts-1", "tts": "whisper-1", "any": "tts-1"}
BROKEN_MODEL: dict[Kind, str] = {"stt": "broken-stt", "tts": "broken-tts", "any": "broken-stt"}
NOT_AUDIO = b"\x00not audio" * 64


@dataclass(frozen=True)
class Shape:
    """How to call a documented route: the kind of model it names (if it names one)
    and the changes that make a request to it invalid."""

    kind: Kind | None = None
    bad: tuple[dict[str, Any], ...] = ()


_STT = Shape("stt", ({"temperature": "warm"}, {"file": NOT_AUDIO}))
SHAPES: dict[tuple[str, str], Shape] = {
    ("POST", "/v1/audio/transcriptions"): _STT,
    ("POST", "/v1/audio/translations"): _STT,
    ("POST", "/v1/audio/speech"): Shape("tts", ({"speed": 100}, {"input": ""})),
    ("GET", "/v1/audio/voices"): Shape("tts"),
    ("GET", "/v1/models"): Shape(),
    ("GET", "/v1/audio/models"): Shape(),
    ("GET", "/v1/models/{model_id}"): Shape("any"),
    ("GET", "/health"): Shape(),
    ("GET", "/ready"): Shape(),
    ("GET", "/metrics"): Shape(),
}
"""Every documented route: a new one fails the test until it is added here."""


@dataclass(frozen=True)
class Call:
    """One request: what httpx sends, and whether it carries the key."""

    method: str
    path: str
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    keyed: bool = True

    def send(self, http: httpx.Client) -> int:
        response = http.request(
            self.method,
            self.path,
            data=self.data,
            files=self.files,
            json=self.json,
            params=self.params,
            headers=AUTH if self.keyed else {},
        )
        return response.status_code


def request(
    route: tuple[str, str], model: str | None = None, keyed: bool = True, **changes: Any
) -> Call:
    """A valid request to ``route`` (naming ``model`` if given), with ``changes`` made."""
    method, path = route
    kind = SHAPES[route].kind
    name = model or (MODELS[kind] if kind else "")
    if path in ("/v1/audio/transcriptions", "/v1/audio/translations"):
        upload = changes.pop("file", _clip())
        form = {"model": name, **changes}
        return Call(method, path, data=form, files={"file": ("clip.wav", upload)}, keyed=keyed)
    if path == "/v1/audio/speech":
        body = {"model": name, "voice": "alloy", "input": "Hi.", **changes}
        return Call(method, path, json=body, keyed=keyed)
    assert not changes, route  # the GET routes have no body: nothing to get wrong
    if path == "/v1/audio/voices":
        return Call(method, path, params={"model": model} if model else None, keyed=keyed)
    if path == "/v1/models/{model_id}":
        return Call(method, f"/v1/models/{name}", keyed=keyed)
    return Call(method, path, keyed=keyed)


@cache
def _clip() -> bytes:
    return spoken_wav(SENTENCES[0])


def _naming(models: dict[Kind, str]) -> Callable[[tuple[str, str]], list[Call]]:
    def calls(route: tuple[str, str]) -> list[Call]:
        kind = SHAPES[route].kind
        return [request(route, models[kind])] if kind else []

    return calls


PROVOCATIONS: dict[str, Callable[[tuple[str, str]], list[Call]]] = {
    "with the key": lambda route: [request(route)],
    "without a key": lambda route: [request(route, keyed=False)],
    "an unknown model": _naming(dict.fromkeys(MODELS, "no-such-model")),
    "a model of the other kind": _naming(OTHER_KIND),
    "a model that failed to load": _naming(BROKEN_MODEL),
    "a bad field": lambda route: [request(route, **bad) for bad in SHAPES[route].bad],
}
"""Requests built for each documented route, answered at once by a quiet server."""


def _documented(document: dict[str, Any]) -> dict[tuple[str, str], set[int]]:
    return {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


@pytest.fixture(scope="module")
def provoked() -> Iterator[LiveServer]:
    with LiveServer(PROVOKED, wait_until_ready=False) as live:
        live.wait_until_loaded()  # /ready stays 503: two models fail to load on purpose
        yield live


def test_every_documented_status_is_answered_and_every_answer_is_documented(
    provoked: LiveServer,
) -> None:
    documented = _documented(provoked.app.openapi_schema.to_schema())
    answered: dict[tuple[str, str], set[int]] = {route: set() for route in documented}
    how: dict[tuple[str, str, int], str] = {}

    def record(route: tuple[str, str], status: int, provocation: str) -> None:
        answered[route].add(status)
        how.setdefault((*route, status), provocation)

    assert set(documented) <= set(SHAPES), "add the new route's shape to SHAPES"
    with patient_http(provoked) as http:
        for route in documented:
            method, path = route
            for name, provoke in PROVOCATIONS.items():
                for call in provoke(route):
                    record(route, call.send(http), name)
            if method == "POST":  # a body larger than any the server reads, never sent
                raw = post_without_body(
                    provoked.base_url, path, 1 << 30, headers=AUTH, timeout=PATIENCE_S
                )
                record(route, raw.status, "too large a body")
        with _every_queue_full(provoked):
            for route in documented:
                record(route, request(route).send(http), "every queue full")
        provoked.app.state.runtime.draining = True  # what SIGTERM sets (server.process)
        try:
            for route in documented:
                record(route, request(route).send(http), "draining")
        finally:
            provoked.app.state.runtime.draining = False

    for route, statuses in documented.items():
        got = {status: how[(*route, status)] for status in answered[route]}
        assert answered[route] - {200} == statuses - {200}, (route, sorted(statuses), got)


def _long_speech(seconds: int) -> bytes:
    """A WAV of one sentence said over and over for ``seconds``: minutes of decoding.

    Silence would not do: Whisper gets through a window of it in milliseconds. Speech
    takes a decoder pass per token, so this holds its queue place for far longer than
    the probes take, on any machine; the test hangs up instead of waiting for it."""
    samples, rate = speak(SENTENCES[1])
    return wav_bytes(np.resize(samples, seconds * rate), rate)


def _send_and_leave(
    live: LiveServer, path: str, data: dict[str, str], audio: bytes
) -> socket.socket:
    """POST a whole upload over a raw socket and leave it waiting: closing the socket
    withdraws the request (the server drops the work of a client that went away)."""
    sent = httpx.Request(
        "POST", live.base_url + path, data=data, files={"file": ("long.wav", audio)}, headers=AUTH
    )
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in sent.headers.items())
    host, port = live.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=PATIENCE_S)
    sock.sendall(head.encode() + b"\r\n" + sent.read())
    return sock


@contextmanager
def _every_queue_full(live: LiveServer) -> Iterator[None]:
    """Every model queue of the audio routes holds one request, its only place.

    Transcription: five minutes of speech, admitted, then withdrawn by hanging up.
    Speech: a long reading whose stream is not read, so its engine stays busy.
    """
    runtime = live.app.state.runtime
    transcription = runtime.schedulers("transcription")
    text = " ".join(f"This is sentence number {n} of a long reading." for n in range(40))
    speech = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
    long_upload = _long_speech(5 * 60)
    with patient_http(live) as http:
        held = _send_and_leave(
            live, "/v1/audio/transcriptions", {"model": "whisper-1"}, long_upload
        )
        try:
            wait_until(lambda: all(s.admitted for s in transcription), "the long upload admitted")
            with http.stream("POST", "/v1/audio/speech", json=speech, headers=AUTH) as reading:
                assert reading.status_code == 200
                chunks = reading.iter_raw()  # kept: dropping it would close the stream
                next(chunks)  # the engine's only place is taken until this stream ends
                yield
        finally:
            held.close()
    wait_until(lambda: not any(s.admitted for s in runtime.schedulers()), "every queue free")
