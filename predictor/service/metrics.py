"""Prometheus metrics of one server instance.

Each `Metrics` owns its registry (rather than the process-global default), so
several servers in one process, as in tests, do not share counters. Every
metric of a model's queue, batches and replicas carries a ``model`` label;
`Metrics.for_model` gives a model's service the series that are its own.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as PROMETHEUS_CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from predictor.service.stats import ModelStatistics

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class Metrics:
    """Request, batching and process metrics, exported in Prometheus text format."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.requests = Counter(
            "predictor_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "predictor_request_duration_seconds",
            "Time from receiving a detection request to answering it.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "predictor_batch_size",
            "Images per forward pass.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "predictor_inference_duration_seconds",
            "Duration of one batched forward pass on the device.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "predictor_queue_depth",
            "Images admitted and not yet in a forward pass.",
            ["model"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "predictor_rejected",
            "Images refused because the queue was full.",
            ["model"],
            registry=self.registry,
        )
        self.inference_failures = Counter(
            "predictor_inference_failures",
            "Forward passes that raised an error.",
            ["model"],
            registry=self.registry,
        )
        self.deadline_exceeded = Counter(
            "predictor_deadline_exceeded",
            "Images answered 504: no forward pass began within REQUEST_TIMEOUT_MS.",
            ["model"],
            registry=self.registry,
        )
        self.abandoned = Counter(
            "predictor_abandoned",
            "Images dropped before their forward pass (or their decoding) because the client "
            "went away.",
            ["model"],
            registry=self.registry,
        )
        self.memory_trims = Counter(
            "predictor_memory_trims",
            "Periodic passes that collected cyclic garbage and gave the C heap's free pages "
            "back to the system (MEMORY_TRIM_INTERVAL_S).",
            registry=self.registry,
        )
        self.replica_healthy = Gauge(
            "predictor_replica_healthy",
            "1 while the replica's most recent forward pass succeeded, else 0.",
            ["model", "replica"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)

    def for_model(self, model: str) -> ModelMetrics:
        """The series of one model, its label bound."""
        return ModelMetrics(self, model)


class ModelMetrics:
    """One model's series of `Metrics`: what its batcher and service record."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.model = model
        self._metrics = metrics
        self.batch_size = metrics.batch_size.labels(model=model)
        self.inference_latency = metrics.inference_latency.labels(model=model)
        self.queue_depth = metrics.queue_depth.labels(model=model)
        self.rejected = metrics.rejected.labels(model=model)
        self.inference_failures = metrics.inference_failures.labels(model=model)
        self.deadline_exceeded = metrics.deadline_exceeded.labels(model=model)
        self.abandoned = metrics.abandoned.labels(model=model)
        # Triton-style cumulative counters of the same model (the v2 statistics extension).
        self.statistics = ModelStatistics()

    def record_batch(self, size: int, forward_s: float) -> None:
        """A forward pass of ``size`` images took ``forward_s``."""
        self.batch_size.observe(size)
        self.inference_latency.observe(forward_s)
        self.statistics.record_batch(size, forward_s)

    def replica_healthy(self, replica: str) -> Gauge:
        """The health gauge of one of the model's replicas."""
        return self._metrics.replica_healthy.labels(model=self.model, replica=replica)


__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics", "ModelMetrics"]
