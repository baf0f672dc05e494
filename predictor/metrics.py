"""Prometheus metrics of one server instance.

Each `Metrics` owns its registry (rather than the process-global default), so
several servers in one process, as in tests, do not share counters.
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
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "predictor_batch_size",
            "Images per forward pass.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "predictor_inference_duration_seconds",
            "Duration of one batched forward pass on the device.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "predictor_queue_depth",
            "Images admitted and not yet in a forward pass.",
            registry=self.registry,
        )
        self.rejected = Counter(
            "predictor_rejected",
            "Images refused because the queue was full.",
            registry=self.registry,
        )
        self.inference_failures = Counter(
            "predictor_inference_failures",
            "Forward passes that raised an error.",
            registry=self.registry,
        )
        self.deadline_exceeded = Counter(
            "predictor_deadline_exceeded",
            "Images answered 504: no forward pass began within REQUEST_TIMEOUT_MS.",
            registry=self.registry,
        )
        self.abandoned = Counter(
            "predictor_abandoned",
            "Images dropped before their forward pass (or their decoding) because the client "
            "went away.",
            registry=self.registry,
        )
        self.replica_healthy = Gauge(
            "predictor_replica_healthy",
            "1 while the replica's most recent forward pass succeeded, else 0.",
            ["replica"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)


__all__ = ["PROMETHEUS_CONTENT_TYPE", "Metrics"]
