"""The custom service of MXNet Model Server and TorchServe for `make bench-compare`.

TorchServe grew out of MMS and kept its custom-service API, so one handler
serves both: the server imports this module inside its Python worker (the
peer's venv under ``bench/.work``), finds its one class, calls
``initialize(context)`` once and then ``handle(data, context)`` with each
batch that the server's own batching (``batch_size``, ``max_batch_delay``)
collected: one dict per request, the raw body under ``body`` (or ``data``).
It answers a list of the same length.

The work is `bench.peer_handler.PeerDetector`'s, configured by the
``handler_config.json`` packed beside this file (checkpoint, view, decoder);
the repository it names is put on ``sys.path`` first.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CONFIG_FILE = "handler_config.json"


class SSDHandler:
    """One model replica in one worker of the server."""

    def __init__(self) -> None:
        self.detector: Any = None

    def initialize(self, context: Any) -> None:
        """Load and warm the checkpoint named by the configuration in the model folder."""
        config_path = Path(context.system_properties["model_dir"]) / CONFIG_FILE
        config = json.loads(config_path.read_text(encoding="utf-8"))
        # The worker runs the peer's venv: bench and predictor come from the repository itself.
        sys.path.insert(0, config["repo_root"])
        from bench.peer_handler import HandlerConfig, PeerDetector

        self.detector = PeerDetector(HandlerConfig.read(config_path))

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """Detections for each request of the batch, as the contract's JSON."""
        bodies = []
        for request in data:
            body = request.get("body") or request.get("data") or b""
            bodies.append(body.encode("latin-1") if isinstance(body, str) else bytes(body))
        return [json.dumps(answer) for answer in self.detector.detect(bodies)]
