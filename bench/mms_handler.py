"""MXNet Model Server handler for `make bench-compare`: our checkpoint, our preprocessing.

MMS imports this module inside its Python worker (the venv under
``bench/.work/mms-venv``), finds its one class, calls ``initialize(context)``
once and then ``handle(data, context)`` with each batch that MMS's own
batching (``batch_size``, ``max_batch_delay``) collected: one dict per
request, the raw body under ``body``. It must answer a list of the same
length.

Decoding, preprocessing and the box mapping are `predictor`'s own (imported
from the repository named in ``handler_config.json`` beside this file); the
checkpoint runs as MXNet's documentation shows (`bench.plain_model`), or
through predictor's own model code when the configuration says
``"model_code": "predictor"``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CONFIG_FILE = "handler_config.json"
MAX_PIXELS = 50_000_000
THRESHOLD = 0.5


class SSDHandler:
    """One model replica in one MMS worker."""

    def __init__(self) -> None:
        self.detector: Any = None
        self.edge = 0

    def initialize(self, context: Any) -> None:
        """Load and warm the checkpoint packed in the model folder."""
        model_dir = Path(context.system_properties["model_dir"])
        config = json.loads((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        # The worker runs MMS's venv: predictor comes from the repository itself.
        sys.path.insert(0, config["repo_root"])
        from bench.plain_model import load_baseline_model

        self.edge = int(config["edge"])
        self.detector = load_baseline_model(
            config.get("model_code", "plain"),
            model_dir / config["prefix_name"],
            self.edge,
            int(config["batch_size"]),
        )

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[str]:
        """Detections for each request of the batch, as the contract's JSON."""
        from predictor.detections import to_detections
        from predictor.errors import ImageError
        from predictor.runtime.imaging import prepare

        answers: list[str | None] = [None] * len(data)
        images = []
        for index, request in enumerate(data):
            body = request.get("body") or request.get("data") or b""
            if isinstance(body, str):
                body = body.encode("latin-1")
            try:
                images.append(
                    (index, prepare(bytes(body), self.detector.preprocessing, MAX_PIXELS))
                )
            except ImageError as exc:
                answers[index] = json.dumps({"error": str(exc)})
        if images:
            outputs = self.detector.forward([image.tensor for _, image in images])
            for (index, image), raw in zip(images, outputs, strict=True):
                detections = to_detections(raw, image.placement, self.detector.classes, THRESHOLD)
                answers[index] = json.dumps({"prediction": [d.to_json() for d in detections]})
        return [answer or "{}" for answer in answers]
