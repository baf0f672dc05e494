"""The one table from domain errors to HTTP answers, and the JSON error body.

Every error answer of every route is ``{"error": "..."}`` (the original
service's shape, and the v2 protocol's). Domain errors (`predictor.errors`)
get their status here and nowhere else; aiohttp's own HTTP errors become the
same JSON; anything unexpected is logged and answered 500, and the server
keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from predictor.errors import (
    DeadlineExceeded,
    ImageTooLarge,
    InferenceError,
    InvalidInput,
    ModelNotFound,
    PredictorError,
    RequestTimeout,
    Unavailable,
)

log = logging.getLogger(__name__)

# Seconds a client is told to wait before retrying a 503.
RETRY_AFTER_S = 1

# Most specific first: the first class in an error's MRO that is listed decides.
STATUS_BY_ERROR: dict[type[PredictorError], int] = {
    ImageTooLarge: 413,
    RequestTimeout: 408,
    InvalidInput: 400,
    ModelNotFound: 404,
    Unavailable: 503,
    DeadlineExceeded: 504,
    InferenceError: 500,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The error body of every protocol here: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status, headers=headers)


def status_of(error: PredictorError) -> int:
    """The HTTP status that answers ``error`` (500 for a domain error not in the table)."""
    for cls in type(error).__mro__:
        status = STATUS_BY_ERROR.get(cls)
        if status is not None:
            return status
    return 500


def error_response(error: PredictorError) -> web.Response:
    """The JSON answer to a domain error, with ``Retry-After`` on a 503.

    After a 408 the connection is closed: the rest of a body that stopped
    arriving is not waited for.
    """
    status = status_of(error)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    response = json_error(status, str(error), headers=headers)
    if status == 408:
        response.force_close()
    return response


def too_large(limit: int) -> web.Response:
    """413 for a body over ``MAX_BODY_BYTES``; the connection is closed, not read on."""
    response = json_error(413, f"the body is larger than {limit} bytes")
    response.force_close()
    return response


def error_middleware(max_body_bytes: int) -> Middleware:
    """Domain errors and aiohttp's HTTP errors as JSON; unexpected faults as a logged 500."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except PredictorError as error:
            return error_response(error)
        except web.HTTPRequestEntityTooLarge:
            # A chunked body over the limit: close rather than read (and discard) the rest.
            return too_large(max_body_bytes)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {
                k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")
            }
            message = {
                404: f"not found: {request.path}",
                405: f"method {request.method} not allowed",
            }
            return json_error(exc.status, message.get(exc.status, exc.reason), headers=headers)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return json_error(500, "internal error")

    return middleware
