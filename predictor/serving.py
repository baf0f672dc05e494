"""What every detection protocol shares: one path from a JPEG body to detections.

The original contract (``POST /predict``, `predictor.app`) and the Open
Inference Protocol v2 (`predictor.v2`) differ only in how a request is framed
and an answer encoded. Everything between is here, so that both keep the same
rules: the API key and the declared body size judged from the headers,
admission to the bounded queue (503 when full or shutting down), decoding on
the preprocessing pool, the ``REQUEST_TIMEOUT_MS`` deadline (504), a failed
forward pass (500), and the metrics of each. The application's state (settings,
batcher, replicas, pool) is reached through the keys defined here.

Refusals are raised as `Refused`, which carries the JSON error answer; both
protocols answer errors as ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web

from predictor.batching import (
    Admission,
    Batcher,
    BatchFailed,
    DeadlineExceeded,
    Overloaded,
    ShuttingDown,
)
from predictor.config import Settings
from predictor.imaging import ImageError, ImageTooLarge, PreparedImage, prepare
from predictor.metrics import Metrics
from predictor.model import Detection, Detector, RawDetections, to_detections

RETRY_AFTER_S = 1
UNAUTHORIZED = "missing or invalid API key (send Authorization: Bearer <key>)"
# /ready runs a forward pass of its own at most this often while the model is
# failing, so that it notices recovery when no traffic would tell it.
READY_PROBE_INTERVAL_S = 1.0

SETTINGS_KEY = web.AppKey("settings", Settings)
METRICS_KEY = web.AppKey("metrics", Metrics)
BATCHER_KEY: web.AppKey[Batcher[PreparedImage, RawDetections]] = web.AppKey("batcher")
DETECTORS_KEY: web.AppKey[list[Detector]] = web.AppKey("detectors")
POOL_KEY = web.AppKey("preprocess_pool", ThreadPoolExecutor)
# Canonical paths of the routes whose POSTs are detection requests: their
# latency is what predictor_request_duration_seconds measures.
DETECTION_ROUTES_KEY: web.AppKey[set[str]] = web.AppKey("detection_routes")

Admitted = Admission[PreparedImage, RawDetections]


class Refused(Exception):
    """The request gets no detections; ``response`` is its JSON error answer."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers

    def response(self) -> web.Response:
        """The ``{"error": ...}`` answer."""
        return json_error(self.status, self.message, headers=self.headers)


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The error body of every protocol here: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status, headers=headers)


def strict_dumps(value: Any) -> str:
    """Compact JSON that refuses NaN and infinities instead of emitting invalid JSON."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


class ServerTiming:
    """Durations of the steps of one request, for the ``Server-Timing`` header."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._last = self.started
        self._steps: list[tuple[str, float]] = []

    def step(self, name: str) -> None:
        """Record that step ``name`` ended now (it began where the last one ended)."""
        now = time.perf_counter()
        self._steps.append((name, now - self._last))
        self._last = now

    def header(self) -> str:
        """E.g. ``read;dur=0.2, decode;dur=3.1, infer;dur=41.0, total;dur=44.5`` (ms)."""
        total = time.perf_counter() - self.started
        steps = [*self._steps, ("total", total)]
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in steps)


TimedHandler = Callable[[web.Request, ServerTiming], Awaitable[web.Response]]


def with_server_timing(
    handler: TimedHandler,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler that times ``handler``'s steps into a ``Server-Timing`` header."""

    @functools.wraps(handler)
    async def timed(request: web.Request) -> web.Response:
        timing = ServerTiming()
        response = await handler(request, timing)
        response.headers["Server-Timing"] = timing.header()
        return response

    return timed


# ------------------------------------------------------------------ access and limits


def authorized(request: web.Request) -> bool:
    """True when no API key is set, or the request carries it as a Bearer token.

    The comparison takes the same time wherever the first difference is, so
    that the key cannot be guessed a character at a time from the timings.
    """
    key = request.app[SETTINGS_KEY].api_key
    if key is None:
        return True
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode(), key.encode())


def unauthorized() -> web.Response:
    """401 with the challenge a client needs to know which credentials to send."""
    return json_error(401, UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="predictor"'})


def refuse_from_headers(request: web.Request) -> web.Response | None:
    """401 without the API key, 413 for a declared body over the limit; else None.

    Both are decided from the headers alone: the body is not read, and the
    connection is closed after the answer so that it is not read later either.
    """
    if not authorized(request):
        response = unauthorized()
    else:
        limit = request.app[SETTINGS_KEY].max_body_bytes
        if request.content_length is None or request.content_length <= limit:
            return None
        response = json_error(413, f"the body is larger than {limit} bytes")
    response.force_close()
    return response


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer ``Expect: 100-continue`` with the final refusal when the headers already earn one.

    A client that asks before sending a large body (curl does above 1 MiB)
    then never sends it. Otherwise: "100 Continue", as aiohttp would.
    """
    refusal = refuse_from_headers(request)
    if refusal is None:
        if request.headers.get("Expect", "").lower() != "100-continue":
            refusal = json_error(417, "only Expect: 100-continue is understood")
            refusal.force_close()
        elif request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            # What was just written is not part of the answer's size.
            request.writer.output_size = 0
            return None
        else:
            return None
    refusal.headers["Server-Timing"] = ServerTiming().header()
    request.app[METRICS_KEY].requests.labels(
        route=route_name(request), status=str(refusal.status)
    ).inc()
    return refusal


def route_name(request: web.Request) -> str:
    """The metrics' ``route`` label: the route's pattern, not the request's path.

    E.g. ``/v2/models/{name}/infer`` whatever the name, so that the label's values stay few.
    """
    route = request.match_info.route.resource
    return route.canonical if route is not None else "unmatched"


# ------------------------------------------------------------------ the detection path


def deadline_from_now(app: web.Application) -> float:
    """The `time.monotonic` moment by which an image arriving now must reach its forward pass."""
    return time.monotonic() + app[SETTINGS_KEY].request_timeout_ms / 1000.0


def admit(app: web.Application, count: int = 1) -> list[Admitted]:
    """Places in the queue for ``count`` images, all or none; else `Refused` (503).

    All at once, so that a request of several images is either wholly admitted
    or refused before any of its images is decoded.
    """
    batcher = app[BATCHER_KEY]
    admissions: list[Admitted] = []
    try:
        for _ in range(count):
            admissions.append(batcher.admit())
    except (Overloaded, ShuttingDown) as exc:
        for admission in admissions:
            admission.release()
        raise _unavailable(exc) from None
    return admissions


async def detect(
    app: web.Application,
    admission: Admitted,
    body: bytes,
    deadline: float,
    threshold: float,
    timing: ServerTiming | None = None,
) -> list[Detection]:
    """Decode ``body``, run it through a batch, and keep the detections above ``threshold``.

    ``admission`` is this image's place in the queue (from `admit`), given
    back whatever happens. Raises `Refused`: 400 or 413 for the image, 504 when
    ``deadline`` passes before its forward pass begins, 500 when that pass
    fails, 503 when the server stops first. ``timing`` gets the ``decode`` and
    ``infer`` steps.
    """
    settings = app[SETTINGS_KEY]
    loop = asyncio.get_running_loop()
    with admission:
        try:
            # Waiting for a decoding thread counts against the deadline too;
            # an image whose deadline passed before its turn is not decoded.
            image = await asyncio.wait_for(
                loop.run_in_executor(
                    app[POOL_KEY],
                    _prepare_before,
                    deadline,
                    body,
                    settings.model_edge,
                    settings.max_image_pixels,
                ),
                timeout=max(0.0, deadline - time.monotonic()),
            )
        except ImageTooLarge as exc:
            raise Refused(413, str(exc)) from None
        except ImageError as exc:
            raise Refused(400, str(exc)) from None
        except (TimeoutError, DeadlineExceeded):
            # The batcher counts the images that time out in its queue; these never got there.
            app[METRICS_KEY].deadline_exceeded.inc()
            raise _timed_out(app, "the image was not decoded in time") from None
        except asyncio.CancelledError:
            # The client went away while its image waited to be decoded (the batcher
            # counts those that leave its queue): nothing more is done for it.
            app[METRICS_KEY].abandoned.inc()
            raise
        if timing is not None:
            timing.step("decode")
        try:
            raw = await admission.infer(image, deadline)
        except DeadlineExceeded as exc:
            raise _timed_out(app, str(exc)) from None
        except BatchFailed as exc:
            raise Refused(500, f"inference failed: {exc}") from None
        except ShuttingDown as exc:
            raise _unavailable(exc) from None
        if timing is not None:
            timing.step("infer")
    detector = app[DETECTORS_KEY][0]
    return to_detections(
        raw, image.width, image.height, settings.model_edge, detector.classes, threshold
    )


async def detect_each(
    app: web.Application, bodies: Sequence[bytes], threshold: float
) -> list[list[Detection]]:
    """`detect` for several images at once: each goes through the batcher on its own.

    Admitted together (or refused with 503 together), decoded in parallel, and
    batched with whatever else is queued. When any image is refused, the first
    such image's refusal is raised, its message naming the image.
    """
    deadline = deadline_from_now(app)
    admissions = admit(app, len(bodies))
    try:
        outcomes = await asyncio.gather(
            *(
                detect(app, admission, body, deadline, threshold)
                for admission, body in zip(admissions, bodies, strict=True)
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
        if isinstance(outcome, Refused):
            raise Refused(
                outcome.status,
                f"image {index + 1} of {len(bodies)}: {outcome.message}",
                outcome.headers,
            )
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


def _prepare_before(deadline: float, body: bytes, edge: int, max_pixels: int) -> PreparedImage:
    """`prepare`, unless the deadline passed while the image waited for this thread."""
    if time.monotonic() >= deadline:
        raise DeadlineExceeded("the deadline passed before decoding began")
    return prepare(body, edge, max_pixels)


def _unavailable(reason: Exception) -> Refused:
    """503 with Retry-After: the client may come back shortly."""
    return Refused(503, str(reason), headers={"Retry-After": str(RETRY_AFTER_S)})


def _timed_out(app: web.Application, reason: str) -> Refused:
    """504: the request's REQUEST_TIMEOUT_MS passed before its forward pass began."""
    limit = app[SETTINGS_KEY].request_timeout_ms
    return Refused(504, f"timed out after REQUEST_TIMEOUT_MS={limit:g}: {reason}")


# ------------------------------------------------------------------ readiness


class ReadyProbe:
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


PROBE_KEY = web.AppKey("ready_probe", ReadyProbe)


def not_ready_reason(app: web.Application) -> str | None:
    """None when the model is loaded, warmed, not failing and accepting work; else why not.

    While every replica's last forward pass failed, a probe forward pass (at
    most one a second) finds out when the device works again.
    """
    batcher = app[BATCHER_KEY]
    if not batcher.running:
        return "not ready: the server is starting or shutting down"
    if not batcher.healthy:
        app[PROBE_KEY].start(batcher)
        return f"not ready: the model is failing ({batcher.failure_reason})"
    return None
