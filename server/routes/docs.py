"""``/docs``: an interactive API page whose every file this server serves; ``/openapi.json``.

Litestar's pages under ``/schema`` (and FastAPI's ``/docs``) load their scripts from a
CDN, so on an air-gapped box they stay blank. This page is Swagger UI (it renders
OpenAPI 3.1, which Litestar writes), and its files come from the
``swagger-ui-bundle-v2`` wheel: swagger-ui-dist, byte for byte, inside a Python
package, so ``pip install`` brings them and nothing is fetched at run time. They are
served below ``/docs/``; the page names no other host and has no inline script (a
strict Content-Security-Policy in front of it still works), and Swagger UI's online
validator, which would call swagger.io, is off.

``/openapi.json`` is the document where FastAPI serves it, so tools that look there
find it; ``/schema`` (Litestar's place) shows the same page, ``/schema/openapi.json``
the same document. All of them are public by default (``public_paths``): a browser
opening a page sends no key. "Authorize" on the page takes one for "Try it out".
"""

from __future__ import annotations

import html
from functools import cache
from importlib.metadata import version
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import FromPath

SWAGGER_UI_PACKAGE = "swagger_ui_bundle"
"""The import name of ``swagger-ui-bundle-v2``: ``vendor/swagger-ui-<version>/`` inside."""

INIT_SCRIPT = b"""\
// Swagger UI on the document this server serves (data-openapi on this tag), with the
// online validator off: it would send the document to validator.swagger.io.
window.ui = SwaggerUIBundle({
  url: document.currentScript.dataset.openapi,
  dom_id: "#swagger-ui",
  deepLinking: true,
  validatorUrl: null,
  presets: [SwaggerUIBundle.presets.apis],
});
"""

ASSETS: dict[str, str] = {
    "swagger-ui.css": "text/css; charset=utf-8",
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "voxserve-docs.js": "text/javascript; charset=utf-8",
}
"""Every file the page loads, and its content type; nothing else of the bundle is served."""

CACHE_CONTROL = "public, max-age=604800"
"""A week: the page names each file with ``?v=`` of both versions, so an upgrade is a new URL."""


def swagger_ui_dir() -> Traversable:
    """Swagger UI's files inside the wheel: ``vendor/swagger-ui-<version>``."""
    vendor = files(SWAGGER_UI_PACKAGE) / "vendor"
    found = [p for p in vendor.iterdir() if p.name.startswith("swagger-ui-")]
    if len(found) != 1:
        raise RuntimeError(f"expected one swagger-ui-* folder in {vendor}, found {found}")
    return found[0]


@cache
def asset_version() -> str:
    """voxserve's version and Swagger UI's: the ``?v=`` that makes a new release a new URL."""
    swagger = swagger_ui_dir().name.removeprefix("swagger-ui-")
    return f"{version('voxserve')}-{swagger}"


@cache
def asset(name: str) -> bytes:
    """A file of :data:`ASSETS`, read once (the bundle is 1.5 MB)."""
    if name == "voxserve-docs.js":
        return INIT_SCRIPT
    return (swagger_ui_dir() / name).read_bytes()


def page(root_path: str = "") -> bytes:
    """The page: Swagger UI's stylesheet and script from ``/docs/``, the spec from
    ``/openapi.json``; ``root_path`` is the prefix a proxy mounts the server under."""
    base = html.escape(root_path.rstrip("/"), quote=True)
    v = html.escape(asset_version(), quote=True)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>voxserve API</title>
<link rel="icon" type="image/png" href="{base}/docs/favicon-32x32.png?v={v}">
<link rel="stylesheet" href="{base}/docs/swagger-ui.css?v={v}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{base}/docs/swagger-ui-bundle.js?v={v}"></script>
<script src="{base}/docs/voxserve-docs.js?v={v}" data-openapi="{base}/openapi.json"></script>
</body>
</html>
""".encode()


def _root_path(request: Request[Any, Any, Any]) -> str:
    root: str = request.scope.get("root_path", "")
    return root


@get("/docs", include_in_schema=False, media_type=MediaType.HTML)
async def docs_page(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(page(_root_path(request)), media_type=MediaType.HTML)


@get("/docs/{name:str}", include_in_schema=False)
async def docs_asset(name: FromPath[str]) -> Response[bytes]:
    content_type = ASSETS.get(name)
    if content_type is None:
        raise NotFoundException(f"No file /docs/{name}.")
    headers = {"Content-Type": content_type, "Cache-Control": CACHE_CONTROL}
    return Response(asset(name), headers=headers)


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> Response[bytes]:
    document = request.app.openapi_schema.to_schema()
    return Response(msgspec.json.encode(document), media_type=MediaType.JSON)


class SwaggerPage(OpenAPIRenderPlugin):
    """The same page at Litestar's ``/schema``, so its old address works offline too."""

    def __init__(self) -> None:
        super().__init__(path=["/", "/swagger"], media_type=MediaType.HTML)

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return page(_root_path(request))


ROUTES = [docs_page, docs_asset, openapi_json]
