"""Running the HTTP application until SIGTERM or SIGINT, then draining.

On the first SIGTERM or SIGINT the server stops accepting connections (the
listening socket is closed, idle keep-alive connections too), lets every
admitted image finish for up to ``SHUTDOWN_GRACE_S``, answers whatever still
waits after that with 503, and exits 0. A second signal exits at once
(code 1), for an operator who does not want to wait.

Connections go through `predictor.http.connections` (the header deadline
``HEADER_TIMEOUT_S`` and the cap ``MAX_CONNECTIONS``); an idle keep-alive
connection is closed after ``KEEPALIVE_TIMEOUT_S``.

Handlers are cancelled when their client disconnects (aiohttp's
``handler_cancellation``), which is how an abandoned request leaves its batch
before the forward pass.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping, Sequence

from aiohttp import web

from predictor.config import Settings
from predictor.http.app import REGISTRY_KEY, create_app
from predictor.http.connections import LimitedTCPSite
from predictor.service.service import Replica

log = logging.getLogger(__name__)

# After the admitted images are done, how long their handlers may take to
# write the answers (post-processing and, for drawn answers, encoding a JPEG).
ANSWER_FLUSH_S = 5.0
# After an early answer (413, 401) to a request whose body is still coming, the
# rest is read and thrown away for at most this long, so that the client gets
# to read the answer rather than a connection reset; then the connection is
# closed. (aiohttp's default is 10 s, time in which a fast client can push
# gigabytes.)
LINGER_S = 2.0
EXIT_ABORTED = 1


async def serve(settings: Settings, models: Mapping[str, Sequence[Replica]]) -> None:
    """Serve ``models`` (replicas by name, the default first) until a termination signal.

    Then stop accepting, and finish admitted work.
    """
    app = create_app(settings, models)
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=ANSWER_FLUSH_S,
        lingering_time=LINGER_S,
        keepalive_timeout=settings.keepalive_timeout_s,
    )
    await runner.setup()
    site = LimitedTCPSite(
        runner,
        settings.host,
        settings.port,
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
        backlog=1024,
    )
    await site.start()
    for address in runner.addresses:
        host, port = address[0], address[1]
        log.info(
            "serving %s on http://%s:%d%s",
            ", ".join(models),
            host if ":" not in host else f"[{host}]",
            port,
            settings.entry_point,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            log.warning("second %s: exiting without finishing admitted requests", signum.name)
            os._exit(EXIT_ABORTED)
        log.info(
            "%s received: draining (admitted requests have up to %g s)",
            signum.name,
            settings.shutdown_grace_s,
        )
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await stop.wait()
    finally:
        # Closes the listening socket and idle connections, then runs
        # on_shutdown (the batcher finishes admitted images, up to the grace
        # period), then waits for the handlers to write their answers.
        registry = app[REGISTRY_KEY]
        await runner.cleanup()
        log.info("stopped: %d detection requests admitted since start", registry.admitted_total)
