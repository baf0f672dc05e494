"""The HTTP application: routes, the /predict contract, JSON errors, metrics.

Every answer is JSON except /metrics, the web page (`predictor.page`) and the
detection endpoint's drawn picture (``?render=true`` or ``Accept: image/jpeg``).
The Open Inference Protocol v2 routes (`predictor.v2`) are registered here
too; both protocols share the detection path of `predictor.serving`.
Anything that is not a good request gets a 4xx with ``{"error": "..."}``; an
unexpected fault gets a 500 with the same shape and is logged, and the server
keeps serving. The detection endpoint reports where its time went in a
``Server-Timing`` header.

The order of checks on the detection endpoint is chosen so that a bad request
costs as little as possible: the API key and the declared body size are
checked from the headers (even before ``Expect: 100-continue`` lets the
client send the body), then the content type and the query, then the body
is read (at most ``MAX_BODY_BYTES`` of it), then admitted to the bounded
queue, decoded, and batched. From the moment the body is in, the request has
``REQUEST_TIMEOUT_MS`` to reach its forward pass, or it gets 504.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
from aiohttp import web

from predictor.batching import Batcher
from predictor.config import Settings, parse_probability
from predictor.imaging import ImageError, ImageTooLarge, PreparedImage
from predictor.metrics import PROMETHEUS_CONTENT_TYPE, Metrics
from predictor.model import Detection, Detector, RawDetections
from predictor.page import add_page_routes
from predictor.render import render_jpeg
from predictor.serving import (
    BATCHER_KEY,
    DETECTION_ROUTES_KEY,
    DETECTORS_KEY,
    METRICS_KEY,
    POOL_KEY,
    PROBE_KEY,
    SETTINGS_KEY,
    ReadyProbe,
    Refused,
    ServerTiming,
    admit,
    authorized,
    deadline_from_now,
    detect,
    expect_continue,
    json_error,
    not_ready_reason,
    refuse_from_headers,
    route_name,
    strict_dumps,
    unauthorized,
    with_server_timing,
)
from predictor.threads import preprocess_pool
from predictor.v2 import add_v2_routes

log = logging.getLogger(__name__)

INVALID_CONTENT = "Invalid content"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(settings: Settings, detectors: Sequence[Detector]) -> web.Application:
    """Build the application around already loaded and warmed model replicas."""
    metrics = Metrics()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[_metrics_middleware, _error_middleware],
    )
    app[SETTINGS_KEY] = settings
    app[METRICS_KEY] = metrics
    app[DETECTORS_KEY] = list(detectors)
    app[BATCHER_KEY] = Batcher(
        [_images_to(detector) for detector in detectors],
        max_batch_size=min(settings.batch_max_size, *(d.max_batch for d in detectors)),
        max_delay_s=settings.batch_max_delay_ms / 1000.0,
        queue_max=settings.queue_max,
        metrics=metrics,
        names=[str(detector.context) for detector in detectors],
    )
    edge = settings.model_edge
    app[PROBE_KEY] = ReadyProbe(
        PreparedImage(np.zeros((3, edge, edge), dtype=np.float32), edge, edge)
    )
    app[POOL_KEY] = preprocess_pool(settings.preprocess_workers, settings.preprocess_nice)
    app.on_startup.append(_start_batcher)
    app.on_shutdown.append(_stop_batcher)
    app.on_cleanup.append(_stop_pool)
    app[DETECTION_ROUTES_KEY] = {settings.entry_point}
    app.router.add_post(settings.entry_point, predict, expect_handler=expect_continue)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_endpoint)
    add_page_routes(app, settings, detectors[0].classes if detectors else [])
    # The Open Inference Protocol v2 beside the original contract, on the same batcher.
    add_v2_routes(app)
    return app


def _images_to(detector: Detector) -> Callable[[Sequence[PreparedImage]], list[RawDetections]]:
    """A batcher replica: preprocessed images in, raw detections out."""

    def forward(images: Sequence[PreparedImage]) -> list[RawDetections]:
        return detector.forward([image.tensor for image in images])

    return forward


async def _start_batcher(app: web.Application) -> None:
    app[BATCHER_KEY].start()


async def _stop_batcher(app: web.Application) -> None:
    # aiohttp has closed the listening socket by now; admitted images finish
    # (for up to the grace period) before it waits for their handlers.
    probe = app[PROBE_KEY].task
    if probe is not None:
        probe.cancel()
    await app[BATCHER_KEY].stop(grace_s=app[SETTINGS_KEY].shutdown_grace_s)


async def _stop_pool(app: web.Application) -> None:
    app[POOL_KEY].shutdown(wait=False, cancel_futures=True)


@with_server_timing
async def predict(request: web.Request, timing: ServerTiming) -> web.Response:
    """POST an ``image/jpeg`` body; answer the objects found in it (JSON or a drawn JPEG)."""
    app = request.app
    settings = app[SETTINGS_KEY]
    refusal = refuse_from_headers(request)
    if refusal is not None:
        return refusal
    if request.content_type.lower() != "image/jpeg":
        return json_error(400, INVALID_CONTENT)
    threshold = settings.probability_threshold
    if "threshold" in request.query:
        try:
            threshold = parse_probability(request.query["threshold"])
        except ValueError as exc:
            return json_error(400, f"threshold: {exc}")
    try:
        as_image = wants_image(request.query.get("render"), request.headers.get("Accept"))
    except ValueError as exc:
        return json_error(400, f"render: {exc}")
    body = await request.read()
    if not body:
        return json_error(400, "the body is empty; send the JPEG bytes")
    timing.step("read")

    try:
        (admission,) = admit(app)
        detections = await detect(app, admission, body, deadline_from_now(app), threshold, timing)
    except Refused as refused:
        return refused.response()
    if as_image:
        return await _drawn(request, body, detections, timing)
    body_json = {"prediction": [d.to_json() for d in detections]}
    return web.json_response(body_json, dumps=strict_dumps)


async def _drawn(
    request: web.Request, body: bytes, detections: list[Detection], timing: ServerTiming
) -> web.Response:
    """The image with its detections drawn, as ``image/jpeg``."""
    app = request.app
    # Full-resolution decoding, drawing and encoding take tens of milliseconds
    # for a photo: on the preprocessing pool, never on the event loop.
    try:
        jpeg = await asyncio.get_running_loop().run_in_executor(
            app[POOL_KEY], render_jpeg, body, detections, app[SETTINGS_KEY].max_image_pixels
        )
    except ImageTooLarge as exc:
        return json_error(413, str(exc))
    except ImageError as exc:
        return json_error(400, str(exc))
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


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: the model is loaded, warmed, not failing, and the batcher accepts work.

    While every replica's last forward pass failed, the answer is 503 with the
    reason, and a probe forward pass (at most one a second) finds out when
    the device works again.
    """
    reason = not_ready_reason(request.app)
    if reason is not None:
        return json_error(503, reason)
    return web.json_response(
        {"status": "ready", "model": str(request.app[SETTINGS_KEY].model_prefix)}
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text exposition (behind the API key when METRICS_REQUIRE_KEY is true)."""
    if request.app[SETTINGS_KEY].metrics_require_key and not authorized(request):
        return unauthorized()
    body = request.app[METRICS_KEY].render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
    return response


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's HTTP errors into JSON bodies and unexpected faults into a 500."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[SETTINGS_KEY].max_body_bytes
        response = json_error(413, f"the body is larger than {limit} bytes")
        # A chunked body over the limit: close rather than read (and discard) the rest.
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
        message = {404: f"not found: {request.path}", 405: f"method {request.method} not allowed"}
        return json_error(exc.status, message.get(exc.status, exc.reason), headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return json_error(500, "internal error")


@web.middleware
async def _metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    metrics = request.app[METRICS_KEY]
    name = route_name(request)
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        # The client went away before its answer (nginx's "499 client closed request").
        metrics.requests.labels(route=name, status="499").inc()
        raise
    metrics.requests.labels(route=name, status=str(response.status)).inc()
    if name in request.app[DETECTION_ROUTES_KEY] and request.method == "POST":
        # The entry point may be "/", where GET serves the page: time detections only.
        metrics.request_latency.observe(time.perf_counter() - started)
    return response
