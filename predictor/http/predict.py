"""The original contract: ``POST /predict`` (``REST_ENTRY_POINT``) with a JPEG body.

Answers ``{"prediction": [{"objectClass", "probability", "x", "y", "width",
"height"}, ...]}``, or the photo with its detections drawn (``?render=true``
or ``Accept: image/jpeg``). ``?threshold=`` overrides ``PROBABILITY_MORE``;
``?model=NAME`` asks another of the served models than the default (the
first of ``MODELS``).

The order of checks is chosen so that a bad request costs as little as
possible: the API key and the declared body size from the headers (even
before ``Expect: 100-continue`` lets the client send the body), then the
content type and the query, then the body is read (at most
``MAX_BODY_BYTES``), then the detection service admits, decodes and batches
it. From the moment the body is in, the request has ``REQUEST_TIMEOUT_MS``
to reach its forward pass, or it gets 504.
"""

from __future__ import annotations

import asyncio
import math
from concurrent.futures import Executor

from aiohttp import web

from predictor.config import parse_probability
from predictor.detections import Detection
from predictor.errors import InvalidInput
from predictor.http.errors import json_error
from predictor.http.guard import MODEL_KEY, RequestGuard
from predictor.http.timing import with_server_timing
from predictor.http.v2_codec import strict_dumps
from predictor.runtime.render import render_jpeg
from predictor.service.registry import ModelRegistry
from predictor.service.service import StepTimes

INVALID_CONTENT = "Invalid content"
QUERY_PARAMETERS = frozenset({"threshold", "render", "model"})


class PredictRoute:
    """``POST`` on the entry point, over the served models."""

    def __init__(
        self,
        registry: ModelRegistry,
        guard: RequestGuard,
        threshold: float,
        max_image_pixels: int,
        render_pool: Executor,
    ) -> None:
        self._registry = registry
        self._guard = guard
        self._threshold = threshold
        self._max_image_pixels = max_image_pixels
        self._render_pool = render_pool

    def add_to(self, router: web.UrlDispatcher, path: str) -> None:
        """Register the route at ``path``."""
        router.add_post(
            path, with_server_timing(self.predict), expect_handler=self._guard.expect_continue
        )

    async def predict(self, request: web.Request, timing: StepTimes) -> web.Response:
        """POST an ``image/jpeg`` body; answer the objects found in it (JSON or a drawn JPEG)."""
        refusal = self._guard.refuse_from_headers(request)
        if refusal is not None:
            return refusal
        if request.content_type.lower() != "image/jpeg":
            return json_error(400, INVALID_CONTENT)
        unknown = sorted(set(request.query) - QUERY_PARAMETERS)
        if unknown:
            # A misspelt parameter (?treshold=) must not be silently ignored.
            raise InvalidInput(
                f"unknown query parameter {unknown[0]!r}; the parameters are "
                + ", ".join(sorted(QUERY_PARAMETERS))
            )
        service = self._registry.get(request.query.get("model"))
        request[MODEL_KEY] = service.name
        threshold = self._threshold
        if "threshold" in request.query:
            try:
                threshold = parse_probability(request.query["threshold"])
            except ValueError as exc:
                raise InvalidInput(f"threshold: {exc}") from None
        try:
            as_image = wants_image(request.query.get("render"), request.headers.get("Accept"))
        except ValueError as exc:
            raise InvalidInput(f"render: {exc}") from None
        body = await self._guard.read_body(request)
        if not body:
            raise InvalidInput("the body is empty; send the JPEG bytes")
        timing.step("read")
        (detections,) = await service.detect([body], threshold, timing)
        if as_image:
            return await self._drawn(body, detections, timing)
        body_json = {"prediction": [d.to_json() for d in detections]}
        return web.json_response(body_json, dumps=strict_dumps)

    async def _drawn(
        self, body: bytes, detections: list[Detection], timing: StepTimes
    ) -> web.Response:
        """The image with its detections drawn, as ``image/jpeg``."""
        # Full-resolution decoding, drawing and encoding take tens of milliseconds
        # for a photo: on the preprocessing pool, never on the event loop.
        jpeg = await asyncio.get_running_loop().run_in_executor(
            self._render_pool, render_jpeg, body, detections, self._max_image_pixels
        )
        timing.step("render")
        return web.Response(body=jpeg, content_type="image/jpeg")


def wants_image(render: str | None, accept: str | None) -> bool:
    """Whether to answer a drawn JPEG instead of JSON.

    ``?render=true`` / ``false`` (also ``1`` / ``0``) decides when present;
    otherwise the ``Accept`` header does: JPEG only when the client prefers
    ``image/jpeg`` strictly over ``application/json`` (JSON wins ties, so
    ``*/*`` and a missing header keep the original contract). Raises
    ``ValueError`` for any other ``render`` value.
    """
    if render is not None:
        value = render.strip().lower()
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise ValueError("expected true or false")
    if not accept:
        return False
    return _accept_quality(accept, "image/jpeg") > _accept_quality(accept, "application/json")


def _accept_quality(accept: str, media_type: str) -> float:
    """The q-value the ``Accept`` header gives ``media_type``: its most specific match wins."""
    main_type = media_type.split("/", 1)[0]
    candidates = {media_type: 2, f"{main_type}/*": 1, "*/*": 0}
    best_specificity, best_q = -1, 0.0
    for item in accept.split(","):
        name, *params = (field.strip() for field in item.split(";"))
        specificity = candidates.get(name.lower())
        if specificity is None or specificity <= best_specificity:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0  # a malformed weight does not make a type preferred
                if not math.isfinite(q):
                    q = 0.0
                q = min(max(q, 0.0), 1.0)
        best_specificity, best_q = specificity, q
    return best_q
