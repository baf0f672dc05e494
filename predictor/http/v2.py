"""The Open Inference Protocol v2 routes (KServe v2, Triton's HTTP/REST API).

Beside the original contract, so that KServe, Triton clients and any other
v2 client can use the server unchanged::

    GET  /v2                                         server metadata
    GET  /v2/health/live                             200 while the process answers
    GET  /v2/health/ready                            200 when every model is ready, else 503
    GET  /v2/models/NAME[/versions/1]                model metadata
    GET  /v2/models/NAME[/versions/1]/ready          200 when ready, else 503
    POST /v2/models/NAME[/versions/1]/infer          detection
    GET  /v2/models/NAME[/versions/1]/config         Triton's model configuration
    GET  /v2/models/NAME[/versions/1]/stats          Triton's statistics of the model
    GET  /v2/models/stats                            ... of every model
    POST /v2/repository/index                        every model and its state
    POST /v2/repository/models/NAME/load, /unload    400: models are loaded once, at start

NAME is one of the served models (``MODELS``, or ``MODEL_NAME``); any other
name is a 404. The tensors and their encodings are in `predictor.http.v2_codec`.
The request's ``parameters.threshold`` (0..1) plays the part of
``?threshold=``; ``outputs`` selects and orders outputs; ``binary_data``
asks for binary outputs. Each image goes through the same detection service
as a ``/predict`` body: API key, ``MAX_BODY_BYTES`` for the whole request,
admission (503), ``REQUEST_TIMEOUT_MS`` (504), failed forward pass (500).
Errors are ``{"error": "..."}``, which is also the v2 error shape.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from predictor.errors import ModelNotFound
from predictor.http.errors import json_error
from predictor.http.guard import MODEL_KEY, RequestGuard
from predictor.http.timing import with_server_timing
from predictor.http.v2_codec import (
    HEADER_LENGTH,
    MODEL_VERSION,
    PARSE_INLINE_MAX_BYTES,
    ServingConfig,
    V2RequestError,
    encode_infer_response,
    model_config,
    model_metadata,
    parse_index_request,
    parse_infer_request,
    server_metadata,
)
from predictor.service.registry import ModelRegistry
from predictor.service.service import DetectionService, StepTimes

MODEL_ROUTES = ("/v2/models/{name}", "/v2/models/{name}/versions/{version}")


class V2Routes:
    """The v2 endpoints over the served models."""

    def __init__(
        self, registry: ModelRegistry, guard: RequestGuard, threshold: float, max_images: int
    ) -> None:
        self._registry = registry
        self._guard = guard
        self._threshold = threshold
        self._max_images = max_images

    def add_to(self, router: web.UrlDispatcher) -> list[str]:
        """Register the routes; returns the patterns of those that are detection requests."""
        router.add_get("/v2", self.server_metadata)
        router.add_get("/v2/health/live", self.live)
        router.add_get("/v2/health/ready", self.server_ready)
        # Before /v2/models/{name}, which would take "stats" for a model's name.
        router.add_get("/v2/models/stats", self.all_statistics)
        detection_routes = []
        for model in MODEL_ROUTES:
            router.add_get(model, self.model_metadata)
            router.add_get(model + "/config", self.model_config)
            router.add_get(model + "/stats", self.model_statistics)
            router.add_get(model + "/ready", self.model_ready)
            router.add_post(
                model + "/infer",
                with_server_timing(self.infer),
                expect_handler=self._guard.expect_continue,
            )
            detection_routes.append(model + "/infer")
        router.add_post("/v2/repository/index", self.repository_index)
        router.add_post(
            "/v2/repository/models/{name}/{action:load|unload}", self.repository_control
        )
        return detection_routes

    def _model(self, request: web.Request) -> DetectionService:
        """The model the path names (and its one version); `ModelNotFound` otherwise."""
        service = self._registry.get(request.match_info["name"])
        version = request.match_info.get("version")
        if version is not None and version != MODEL_VERSION:
            raise ModelNotFound(
                f"model {service.name!r} has no version {version!r}; "
                f"its version is {MODEL_VERSION!r}"
            )
        return service

    async def server_metadata(self, request: web.Request) -> web.Response:
        """``GET /v2``."""
        return web.json_response(server_metadata())

    async def live(self, request: web.Request) -> web.Response:
        """``GET /v2/health/live``: the process answers (as ``/health``)."""
        return web.json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        """``GET /v2/health/ready``: 200 when ``/ready`` is, else 503 with the reason."""
        reason = self._registry.not_ready_reason()
        if reason is not None:
            return json_error(503, reason)
        return web.json_response({"ready": True})

    async def model_metadata(self, request: web.Request) -> web.Response:
        """``GET /v2/models/NAME``."""
        return web.json_response(model_metadata(self._model(request).name))

    async def model_config(self, request: web.Request) -> web.Response:
        """``GET /v2/models/NAME/config``: Triton's model configuration, as the model is served."""
        service = self._model(request)
        settings = service.settings
        serving = ServingConfig(
            max_images=self._max_images,
            batch_max_size=service.batcher.max_batch_size,
            batch_max_delay_ms=settings.batch_max_delay_ms,
            queue_max=settings.queue_max,
            request_timeout_ms=settings.request_timeout_ms,
            devices=tuple(replica.device for replica in service.replicas),
            parameters={
                # Triton has no such setting: the longer wait under a backlog.
                "batch_backlog_delay_ms": f"{settings.batch_backlog_delay_ms:g}",
                "source": service.source,
                "classes": ",".join(service.classes),
                "preprocessing": json.dumps(service.preprocessing.to_json()),
            },
        )
        return web.json_response(model_config(service.name, serving))

    async def model_statistics(self, request: web.Request) -> web.Response:
        """``GET /v2/models/NAME/stats``: the model's counters, as Triton reports them."""
        service = self._model(request)
        stats = service.metrics.statistics.to_json(service.name, MODEL_VERSION)
        return web.json_response({"model_stats": [stats]})

    async def all_statistics(self, request: web.Request) -> web.Response:
        """``GET /v2/models/stats``: every model's counters."""
        return web.json_response(
            {
                "model_stats": [
                    s.metrics.statistics.to_json(s.name, MODEL_VERSION) for s in self._registry
                ]
            }
        )

    async def model_ready(self, request: web.Request) -> web.Response:
        """``GET /v2/models/NAME/ready``: 200 when the model answers requests, else 503."""
        service = self._model(request)
        reason = service.not_ready_reason()
        if reason is not None:
            return json_error(503, reason)
        return web.json_response({"name": service.name, "ready": True})

    async def repository_index(self, request: web.Request) -> web.Response:
        """``POST /v2/repository/index``: every model, its version and state.

        The optional body ``{"ready": true}`` lists only models that are ready.
        """
        only_ready = parse_index_request(await self._guard.read_body(request))
        entries: list[dict[str, Any]] = []
        for service in self._registry:
            reason = service.not_ready_reason()
            if only_ready and reason is not None:
                continue
            entry: dict[str, Any] = {
                "name": service.name,
                "version": MODEL_VERSION,
                "state": "READY" if reason is None else "UNAVAILABLE",
            }
            if reason is not None:
                entry["reason"] = reason
            entries.append(entry)
        return web.json_response(entries)

    async def repository_control(self, request: web.Request) -> web.Response:
        """``POST /v2/repository/models/NAME/load`` or ``/unload``: refused, with the reason."""
        action = request.match_info["action"]
        return json_error(
            400,
            f"cannot {action} models: this server loads its models once, at start, from "
            "MODELS or MODEL_PREFIX (change them and restart to serve others)",
        )

    async def infer(self, request: web.Request, timing: StepTimes) -> web.Response:
        """``POST /v2/models/NAME/infer``: detect objects in the request's images."""
        refusal = self._guard.refuse_from_headers(request)
        if refusal is not None:
            return refusal
        service = self._model(request)
        request[MODEL_KEY] = service.name
        if request.query:
            raise V2RequestError(
                f"unknown query parameter {sorted(request.query)[0]!r}: v2 inference takes "
                "its parameters in the request's 'parameters'"
            )
        body = await self._guard.read_body(request)
        header_length = request.headers.get(HEADER_LENGTH)
        if len(body) > PARSE_INLINE_MAX_BYTES and header_length is None:
            # A large JSON request's base64 is decoded off the event loop.
            parsed = await asyncio.to_thread(
                parse_infer_request, body, header_length, self._max_images
            )
        else:
            parsed = parse_infer_request(body, header_length, self._max_images)
        timing.step("read")
        threshold = self._threshold if parsed.threshold is None else parsed.threshold
        detections = await service.detect(parsed.images, threshold, timing)
        payload, json_length = encode_infer_response(
            service.name, parsed.request_id, detections, parsed.outputs
        )
        if json_length is None:
            return web.Response(body=payload, content_type="application/json")
        return web.Response(
            body=payload,
            content_type="application/octet-stream",
            headers={HEADER_LENGTH: str(json_length)},
        )
