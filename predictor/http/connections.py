"""Slow and abusive clients: a header deadline and a cap on open connections.

aiohttp (3.14) protects a connection with one timer, ``keepalive_timeout``:
it closes a connection that is idle, or whose next request's headers are not
complete, that long after its last answer (or after it opened). That timer is
also the keep-alive idle timeout, which must outlast a load balancer's own
(often 60 s), so on its own it lets a slowloris client that trickles its
first request's headers hold a connection for over a minute, and a few
thousand such clients hold every file descriptor. aiohttp has neither a
separate header-read timeout nor a connection limit, so both are here, in a
protocol that wraps aiohttp's per-connection `RequestHandler`:

- ``HEADER_TIMEOUT_S``: a new connection that has not sent the complete
  headers of its first request in that time is closed (no answer: a client
  that sends no headers reads none either, as nginx does). The end of the
  headers is the first blank line of the stream (``LF [CR] LF``), which is
  exact for the first request: nothing but headers precedes it. Later
  requests on a keep-alive connection are covered by aiohttp's keep-alive
  timer (``KEEPALIVE_TIMEOUT_S``), which also closes a connection whose next
  request's headers are incomplete.
- ``MAX_CONNECTIONS``: a connection beyond the cap gets a 503 written
  straight to the socket (``Retry-After``, ``Connection: close``) and is
  closed once the client has read it (at most `REFUSAL_LINGER_S` later); it
  never reaches aiohttp, so refusing costs a few hundred bytes.

The body's deadline (``BODY_TIMEOUT_S``, 408) is the handlers' business:
`predictor.http.guard.RequestGuard.read_body`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from aiohttp import web

from predictor.http.errors import RETRY_AFTER_S

log = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = "too many open connections; retry shortly"
# How long a refused connection may stay open to read its 503.
REFUSAL_LINGER_S = 2.0


def _refusal() -> bytes:
    body = json.dumps({"error": TOO_MANY_CONNECTIONS}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Retry-After: {RETRY_AFTER_S}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_REFUSAL = _refusal()


class ConnectionLimits:
    """The protocol factory handed to the event loop: counts connections, arms the header timer.

    ``handler_factory`` makes aiohttp's protocol for one connection (the
    runner's `web.Server`).
    """

    def __init__(
        self,
        handler_factory: Callable[[], asyncio.Protocol],
        header_timeout_s: float,
        max_connections: int,
    ) -> None:
        self._handler_factory = handler_factory
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.open = 0
        self.refused_total = 0
        self.header_timeouts_total = 0

    def __call__(self) -> asyncio.Protocol:
        return _GuardedConnection(self)

    def admit(self) -> asyncio.Protocol | None:
        """aiohttp's protocol for a new connection, or None when the cap is reached."""
        if self.open >= self.max_connections:
            self.refused_total += 1
            return None
        self.open += 1
        return self._handler_factory()

    def release(self) -> None:
        """An admitted connection is gone."""
        self.open -= 1


class _GuardedConnection(asyncio.Protocol):
    """One connection: aiohttp's handler inside, the header deadline around it."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self._limits = limits
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        # The last bytes seen, so that a blank line split across reads is found.
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._inner = self._limits.admit()
        if self._inner is None:
            # Answer, then a lingering close: closing a socket with unread data
            # (the request the client sent meanwhile) would reset the connection
            # and destroy the answer before the client reads it. So: end our side,
            # drop what comes, and abort after a short while at the latest.
            transport.write(_REFUSAL)
            if transport.can_write_eof():
                transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.abort)
            return
        self._timer = asyncio.get_running_loop().call_later(
            self._limits.header_timeout_s, self._headers_too_slow
        )
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # refused: whatever the client sends is dropped with the connection
        if self._timer is not None:
            seen = self._tail + data
            if b"\n\n" in seen or b"\n\r\n" in seen:
                self._cancel_timer()
            else:
                self._tail = seen[-2:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._inner is None:
            if self._transport is not None:
                self._transport.close()  # a refused client has read its answer
            return None
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._inner is not None:
            inner, self._inner = self._inner, None
            self._limits.release()
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_too_slow(self) -> None:
        self._timer = None
        self._limits.header_timeouts_total += 1
        log.debug("closing a connection that sent no complete request headers in time")
        if self._transport is not None:
            # abort: no lingering over a client that is not reading anyway.
            self._transport.abort()


class LimitedTCPSite(web.BaseSite):
    """`web.TCPSite` with `ConnectionLimits` between the listening socket and aiohttp.

    A site of the runner like aiohttp's own (the runner closes it on cleanup
    and lists its addresses); it only puts the factory in between.
    """

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        header_timeout_s: float,
        max_connections: int,
        backlog: int = 128,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        server = runner.server
        assert server is not None, "call runner.setup() first"
        self.limits = ConnectionLimits(server, header_timeout_s, max_connections)

    @property
    def name(self) -> str:
        """The URL it listens on (as aiohttp's sites name themselves)."""
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Listen, and register with the runner."""
        await super().start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.limits, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
