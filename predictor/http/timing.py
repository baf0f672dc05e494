"""The ``Server-Timing`` header: where a detection request's time went."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from aiohttp import web

from predictor.errors import PredictorError
from predictor.http.errors import error_response
from predictor.service.service import StepTimes

SERVER_TIMING = "Server-Timing"

TimedHandler = Callable[[web.Request, StepTimes], Awaitable[web.Response]]


def server_timing_header(times: StepTimes) -> str:
    """E.g. ``read;dur=0.2, decode;dur=3.1, infer;dur=41.0, total;dur=44.5`` (ms)."""
    steps = [*times.steps, ("total", times.total())]
    return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in steps)


def with_server_timing(handler: TimedHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler that times ``handler``'s steps into a ``Server-Timing`` header.

    Domain errors raised by ``handler`` are answered here (not by the error
    middleware), so that refusals carry the header too.
    """

    @functools.wraps(handler)
    async def timed(request: web.Request) -> web.Response:
        times = StepTimes()
        try:
            response = await handler(request, times)
        except PredictorError as error:
            response = error_response(error)
        response.headers[SERVER_TIMING] = server_timing_header(times)
        return response

    return timed
