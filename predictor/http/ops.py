"""The operations endpoints: ``/health`` (liveness), ``/ready`` (readiness), ``/metrics``."""

from __future__ import annotations

from aiohttp import web

from predictor.http.errors import json_error
from predictor.http.guard import RequestGuard
from predictor.service.metrics import PROMETHEUS_CONTENT_TYPE, Metrics
from predictor.service.registry import ModelRegistry


class OpsRoutes:
    """Health, readiness and metrics of the whole server."""

    def __init__(
        self,
        registry: ModelRegistry,
        metrics: Metrics,
        guard: RequestGuard,
        metrics_require_key: bool,
    ) -> None:
        self._registry = registry
        self._metrics = metrics
        self._guard = guard
        self._metrics_require_key = metrics_require_key

    def add_to(self, router: web.UrlDispatcher) -> None:
        """Register ``/health``, ``/ready`` and ``/metrics``."""
        router.add_get("/health", self.health)
        router.add_get("/ready", self.ready)
        router.add_get("/metrics", self.metrics)

    async def health(self, request: web.Request) -> web.Response:
        """Liveness: the process answers."""
        return web.json_response({"status": "alive"})

    async def ready(self, request: web.Request) -> web.Response:
        """Readiness: every model is loaded, warmed, not failing, and admits work.

        While every replica of a model failed its last forward pass, the answer
        is 503 with the reason, and a probe forward pass (at most one a second)
        finds out when the device works again.
        """
        reason = self._registry.not_ready_reason()
        if reason is not None:
            return json_error(503, reason)
        default = self._registry.default
        return web.json_response(
            {
                "status": "ready",
                "model": default.source,
                "models": {service.name: service.source for service in self._registry},
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text exposition (behind the API key when METRICS_REQUIRE_KEY is true)."""
        if self._metrics_require_key and not self._guard.authorized(request):
            return self._guard.unauthorized()
        response = web.Response(body=self._metrics.render())
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response
