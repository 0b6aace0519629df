"""Fuzzing from the server's own OpenAPI schema: no generated request may get a 5xx.

Schemathesis sends every operation valid and invalid requests built from the schema,
request bodies included (``server/openapi.py`` generates them from the Structs the
routes parse with). Left alone it would almost only meet 404s (a random model) and
400s (random bytes are no audio), so half the bodies that name a model name a real
one, and half of those upload real speech: the fuzz reaches the decoder, the models
and every response format. Text to speak is kept short, to keep synthesis quick.

Every route must also answer with a status, content type and body that
``server/openapi.py`` documents for it (``tests/api/test_api_docs.py`` checks the other
way round: that every documented status is one the route answers).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from server.app import create_app
from server.catalog import CatalogModel
from tests.conftest import LiveServer, make_settings
from tests.patience import PATIENCE_S, patient_http, wait_until_ready
from tests.speech import SENTENCES, spoken_wav

API_KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_SPOKEN = 40
"""Characters of ``input`` kept when a speech request names a real voice."""

SETTINGS = make_settings(
    api_keys=(API_KEY,),
    models=(  # a multilingual one, so that translations get past "English-only"
        CatalogModel(id="whisper-1", weights="embedded:tiny.en"),
        CatalogModel(id="whisper-base", weights="embedded:base"),
    ),
)
OPENAPI = create_app(SETTINGS).openapi_schema.to_schema()
schema = schemathesis.openapi.from_dict(OPENAPI)
"""Loaded from the app rather than the server (``schemathesis.pytest.from_fixture`` fails
under pytest 9); ``test_the_server_serves_this_schema`` checks they are the same."""

_STT = [m.id for m in SETTINGS.models]
_TTS = {m.id: sorted(m.voices) for m in SETTINGS.speech_models}


@schema.hook
def flatmap_body(_: Any, body: Any) -> st.SearchStrategy[Any]:
    """The body as generated, or naming a real model and voice, or a real model and speech."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str):
        return st.just(body)
    if "input" in body:  # speech
        voice = st.sampled_from(sorted(_TTS)).flatmap(
            lambda model: st.fixed_dictionaries(
                {"model": st.just(model), "voice": st.sampled_from(_TTS[model])}
            )
        )
        return st.one_of(st.just(body), voice.map(lambda ids: _short_speech(body, ids)))
    upload = st.sampled_from([{}, {"file": _speech()}])
    real = st.tuples(st.sampled_from(_STT), upload)
    return st.one_of(st.just(body), real.map(lambda r: {**body, "model": r[0], **r[1]}))


def _bracket_parts(form: dict[str, Any]) -> dict[str, Any]:
    """Object fields as the SDK sends them, one ``name[key]`` part per key: the way the
    schema documents them, and the only one the form parser reads (schemathesis would
    send one part of JSON)."""
    parts = dict(form)
    for name, value in form.items():
        if isinstance(value, dict):
            del parts[name]
            parts.update({f"{name}[{key}]": _text(item) for key, item in value.items()})
    return parts


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@cache
def _speech() -> bytes:
    return spoken_wav(SENTENCES[0])


def _short_speech(body: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    text = body.get("input")
    return {**body, **ids, "input": text[:MAX_SPOKEN] if isinstance(text, str) else text}


@pytest.fixture(scope="module")
def fuzzed_server() -> Iterator[LiveServer]:
    """Three models to load (two Whisper, the TTS voices): minutes on a busy machine,
    so the wait is for ``/ready`` itself, not for a fixed number of seconds."""
    with LiveServer(SETTINGS, wait_until_ready=False) as live:
        wait_until_ready(live)
        yield live


def test_the_server_serves_this_schema(fuzzed_server: LiveServer) -> None:
    with patient_http(fuzzed_server) as http:
        response = http.get("/schema/openapi.json", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == OPENAPI
    form = OPENAPI["paths"]["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert form["multipart/form-data"]["schema"]["required"] == ["file", "model"]


@schema.parametrize()
@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
# No deadline and no health check: an example's time is the server's and the machine's,
# not the behaviour under test (a 5xx or an undocumented answer is).
def test_no_generated_request_gets_a_server_error(case: Any, fuzzed_server: LiveServer) -> None:
    if case.media_type == "multipart/form-data" and isinstance(case.body, dict):
        case.body = _bracket_parts(case.body)
    case.call_and_validate(
        base_url=fuzzed_server.base_url,
        headers=AUTH,
        timeout=PATIENCE_S,  # a hang still fails; a busy machine does not
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
