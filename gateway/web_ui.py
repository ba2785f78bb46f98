"""The web UI at ``GET /``: a page over the REST API (analytics, goals, predictions,
nudges and feature flags), made of static files shipped in ``gateway/web/``.

The page and its assets are open, like ``/api-docs``: they hold no data. Every data
request the page makes carries the ``Authorization`` header the user typed into it,
and the API routes check it as for any other caller.

The files are read once, when the application is built, through ``importlib.resources``
(so they are found in any installed form of the package) and served from memory under
``/ui/<name>``; ``/`` is ``index.html``. Only the files that exist are routed, so no
path given by a caller ever reaches the file system.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web

UI_PREFIX = "/ui/"
CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
}
# The page's own files only: no inline script, no other origin (no CDN), no framing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    etag: str


def _content_type(name: str) -> str | None:
    for suffix, content_type in CONTENT_TYPES.items():
        if name.endswith(suffix):
            return content_type
    return None


def load_assets() -> dict[str, _Asset]:
    """The UI's files by name (``gateway/web/*``, one level, known types only)."""
    assets = {}
    for entry in resources.files("gateway").joinpath("web").iterdir():
        content_type = _content_type(entry.name)
        if not entry.is_file() or content_type is None:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[entry.name] = _Asset(body, content_type, etag)
    if "index.html" not in assets:
        raise FileNotFoundError("gateway/web/index.html is missing from the installed package")
    return assets


def _serve(asset: _Asset) -> web.Response:
    return web.Response(
        body=asset.body,
        content_type=asset.content_type,
        charset="utf-8" if asset.content_type.startswith("text/") else None,
        # Revalidated every time (cheap: 304): a new version is seen on the next load.
        headers={"ETag": asset.etag, "Cache-Control": "no-cache", **SECURITY_HEADERS},
    )


def _not_modified(request: web.Request, asset: _Asset) -> bool:
    given = request.headers.get("If-None-Match", "")
    return asset.etag in (tag.strip() for tag in given.split(","))


def add_web_ui(app: web.Application) -> None:
    """Route ``GET /`` (the page) and ``GET /ui/{name}`` (its assets) on ``app``."""
    assets = load_assets()

    async def index(request: web.Request) -> web.StreamResponse:
        asset = assets["index.html"]
        if _not_modified(request, asset):
            return web.Response(status=304, headers={"ETag": asset.etag})
        return _serve(asset)

    async def asset_file(request: web.Request) -> web.StreamResponse:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        if _not_modified(request, asset):
            return web.Response(status=304, headers={"ETag": asset.etag})
        return _serve(asset)

    app.router.add_get("/", index)
    app.router.add_get(UI_PREFIX + "{name}", asset_file)
