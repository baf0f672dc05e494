"""Per-model inference statistics, counted as Triton counts them.

Triton's statistics extension (``GET /v2/models/NAME/stats``) reports, per
model, cumulative counts and nanoseconds of: successful and failed requests
(whole request), the time images waited in the queue for their forward pass,
input preparation (here: JPEG decoding and preprocessing), the forward pass
itself, and output preparation (mapping to detections). Tools such as
perf_analyzer read them to split latency into its parts. These are the real
counters of this server, updated as requests are served; Prometheus metrics
(`predictor.service.metrics`) keep the distributions.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Duration:
    """A count and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """Count ``count`` more, which took ``seconds`` in all."""
        self.count += count
        self.ns += int(seconds * 1e9)

    def to_json(self) -> dict[str, int]:
        """``{"count", "ns"}``."""
        return {"count": self.count, "ns": self.ns}


@dataclass
class _BatchStats:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class ModelStatistics:
    """One model's counters; safe to update from the event loop and the forward threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0  # images through a forward pass
        self.execution_count = 0  # forward passes
        self.last_inference_ms = 0  # wall clock, milliseconds since the epoch
        self._batches: dict[int, _BatchStats] = {}

    def record_request(self, seconds: float, ok: bool) -> None:
        """A request ended, answered (``ok``) or refused, after ``seconds``."""
        with self._lock:
            (self.success if ok else self.fail).add(seconds)

    def record_image(
        self, input_s: float, queued_s: float, infer_s: float, output_s: float
    ) -> None:
        """One image went all the way: decoded in ``input_s``, waited ``queued_s`` for its
        forward pass, which took ``infer_s``, and became detections in ``output_s``.

        All four at once, as Triton counts a request when it completes: readers
        (perf_analyzer) expect the compute counts to be equal at any moment.
        """
        with self._lock:
            self.inference_count += 1
            self.last_inference_ms = int(time.time() * 1000)
            self.compute_input.add(input_s)
            self.queue.add(queued_s)
            self.compute_infer.add(infer_s)
            self.compute_output.add(output_s)

    def record_batch(self, size: int, forward_s: float) -> None:
        """A forward pass of ``size`` images took ``forward_s``."""
        with self._lock:
            self.execution_count += 1
            batch = self._batches.setdefault(size, _BatchStats())
            batch.compute_infer.add(forward_s)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        """One entry of Triton's ``model_stats`` list."""
        with self._lock:
            return {
                "name": name,
                "version": version,
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    "success": self.success.to_json(),
                    "fail": self.fail.to_json(),
                    "queue": self.queue.to_json(),
                    "compute_input": self.compute_input.to_json(),
                    "compute_infer": self.compute_infer.to_json(),
                    "compute_output": self.compute_output.to_json(),
                    # No response cache here: Triton reports zeros then.
                    "cache_hit": Duration().to_json(),
                    "cache_miss": Duration().to_json(),
                },
                "batch_stats": [
                    {
                        "batch_size": size,
                        "compute_input": batch.compute_input.to_json(),
                        "compute_infer": batch.compute_infer.to_json(),
                        "compute_output": batch.compute_output.to_json(),
                    }
                    for size, batch in sorted(self._batches.items())
                ],
            }
