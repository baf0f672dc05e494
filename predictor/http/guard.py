"""What is decided from a request's headers alone: the API key, the body size, 100-continue.

These checks run before the body is read (even before ``Expect:
100-continue`` lets the client send it), so that a refused request costs the
server a few hundred bytes.
"""

from __future__ import annotations

import asyncio
import hmac

from aiohttp import web

from predictor.errors import RequestTimeout
from predictor.http.errors import json_error, too_large
from predictor.http.timing import SERVER_TIMING, server_timing_header
from predictor.service.metrics import Metrics
from predictor.service.service import StepTimes

UNAUTHORIZED = "missing or invalid API key (send Authorization: Bearer <key>)"
# The model a detection request went to, for the metrics of its answer.
MODEL_KEY = web.RequestKey("model", str)


def route_name(request: web.Request) -> str:
    """The metrics' ``route`` label: the route's pattern, not the request's path.

    E.g. ``/v2/models/{name}/infer`` whatever the name, so that the label's values stay few.
    """
    route = request.match_info.route.resource
    return route.canonical if route is not None else "unmatched"


class RequestGuard:
    """The API key and body limit of detection requests."""

    def __init__(
        self,
        api_key: str | None,
        max_body_bytes: int,
        metrics: Metrics,
        body_timeout_s: float = 60.0,
    ) -> None:
        self._api_key = api_key
        self.max_body_bytes = max_body_bytes
        self._metrics = metrics
        self.body_timeout_s = body_timeout_s

    async def read_body(self, request: web.Request) -> bytes:
        """The whole body, which must arrive within ``BODY_TIMEOUT_S``; `RequestTimeout` if not.

        aiohttp waits for a body without limit; a client that stops sending
        (or trickles a byte now and then) would hold its connection and
        handler for ever. The deadline counts from the end of the headers;
        its 408 closes the connection.
        """
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await self._read_whole(request)
        except TimeoutError:
            raise RequestTimeout(
                f"the body did not arrive within {self.body_timeout_s:g} s (BODY_TIMEOUT_S)"
            ) from None

    async def _read_whole(self, request: web.Request) -> bytes:
        """The body as one ``bytes``; `HTTPRequestEntityTooLarge` over the limit.

        The pieces the stream hands over are joined once. aiohttp's
        ``request.read()`` copies them twice: into a growing bytearray
        (reallocated as it grows), then that into bytes. On the
        event loop, copying was a quarter of the loop's own CPU time per request
        (``perf``, 16 clients sending the benchmark's photos).
        """
        stream = request.content
        # Let the whole body gather in the stream's buffer (as ``request.read()`` does),
        # rather than pausing the socket at every 128 KiB the handler has not taken yet.
        stream.set_read_chunk_size(self.max_body_bytes)
        chunks: list[bytes] = []
        size = 0
        while chunk := await stream.readany():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=self.max_body_bytes, actual_size=size)
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def authorized(self, request: web.Request) -> bool:
        """True when no API key is set, or the request carries it as a Bearer token.

        The comparison takes the same time wherever the first difference is, so
        that the key cannot be guessed a character at a time from the timings.
        """
        if self._api_key is None:
            return True
        scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(token.strip().encode(), self._api_key.encode())

    @staticmethod
    def unauthorized() -> web.Response:
        """401 with the challenge a client needs to know which credentials to send."""
        return json_error(
            401, UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="predictor"'}
        )

    def refuse_from_headers(self, request: web.Request) -> web.Response | None:
        """401 without the API key, 413 for a declared body over the limit; else None.

        The connection is closed after such an answer, so that the body is not
        read later either.
        """
        if not self.authorized(request):
            response = self.unauthorized()
            response.force_close()
            return response
        length = request.content_length
        if length is None or length <= self.max_body_bytes:
            return None
        return too_large(self.max_body_bytes)

    async def expect_continue(self, request: web.Request) -> web.StreamResponse | None:
        """Answer ``Expect: 100-continue`` with the final refusal when the headers earn one.

        A client that asks before sending a large body (curl does above 1 MiB)
        then never sends it. Otherwise: "100 Continue", as aiohttp would.
        """
        refusal = self.refuse_from_headers(request)
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
        refusal.headers[SERVER_TIMING] = server_timing_header(StepTimes())
        self._metrics.requests.labels(route=route_name(request), status=str(refusal.status)).inc()
        return refusal
