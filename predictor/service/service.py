"""One model's detection service: JPEG bytes in, detections out, no HTTP.

A `DetectionService` owns what serving one model takes: its class names and
declared preprocessing, its replicas behind one `Batcher` (its own bounded
queue), the deadline of each request, readiness, and its metrics. Every
protocol (`predictor.http`) calls `DetectionService.detect` and gets either
detections or a domain error (`predictor.errors`), which it answers in its
own way:

- `Overloaded` / `ShuttingDown` (`Unavailable`): the queue is full or the
  server stops; nothing of the request was decoded;
- `ImageError` / `ImageTooLarge`: the bytes are not a usable image;
- `DeadlineExceeded`: ``request_timeout_ms`` passed, counted from the call,
  before the image's forward pass began (decoding included); it is never computed;
- `InferenceError`: the forward pass failed.

Images are decoded on the shared preprocessing pool, batched with whatever
else this model has queued, and mapped back to the original image's pixels.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from predictor.checkpoint import Preprocessing
from predictor.config import Device
from predictor.detections import Detection, FloatArray, Placement, RawDetections, to_detections
from predictor.errors import (
    DeadlineExceeded,
    InferenceError,
    PredictorError,
    Unavailable,
)
from predictor.runtime.imaging import PreparedImage, prepare
from predictor.service.batching import Admission, Batcher, BatchFailed
from predictor.service.metrics import ModelMetrics

log = logging.getLogger(__name__)

# /ready runs a forward pass of its own at most this often while the model is
# failing, so that it notices recovery when no traffic would tell it.
READY_PROBE_INTERVAL_S = 1.0

Admitted = Admission[PreparedImage, RawDetections]


class Replica(Protocol):
    """What a service needs of a loaded model replica (`predictor.runtime.model.Detector`)."""

    classes: list[str]
    preprocessing: Preprocessing
    max_batch: int

    def forward(self, tensors: Sequence[FloatArray]) -> list[RawDetections]:
        """Raw detections of up to ``max_batch`` preprocessed images."""
        ...

    @property
    def device(self) -> Device:
        """The device the replica runs on (its text names it in logs and metrics labels)."""
        ...


@dataclass(frozen=True)
class ServiceSettings:
    """The serving limits of one model (from `predictor.config.Settings`)."""

    batch_max_size: int = 8
    batch_max_delay_ms: float = 5.0
    batch_backlog_delay_ms: float = 50.0
    queue_max: int = 64
    max_image_pixels: int = 50_000_000
    request_timeout_ms: float = 10_000.0
    shutdown_grace_s: float = 8.0


class StepTimes:
    """Durations of the steps of one request (read, decode, infer, ...), in order."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._last = self.started
        self.steps: list[tuple[str, float]] = []

    def step(self, name: str) -> None:
        """Record that step ``name`` ended now (it began where the last one ended)."""
        now = time.perf_counter()
        self.steps.append((name, now - self._last))
        self._last = now

    def total(self) -> float:
        """Seconds since the request began."""
        return time.perf_counter() - self.started


class DetectionService:
    """One model, ready to answer `detect` from any protocol."""

    def __init__(
        self,
        name: str,
        replicas: Sequence[Replica],
        settings: ServiceSettings,
        pool: Executor,
        metrics: ModelMetrics,
        source: str = "",
    ) -> None:
        if not replicas:
            raise ValueError(f"model {name!r}: no replicas")
        first = replicas[0]
        self.name = name
        self.source = source  # where the model came from (its checkpoint prefix), for /ready
        self.classes: list[str] = list(first.classes)
        self.preprocessing = first.preprocessing
        self.replicas = list(replicas)
        self.settings = settings
        self.metrics = metrics
        self._pool = pool
        self.batcher: Batcher[PreparedImage, RawDetections] = Batcher(
            [_forward_of(replica) for replica in replicas],
            max_batch_size=min(settings.batch_max_size, *(r.max_batch for r in replicas)),
            max_delay_s=settings.batch_max_delay_ms / 1000.0,
            backlog_delay_s=settings.batch_backlog_delay_ms / 1000.0,
            queue_max=settings.queue_max,
            metrics=metrics,
            names=[str(replica.device) for replica in replicas],
        )
        shape = self.preprocessing.input_shape
        width, height = self.preprocessing.width, self.preprocessing.height
        self._probe = _ReadyProbe(
            PreparedImage(
                np.zeros(shape, dtype=np.float32),
                Placement.stretched(width, height, width, height),
            )
        )

    # ------------------------------------------------------------------ life cycle

    def start(self) -> None:
        """Start the replicas' workers; the service then admits requests."""
        self.batcher.start()

    async def stop(self) -> None:
        """Admit nothing more; finish admitted images for up to the grace period."""
        self._probe.cancel()
        await self.batcher.stop(grace_s=self.settings.shutdown_grace_s)

    def not_ready_reason(self) -> str | None:
        """None when the model is loaded, warmed, not failing and admitting; else why not.

        While every replica's last forward pass failed, a probe forward pass (at
        most one a second) finds out when the device works again.
        """
        if not self.batcher.running:
            return "not ready: the server is starting or shutting down"
        if not self.batcher.healthy:
            self._probe.start(self.batcher)
            return f"not ready: the model is failing ({self.batcher.failure_reason})"
        return None

    # ------------------------------------------------------------------ detection

    async def detect(
        self,
        images: Sequence[bytes],
        threshold: float,
        timing: StepTimes | None = None,
    ) -> list[list[Detection]]:
        """The detections above ``threshold`` in each of ``images`` (encoded JPEGs).

        The images are admitted together or refused together (`Unavailable`),
        before any is decoded; each then goes through the batcher on its own.
        When any image fails, the first failure is raised, its message naming
        the image when there are several. ``timing`` gets the ``decode`` and
        ``infer`` steps of a single image, or one ``detect`` step.
        """
        started = time.monotonic()
        try:
            results = await self._detect(images, threshold, started, timing)
        except PredictorError:
            self.metrics.statistics.record_request(time.monotonic() - started, ok=False)
            raise
        self.metrics.statistics.record_request(time.monotonic() - started, ok=True)
        return results

    async def _detect(
        self,
        images: Sequence[bytes],
        threshold: float,
        started: float,
        timing: StepTimes | None,
    ) -> list[list[Detection]]:
        deadline = started + self.settings.request_timeout_ms / 1000.0
        admissions = self._admit(len(images))
        if len(images) == 1:
            return [await self._detect_one(admissions[0], images[0], deadline, threshold, timing)]
        try:
            outcomes = await asyncio.gather(
                *(
                    self._detect_one(admission, body, deadline, threshold)
                    for admission, body in zip(admissions, images, strict=True)
                ),
                return_exceptions=True,
            )
        finally:
            # A detection cancelled before it began (the client went away) never
            # entered its admission: give every place back (releasing is idempotent).
            for admission in admissions:
                admission.release()
        results: list[list[Detection]] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, PredictorError):
                raise type(outcome)(f"image {index + 1} of {len(images)}: {outcome}")
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        if timing is not None:
            timing.step("detect")
        return results

    def _admit(self, count: int) -> list[Admitted]:
        """Places in the queue for ``count`` images, all or none; else `Unavailable`."""
        admissions: list[Admitted] = []
        try:
            for _ in range(count):
                admissions.append(self.batcher.admit())
        except Unavailable:
            for admission in admissions:
                admission.release()
            raise
        return admissions

    async def _detect_one(
        self,
        admission: Admitted,
        body: bytes,
        deadline: float,
        threshold: float,
        timing: StepTimes | None = None,
    ) -> list[Detection]:
        """Decode ``body``, run it through a batch, keep the detections above ``threshold``."""
        loop = asyncio.get_running_loop()
        with admission:
            try:
                # Waiting for a decoding thread counts against the deadline too;
                # an image whose deadline passed before its turn is not decoded.
                image, decode_s = await asyncio.wait_for(
                    loop.run_in_executor(
                        self._pool,
                        self._prepare_before,
                        deadline,
                        body,
                    ),
                    timeout=max(0.0, deadline - time.monotonic()),
                )
            except (TimeoutError, DeadlineExceeded):
                # The batcher counts the images that time out in its queue; these never got there.
                self.metrics.deadline_exceeded.inc()
                raise self._timed_out("the image was not decoded in time") from None
            except asyncio.CancelledError:
                # The client went away while its image waited to be decoded (the batcher
                # counts those that leave its queue): nothing more is done for it.
                self.metrics.abandoned.inc()
                raise
            if timing is not None:
                timing.step("decode")
            try:
                raw = await admission.infer(image, deadline)
            except DeadlineExceeded as exc:
                raise self._timed_out(str(exc)) from None
            except BatchFailed as exc:
                raise InferenceError(f"inference failed: {exc}") from None
            if timing is not None:
                timing.step("infer")
        mapping = time.perf_counter()
        found = to_detections(raw, image.placement, self.classes, threshold)
        self.metrics.statistics.record_image(
            decode_s, admission.queued_s, admission.forward_s, time.perf_counter() - mapping
        )
        return found

    def _prepare_before(self, deadline: float, body: bytes) -> tuple[PreparedImage, float]:
        """`prepare` and its duration, unless the deadline passed while the image waited."""
        if time.monotonic() >= deadline:
            raise DeadlineExceeded("the deadline passed before decoding began")
        started = time.perf_counter()
        image = prepare(body, self.preprocessing, self.settings.max_image_pixels)
        return image, time.perf_counter() - started

    def _timed_out(self, reason: str) -> DeadlineExceeded:
        limit = self.settings.request_timeout_ms
        return DeadlineExceeded(f"timed out after REQUEST_TIMEOUT_MS={limit:g}: {reason}")


def _forward_of(replica: Replica) -> Callable[[Sequence[PreparedImage]], list[RawDetections]]:
    """A batcher replica: preprocessed images in, raw detections out."""

    def forward(images: Sequence[PreparedImage]) -> list[RawDetections]:
        return replica.forward([image.tensor for image in images])

    return forward


class _ReadyProbe:
    """At most one readiness probe at a time, and not more often than the interval."""

    def __init__(self, item: PreparedImage) -> None:
        self.item = item
        self.task: asyncio.Task[bool] | None = None
        self.last = -math.inf

    def start(self, batcher: Batcher[PreparedImage, RawDetections]) -> None:
        """Run a forward pass of the probe image, unless one runs or ran less than a second ago."""
        now = time.monotonic()
        if (self.task is not None and not self.task.done()) or now - self.last < (
            READY_PROBE_INTERVAL_S
        ):
            return
        self.last = now
        self.task = asyncio.get_running_loop().create_task(batcher.probe(self.item))

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()


__all__ = ["DetectionService", "Replica", "ServiceSettings", "StepTimes"]
