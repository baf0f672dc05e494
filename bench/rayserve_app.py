"""The Ray Serve application of `make bench-compare`: the checkpoint behind ``@serve.batch``.

Built by `build` from a Serve config file (`bench.rayserve` writes it and
runs ``serve run``), inside Ray's venv. Written as Ray Serve's batching guide
writes a model deployment: the HTTP handler awaits a method decorated with
``@serve.batch``, which Serve calls with up to ``max_batch_size`` requests
collected for at most ``batch_wait_timeout_s``; both are set at start-up
with the setters that decorator provides. The JPEG is the raw request body,
the answer a dict that Serve sends as JSON.

Each batch goes to `bench.peer_handler.PeerDetector` (configured by a
`bench.peer_handler.HandlerConfig` file), whose ``as_deployed`` view decodes
as Ray Serve's image tutorials do (``PIL.Image.open``, then a bilinear resize).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from starlette.requests import Request


class SSDReplica:
    """One model replica; Serve runs ``num_replicas`` of them (the config file says how many)."""

    def __init__(self, config: str, batch_size: int, batch_wait_timeout_s: float) -> None:
        path = Path(config)
        sys.path.insert(0, json.loads(path.read_text(encoding="utf-8"))["repo_root"])
        from bench.peer_handler import HandlerConfig, PeerDetector

        self.detector = PeerDetector(HandlerConfig.read(path))
        self.detect_batch.set_max_batch_size(batch_size)
        self.detect_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch
    async def detect_batch(self, bodies: list[bytes]) -> list[dict[str, Any]]:
        """The contract's answer for each JPEG of the batch Serve collected."""
        answers: list[dict[str, Any]] = self.detector.detect(bodies)
        return answers

    async def __call__(self, request: Request) -> dict[str, Any]:
        """POST a JPEG, get its detections."""
        answer: dict[str, Any] = await self.detect_batch(await request.body())
        return answer


SSD = serve.deployment(name="SSD")(SSDReplica)


def build(args: dict[str, str]) -> Application:
    """The application of the Serve config file; ``args``: ``config`` (a handler configuration
    file), ``batch_size`` and ``batch_wait_timeout_s``."""
    return SSD.bind(args["config"], int(args["batch_size"]), float(args["batch_wait_timeout_s"]))
