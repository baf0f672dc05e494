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
from pathlib import Path
from typing import Any

from aiohttp import web

from predictor.config import STATIC_PREFIX, Settings
from predictor.service.registry import ModelRegistry

# The page ships in the package root (setup.py package_data), beside this layer.
STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
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


def page_info(settings: Settings, registry: ModelRegistry) -> dict[str, Any]:
    """What a client needs to know to use the detection endpoint well.

    The top-level ``modelEdge`` and ``classes`` are the default model's (as
    before several models); ``models`` lists every model, the default first.
    """
    default = registry.default
    return {
        "entryPoint": settings.entry_point,
        "modelEdge": max(default.preprocessing.width, default.preprocessing.height),
        "defaultThreshold": settings.probability_threshold,
        "classes": list(default.classes),
        "defaultModel": default.name,
        "models": [
            {
                "name": service.name,
                "classes": list(service.classes),
                "inputWidth": service.preprocessing.width,
                "inputHeight": service.preprocessing.height,
                "resize": service.preprocessing.resize,
            }
            for service in registry
        ],
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


class PageRoutes:
    """The page at ``/``, its files under ``/static/`` and the settings at ``/info``."""

    def __init__(self, settings: Settings, registry: ModelRegistry) -> None:
        self.info = page_info(settings, registry)
        # Rendered once: the settings cannot change while the server runs.
        self._index = render_index(self.info)
        # Only the files shipped beside index.html, by name: nothing else on disk is
        # reachable, whatever the path says.
        self._files = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}

    @property
    def static_names(self) -> list[str]:
        """The files ``/static/NAME`` serves."""
        return sorted(name for name in self._files if name != INDEX_FILE.name)

    def add_to(self, router: web.UrlDispatcher) -> None:
        """Register ``/``, ``/info`` and ``/static/{name}``."""
        router.add_get("/", self.index)
        router.add_get("/info", self.info_endpoint)
        router.add_get(STATIC_PREFIX + "/{name}", self.static_file)

    async def index(self, request: web.Request) -> web.Response:
        """The page, with this server's settings in it."""
        return web.Response(
            text=self._index,
            content_type="text/html",
            charset="utf-8",
            headers=_PAGE_HEADERS,
        )

    async def info_endpoint(self, request: web.Request) -> web.Response:
        """The detection endpoint, the models and their classes, the default threshold, limits."""
        return web.json_response(self.info)

    async def static_file(self, request: web.Request) -> web.StreamResponse:
        """One of the page's files (``GET /static/NAME``), or a JSON 404."""
        name = request.match_info["name"]
        path = self._files.get(name)
        if path is None or name == INDEX_FILE.name:  # the page only with its settings, at /
            raise web.HTTPNotFound()
        # Revalidate on every load, so that a new release's app.js is never mixed
        # with an old cached style.css (the files are small; a 304 is cheap).
        return web.FileResponse(
            path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        )
