"""Running the HTTP application until SIGTERM or SIGINT, then draining."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

from predictor.app import create_app
from predictor.config import Settings
from predictor.model import Detector

log = logging.getLogger(__name__)


async def serve(settings: Settings, detectors: Sequence[Detector]) -> None:
    """Serve until a termination signal; then stop accepting and finish admitted work."""
    app = create_app(settings, detectors)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=1024)
    await site.start()
    for address in runner.addresses:
        host, port = address[0], address[1]
        log.info(
            "serving %s on http://%s:%d%s",
            settings.model_prefix,
            host if ":" not in host else f"[{host}]",
            port,
            settings.entry_point,
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
        log.info("termination signal received: draining")
    finally:
        # Closes the listening socket, waits for running handlers, then runs
        # on_shutdown (the batcher finishes admitted images) and on_cleanup.
        await runner.cleanup()
        log.info("stopped")
