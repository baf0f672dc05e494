"""The web page: ``GET /`` (the page), ``GET /static/...`` (its files), ``GET /info``.

The page is three plain files in ``predictor/static`` (HTML, an ES module, CSS):
no build step, no framework, nothing loaded from another origin, so it works
on machines without internet access. The server fills in its own settings
(the detection endpoint's path, the model's input edge, the default
threshold) when it serves ``index.html``; ``GET /info`` answers the same
settings as JSON for other clients.

The page, its files and ``/info`` are open even when ``API_KEY`` is set: they
hold nothing secret. The page then shows an "API key" field, keeps what the
person types in the tab's session storage only, and sends it as the Bearer
token of its detection requests.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from predictor.config import STATIC_PREFIX, Settings

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX_FILE = STATIC_DIR / "index.html"
# index.html holds this inside <script type="application/json" id="predictor-config">.
CONFIG_PLACEHOLDER = "__PREDICTOR_CONFIG__"

# Only this origin, for everything: the page must work offline and must not leak
# uploads anywhere else. blob: serves the previews of chosen and drawn images.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

INFO_KEY: web.AppKey[dict[str, Any]] = web.AppKey("page_info")
INDEX_KEY = web.AppKey("index_html", str)
STATIC_FILES_KEY: web.AppKey[dict[str, Path]] = web.AppKey("static_files")


def page_info(settings: Settings, classes: Sequence[str]) -> dict[str, Any]:
    """What a client needs to know to use the detection endpoint well."""
    return {
        "entryPoint": settings.entry_point,
        "modelEdge": settings.model_edge,
        "defaultThreshold": settings.probability_threshold,
        "classes": list(classes),
        "maxBodyBytes": settings.max_body_bytes,
        "maxImagePixels": settings.max_image_pixels,
        # The page then asks for the key and sends it; the key itself is never in the page.
        "authRequired": settings.api_key is not None,
    }


def render_index(info: dict[str, Any], template: str | None = None) -> str:
    """index.html with ``info`` embedded as JSON.

    ``<``, ``>`` and ``&`` are escaped so that no value (the entry point comes
    from the environment) can close the script element it sits in.
    """
    html = INDEX_FILE.read_text(encoding="utf-8") if template is None else template
    if CONFIG_PLACEHOLDER not in html:
        raise RuntimeError(f"{INDEX_FILE} has no {CONFIG_PLACEHOLDER} placeholder")
    encoded = (
        json.dumps(info, allow_nan=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return html.replace(CONFIG_PLACEHOLDER, encoded)


def add_page_routes(app: web.Application, settings: Settings, classes: Sequence[str]) -> None:
    """Serve the page at ``/``, its files under ``/static/`` and the settings at ``/info``."""
    info = page_info(settings, classes)
    app[INFO_KEY] = info
    # Rendered once: the settings cannot change while the server runs.
    app[INDEX_KEY] = render_index(info)
    # Only the files shipped beside index.html, by name: nothing else on disk is
    # reachable, whatever the path says.
    app[STATIC_FILES_KEY] = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
    app.router.add_get("/", index)
    app.router.add_get("/info", info_endpoint)
    app.router.add_get(STATIC_PREFIX + "/{name}", static_file)


async def index(request: web.Request) -> web.Response:
    """The page, with this server's settings in it."""
    return web.Response(
        text=request.app[INDEX_KEY],
        content_type="text/html",
        charset="utf-8",
        headers=_PAGE_HEADERS,
    )


async def info_endpoint(request: web.Request) -> web.Response:
    """The detection endpoint's path, model input edge, default threshold, classes, limits."""
    return web.json_response(request.app[INFO_KEY])


async def static_file(request: web.Request) -> web.StreamResponse:
    """One of the page's files (``GET /static/NAME``), or a JSON 404."""
    name = request.match_info["name"]
    path = request.app[STATIC_FILES_KEY].get(name)
    if path is None or name == INDEX_FILE.name:  # the page itself only with its settings, at /
        raise web.HTTPNotFound()
    # Revalidate on every load, so that a new release's app.js is never mixed
    # with an old cached style.css (the files are small; a 304 is cheap).
    return web.FileResponse(
        path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    )
