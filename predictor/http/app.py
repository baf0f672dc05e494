"""The HTTP application: where the protocols, the models and the settings meet.

`create_app` is the composition root of the server. It builds one
`DetectionService` per model (its own batcher, queue and metrics series) into
a `ModelRegistry`, and hands the registry, the request guard and the settings
each protocol needs to that protocol's routes:

- the original contract (`predictor.http.predict`), at ``REST_ENTRY_POINT``;
- the Open Inference Protocol v2 (`predictor.http.v2`), under ``/v2``;
- the operations endpoints (`predictor.http.ops`): ``/health``, ``/ready``, ``/metrics``;
- the web page and ``/info`` (`predictor.http.page`);
- ``/openapi.json``, the OpenAPI 3.1 description of all of them (`predictor.http.openapi`).

Every answer is JSON except /metrics, the page and a drawn detection.
Anything that is not a good request gets a 4xx with ``{"error": "..."}``
(`predictor.http.errors` holds the one table of statuses); an unexpected
fault gets a 500 with the same shape and is logged, and the server keeps
serving. Detection routes report where their time went in a
``Server-Timing`` header.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Middleware

from predictor.config import Settings
from predictor.http.errors import Handler, error_middleware
from predictor.http.guard import MODEL_KEY, RequestGuard, route_name
from predictor.http.openapi import OPENAPI_PATH, openapi_description
from predictor.http.ops import OpsRoutes
from predictor.http.page import PageRoutes
from predictor.http.predict import PredictRoute
from predictor.http.v2 import V2Routes
from predictor.runtime.memory import release_free_memory
from predictor.runtime.threads import preprocess_pool
from predictor.service.metrics import Metrics
from predictor.service.registry import ModelRegistry
from predictor.service.service import DetectionService, Replica, ServiceSettings

# The models the application serves; the runner reads it to report at shutdown.
REGISTRY_KEY = web.AppKey("registry", ModelRegistry)
METRICS_KEY = web.AppKey("metrics", Metrics)
TRIM_KEY = web.AppKey("trim", asyncio.Task[None])


def create_app(
    settings: Settings,
    models: Mapping[str, Sequence[Replica]] | Sequence[Replica],
) -> web.Application:
    """Build the application around already loaded and warmed replicas, by model name.

    A plain sequence of replicas is the one model ``settings`` names.
    """
    if not isinstance(models, Mapping):
        models = {settings.served_model_name: models}
    sources = {spec.name: str(spec.prefix) for spec in settings.models}
    metrics = Metrics()
    pool = preprocess_pool(settings.preprocess_workers, settings.preprocess_nice)
    service_settings = ServiceSettings(
        batch_max_size=settings.batch_max_size,
        batch_max_delay_ms=settings.batch_max_delay_ms,
        batch_backlog_delay_ms=settings.batch_backlog_delay_ms,
        queue_max=settings.queue_max,
        max_image_pixels=settings.max_image_pixels,
        request_timeout_ms=settings.request_timeout_ms,
        shutdown_grace_s=settings.shutdown_grace_s,
    )
    registry = ModelRegistry(
        [
            DetectionService(
                name,
                replicas,
                service_settings,
                pool,
                metrics.for_model(name),
                source=sources.get(name, name),
            )
            for name, replicas in models.items()
        ]
    )
    guard = RequestGuard(
        settings.api_key, settings.max_body_bytes, metrics, settings.body_timeout_s
    )
    detection_routes = {settings.entry_point}
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            _metrics_middleware(metrics, registry, detection_routes),
            error_middleware(settings.max_body_bytes),
        ],
    )
    app[REGISTRY_KEY] = registry
    app[METRICS_KEY] = metrics
    PredictRoute(
        registry, guard, settings.probability_threshold, settings.max_image_pixels, pool
    ).add_to(app.router, settings.entry_point)
    OpsRoutes(registry, metrics, guard, settings.metrics_require_key).add_to(app.router)
    page = PageRoutes(settings, registry)
    page.add_to(app.router)
    v2 = V2Routes(registry, guard, settings.probability_threshold, settings.queue_max)
    detection_routes.update(v2.add_to(app.router))
    description = openapi_description(
        settings.entry_point,
        [service.name for service in registry],
        page.static_names,
        api_key_set=settings.api_key is not None,
        metrics_require_key=settings.metrics_require_key,
    )

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(description)

    app.router.add_get(OPENAPI_PATH, openapi)

    async def start(app: web.Application) -> None:
        registry.start()
        if settings.memory_trim_interval_s > 0:
            app[TRIM_KEY] = asyncio.create_task(
                _trim_periodically(settings.memory_trim_interval_s, metrics)
            )

    async def stop(app: web.Application) -> None:
        # aiohttp has closed the listening socket by now; admitted images finish
        # (for up to the grace period) before it waits for their handlers.
        await registry.stop()

    async def stop_pool(app: web.Application) -> None:
        if TRIM_KEY in app:
            app[TRIM_KEY].cancel()
        _shutdown(pool)

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    app.on_cleanup.append(stop_pool)
    return app


async def _trim_periodically(interval_s: float, metrics: Metrics) -> None:
    """Give the allocator's free pages back every ``interval_s`` (predictor/runtime/memory.py).

    Each pass is counted (``predictor_memory_trims_total``), so that a
    benchmark can tell when the server has trimmed since the load stopped.
    """
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(release_free_memory)
        metrics.memory_trims.inc()


def _shutdown(pool: ThreadPoolExecutor) -> None:
    pool.shutdown(wait=False, cancel_futures=True)


def _metrics_middleware(
    metrics: Metrics, registry: ModelRegistry, detection_routes: set[str]
) -> Middleware:
    """Count every answer by route and status; time detection requests by model."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        name = route_name(request)
        try:
            response = await handler(request)
        except asyncio.CancelledError:
            # The client went away before its answer (nginx's "499 client closed request").
            metrics.requests.labels(route=name, status="499").inc()
            raise
        metrics.requests.labels(route=name, status=str(response.status)).inc()
        if name in detection_routes and request.method == "POST":
            # The entry point may be "/", where GET serves the page: time detections only.
            model = request.get(MODEL_KEY, registry.default.name)
            metrics.request_latency.labels(model=model).observe(time.perf_counter() - started)
        return response

    return middleware
