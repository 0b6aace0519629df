"""API keys and CORS, against a real server and through the openai SDK."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from litestar import Litestar

from server.app import create_app
from server.auth import KeyRing, bearer_token
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.ops.rawhttp import post_without_body
from tests.patience import PATIENCE_S, patient_http, wait_until_ready

ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# rotated monthly\n\nkey-from-file\n")
    settings = make_settings(
        api_keys=("key-one", "key-two"),
        api_key_file=str(key_file),
        cors_origins=(ORIGIN,),
        speech_models=(),
    )
    with LiveServer(settings, wait_until_ready=False) as live:
        wait_until_ready(live)
        yield live


def _sdk(live: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{live.base_url}/v1", api_key=key, max_retries=0, timeout=PATIENCE_S
    )


def test_every_configured_key_is_accepted(guarded: LiveServer) -> None:
    for key in ("key-one", "key-two", "key-from-file"):
        assert "whisper-1" in [m.id for m in _sdk(guarded, key).models.list()]


def test_a_wrong_key_is_a_401_in_openais_envelope(guarded: LiveServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        _sdk(guarded, "key-on").models.list()  # a prefix of a real key
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert "key-on" not in caught.value.message  # the presented key is never echoed


def test_a_missing_key_says_how_to_send_one(guarded: LiveServer) -> None:
    with patient_http(guarded) as http:
        response = http.get("/v1/models")
        malformed = http.get("/v1/models", headers={"Authorization": "Basic a2V5LW9uZQ=="})
        lowercase = http.get("/v1/models", headers={"Authorization": "bearer key-one"})
    assert_error(response, 401, None, "Authorization: Bearer")
    assert response.headers["www-authenticate"] == "Bearer"
    assert_error(malformed, 401, None, "didn't provide an API key")
    assert lowercase.status_code == 200


def _concrete_paths(app: Litestar) -> list[tuple[str, str]]:
    """Every route the app has, with path parameters filled in, and its methods."""
    paths: list[tuple[str, str]] = []
    for route in app.routes:
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in sorted(route.methods - {"OPTIONS", "HEAD"}):
            paths.append((str(method), path))
    return paths


def test_every_route_but_the_public_ones_is_guarded(guarded: LiveServer) -> None:
    """Walks the app's own route table, so a route added later is checked too."""
    app = create_app(make_settings(speech_models=()))
    settings = make_settings()
    routes = _concrete_paths(app)
    assert len(routes) >= 9
    with patient_http(guarded) as http:
        for method, path in routes:
            response = http.request(method, path)
            if settings.is_public(path):  # 404: a docs file named "x" does not exist
                assert response.status_code in (200, 404, 503), (method, path)
            else:
                assert response.status_code == 401, (method, path, response.text)


def test_probes_and_metrics_are_public_and_count_the_refusals(guarded: LiveServer) -> None:
    with patient_http(guarded) as http:
        http.get("/v1/models")
        assert http.get("/health").json() == {"status": "ok"}
        assert http.get("/ready").json() == {"status": "ready"}
        metrics = http.get("/metrics").text
    assert re.search(r'voxserve_rejections_total\{model="",reason="unauthorized"\} [1-9]', metrics)


def test_cors_allows_the_configured_origin_only(guarded: LiveServer) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    with patient_http(guarded) as http:
        allowed = http.options("/v1/audio/transcriptions", headers={"Origin": ORIGIN, **preflight})
        other = http.options(
            "/v1/audio/transcriptions", headers={"Origin": "https://evil.example", **preflight}
        )
        simple = http.get(
            "/v1/models", headers={"Origin": ORIGIN, "Authorization": "Bearer key-one"}
        )
    assert allowed.status_code in (200, 204)
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in other.headers
    assert simple.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()


def test_without_keys_the_api_is_open_and_the_start_warns(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="voxserve"):
        create_app(make_settings())
    assert "no API keys configured" in caplog.text
    with patient_http(server) as http:
        response = http.get("/v1/models", headers={"Origin": ORIGIN})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers  # CORS is off by default


def test_a_key_file_that_cannot_be_read_stops_the_start(tmp_path: Path) -> None:
    from server.settings import SettingsError

    with pytest.raises(SettingsError, match="api_key_file"):
        create_app(make_settings(api_key_file=str(tmp_path / "missing.txt")))


def test_the_key_ring_matches_whole_keys_only() -> None:
    ring = KeyRing(["alpha", "beta", "beta", ""])
    assert len(ring) == 2  # duplicates and empty keys dropped
    assert ring.allows("alpha") and ring.allows("beta")
    assert not ring.allows("alph") and not ring.allows("alpha ") and not ring.allows("")
    assert not KeyRing([])
    assert bearer_token(b"Bearer  abc ") == "abc"
    assert bearer_token(b"Token abc") is None and bearer_token(b"Bearer") is None


def test_environment_keys_are_comma_separated() -> None:
    from server.settings import load_settings

    settings = load_settings(env={"VOXSERVE_API_KEYS": "a, b,,c", "VOXSERVE_CORS_ORIGINS": ORIGIN})
    assert settings.api_keys == ("a", "b", "c")
    assert settings.cors_origins == (ORIGIN,)


def test_a_request_without_a_key_is_refused_before_its_body_is_read(guarded: LiveServer) -> None:
    answer = post_without_body(
        guarded.base_url, "/v1/audio/transcriptions", 20 << 20, timeout=PATIENCE_S
    )
    # The body is never sent, so any answer came before it; the bound (milliseconds
    # alone, 10 s on a busy machine) only says it came promptly.
    assert answer.status == 401 and answer.seconds < 10, answer
    assert b"invalid_request_error" in answer.body
