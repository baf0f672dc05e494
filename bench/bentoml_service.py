"""The BentoML service of `make bench-compare`: the checkpoint behind BentoML's adaptive batching.

``bentoml serve bench.bentoml_service:SSD --arg config=FILE --arg workers=N``
inside BentoML's venv (`bench.bentoml_peer` does it). Written as BentoML's
documentation writes an image service (its YOLO example): a batchable API
taking a list of uploaded image files (``list[Annotated[Path,
ContentType("image/*")]]``, multipart/form-data field ``images``), with
``max_batch_size`` = the benchmark's batch size and the default
``max_latency_ms``; ``workers`` processes (one per core, what BentoML's docs
advise for a CPU-bound model). BentoML's adaptive batcher has no fixed
delay: it decides how long to wait from the latencies it observes.
BentoML refuses ``max_batch_size`` 1, so with a batch size of 1 the API is
not batchable (the same field, one file per call).

Each batch goes to `bench.peer_handler.PeerDetector` (configured by FILE, a
`bench.peer_handler.HandlerConfig`), whose ``as_deployed`` view decodes the
uploaded file as that example's model does (OpenCV, full size, then a
bilinear resize).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType

ARGS = bentoml.use_arguments()
CONFIG = Path(ARGS.config)
BATCH_SIZE = int(json.loads(CONFIG.read_text(encoding="utf-8"))["batch_size"])
TIMEOUT_S = 600

Image = Annotated[Path, ContentType("image/*")]


def _detector() -> Any:
    """The model replica of this worker (bench and predictor from the repository)."""
    config = json.loads(CONFIG.read_text(encoding="utf-8"))
    sys.path.insert(0, config["repo_root"])
    from bench.peer_handler import HandlerConfig, PeerDetector

    return PeerDetector(HandlerConfig.read(CONFIG))


@bentoml.service(workers=int(ARGS.workers), traffic={"timeout": TIMEOUT_S})
class SSD:
    """One model replica per worker process."""

    def __init__(self) -> None:
        self.detector = _detector()

    if BATCH_SIZE > 1:

        @bentoml.api(route="/predict", batchable=True, max_batch_size=BATCH_SIZE)
        def predict(self, images: list[Image]) -> list[dict[str, Any]]:
            """The contract's answer for each uploaded JPEG of the adaptive batch."""
            answers: list[dict[str, Any]] = self.detector.detect([p.read_bytes() for p in images])
            return answers

    else:

        @bentoml.api(route="/predict")
        def predict(self, images: Image) -> dict[str, Any]:
            """The contract's answer for one uploaded JPEG."""
            (answer,) = self.detector.detect([images.read_bytes()])
            return dict(answer)
