"""``/``: the web playground, a page for hearing and talking to this server in a browser.

Its files are plain HTML, CSS and JavaScript in the package (``server/playground/``), no
build step and nothing fetched from anywhere else, so an air-gapped box shows the same
page. ``/`` serves ``index.html``; ``/playground/<name>`` serves the files beside it.

Both are public whatever ``public_paths`` says (``Settings.is_public``): the page holds
no data and costs no compute. Every API call it makes sends the key typed into it, so
with keys on a visitor without one sees the page and nothing else. ``playground = false``
takes the page away (404, as any unknown path).

The page is sent with a Content-Security-Policy that allows only this origin (and
``blob:`` media, which is how played and recorded audio reach the audio elements): a
key typed into the page can go to this server and nowhere else, even if a later change
let foreign markup in.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Final

from litestar import Request, Response, get
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.params import FromPath

from server.runtime import runtime

CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
"""The kinds of file the page is made of; any other name is not served."""

CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'self'",
        "connect-src 'self'",  # fetch and the realtime WebSocket, to this origin only
        "media-src 'self' blob:",
        "img-src 'self' data: blob:",
        "worker-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

HEADERS: Final = {
    # Small files, revalidated each visit: an upgrade shows the new page at once.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}


def playground_dir() -> Traversable:
    return files("server") / "playground"


@cache
def _files() -> dict[str, bytes]:
    """Every file of the page, read once: a request names one of these or gets a 404
    (a lookup, so no name from a request ever reaches the file system or a cache)."""
    return {
        path.name: path.read_bytes()
        for path in playground_dir().iterdir()
        if path.is_file() and not path.name.startswith(".") and _suffix(path.name) in CONTENT_TYPES
    }


def _suffix(name: str) -> str:
    return name[name.rfind(".") :] if "." in name else ""


def _serve(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    body = _files().get(name) if runtime(request).settings.playground else None
    if body is None:
        raise NotFoundException(f"No file {request.url.path}.")
    content_type = CONTENT_TYPES[_suffix(name)]
    headers = {**HEADERS, "Content-Type": content_type}
    if content_type.startswith("text/html"):
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return Response(body, headers=headers)


@get("/", include_in_schema=False, media_type=MediaType.HTML)
async def playground_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    return _serve(request, "index.html")


@get("/playground/{name:str}", include_in_schema=False)
async def playground_file(request: Request[Any, Any, Any], name: FromPath[str]) -> Response[bytes]:
    return _serve(request, name)


ROUTES = [playground_page, playground_file]
