"""The playground's files over HTTP: public with keys on, nothing else of the package
served, a strict Content-Security-Policy, and gone with ``playground = false``.

What the page does in a browser is tested in ``tests/browser/``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from server.routes.playground import CONTENT_TYPES, playground_dir
from server.settings import Settings
from tests.api.test_errors import assert_error
from tests.conftest import LiveServer, make_settings
from tests.patience import patient_http

KEY = "playground-key"
PAGE_WEIGHT_LIMIT = 200_000
"""The issue's bound on everything the page loads, in bytes."""


@pytest.fixture(scope="module")
def keyed() -> Iterator[LiveServer]:
    settings = make_settings(api_keys=(KEY,), speech_models=(), models=())
    with LiveServer(settings, wait_until_ready=False) as live:
        yield live


def _files() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in playground_dir().iterdir() if p.is_file()}


def test_the_page_and_its_files_are_public_and_the_api_is_not(keyed: LiveServer) -> None:
    with patient_http(keyed) as http:
        page = http.get("/")
        files = {name: http.get(f"/playground/{name}") for name in _files()}
        api = http.get("/v1/models")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>" in page.text
    for name, response in files.items():
        assert response.status_code == 200, name
        assert response.content == _files()[name]
        assert response.headers["content-type"] == CONTENT_TYPES[name[name.rfind(".") :]]
    assert_error(api, 401, None, "Authorization: Bearer")


def test_every_file_the_page_names_is_served(keyed: LiveServer) -> None:
    """Each ``src``/``href`` of the page is a file under ``playground/``, fetched relative
    to the page (so a proxy prefix works), and nothing is loaded from another host."""
    with patient_http(keyed) as http:
        page = http.get("/").text
        named = re.findall(r'(?:src|href)="([^"#]+)"', page)
        assert named, "the page loads no files"
        for url in named:
            assert not re.match(r"^[a-z]+:|^//|^/", url), f"{url}: not relative to the page"
            assert http.get(f"/{url}").status_code == 200, url
    assert not re.search(r"https?://", page)


def test_the_page_has_a_strict_content_security_policy(keyed: LiveServer) -> None:
    with patient_http(keyed) as http:
        policy = http.get("/").headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["connect-src"] == "'self'"  # the key goes nowhere but here
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert directives["frame-ancestors"] == "'none'"


@pytest.mark.parametrize(
    "path",
    [
        "/playground/",
        "/playground/missing.js",
        "/playground/..%2Froutes%2Fplayground.py",
        "/playground/%2e%2e",
        "/playground/.hidden.js",
        "/playground/app.py",
    ],
)
def test_nothing_else_is_served(keyed: LiveServer, path: str) -> None:
    with patient_http(keyed) as http:
        response = http.get(path)
    assert response.status_code == 404, response.text
    assert "error" in response.json()


def test_the_page_weighs_under_the_limit() -> None:
    sizes = {name: len(body) for name, body in _files().items()}
    assert "index.html" in sizes
    assert sum(sizes.values()) < PAGE_WEIGHT_LIMIT, sizes
    for name in sizes:
        assert name[name.rfind(".") :] in CONTENT_TYPES, f"{name} would not be served"


def test_it_can_be_turned_off() -> None:
    settings = make_settings(playground=False, speech_models=(), models=())
    assert not settings.is_public("/")
    with LiveServer(settings, wait_until_ready=False) as live, patient_http(live) as http:
        page = http.get("/")
        script = http.get("/playground/index.html")
    assert_error(page, 404, None, "/")
    assert script.status_code == 404


def test_only_the_page_is_made_public() -> None:
    settings = Settings(public_paths=())
    assert settings.is_public("/")
    assert settings.is_public("/playground/app.js")
    assert not settings.is_public("/playgroundx")
    assert not settings.is_public("/v1/models")
    assert not settings.is_public("/metrics")
