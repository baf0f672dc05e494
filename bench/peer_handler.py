"""What every peer server of `make bench-compare` runs for a batch, in either of the two views.

The peers (MXNet Model Server, TorchServe, BentoML, Ray Serve) each import a
thin adapter of their own (`bench.model_server_handler`,
`bench.bentoml_service`, `bench.rayserve_app`) inside their own virtualenv;
the adapter reads a `HandlerConfig` and hands each batch of JPEG bodies to
`PeerDetector.detect`. All of them run the checkpoint as MXNet documents it
(`bench.plain_model`, or predictor's own model code with ``model_code:
"predictor"``) and answer the contract's JSON. Two views:

``same_handler``
    predictor's own decoding and preprocessing (`predictor.runtime.imaging.prepare`,
    with its reduced-scale JPEG decoding), exactly as predictor does: only the
    serving machinery differs from predictor.
``as_deployed``
    the JPEG decoded at full size and resized by the library that the peer's
    own object-detection example uses (`DECODERS`), as a user of that server
    would write it; then the checkpoint's declared normalisation.

Both views map boxes to the original image with predictor's
`predictor.detections.to_detections` (cheap, and the same JSON for everyone).

This module must import in every peer's venv, which holds MXNet, numpy,
OpenCV and pylibjpeg at the project's pins and nothing of predictor's
serving stack: predictor itself is imported from the repository named in
the configuration, and Pillow only by the ``pil`` decoder.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.plain_model import BaselineModel
    from predictor.runtime.imaging import ImageBGR, PreparedImage

VIEWS = ("as_deployed", "same_handler")
# How each library decodes and resizes in the peers' own examples; see `decode_as_deployed`.
DECODERS = ("mxnet", "pil", "opencv")
CONFIG_FILE = "handler_config.json"
# What each replica prints once loaded and warmed, with its process id: the peers' own
# readiness checks answer as soon as the first of several replicas is up.
READY_LINE = "peer replica ready, pid"
READY_PATTERN = READY_LINE + r" (\d+)"
MAX_PIXELS = 50_000_000
THRESHOLD = 0.5


@dataclass(frozen=True)
class HandlerConfig:
    """Everything a peer's handler needs, written as JSON beside the model it serves."""

    repo_root: str  # put on sys.path: predictor and bench come from the repository
    # The checkpoint prefix (PREFIX-symbol.json, PREFIX-0000.params, synset.txt); in a
    # file, relative to the file's folder.
    prefix: str
    edge: int
    batch_size: int
    model_code: str = "plain"  # bench.plain_model.MODEL_CODES
    view: str = "same_handler"  # VIEWS
    decoder: str = "mxnet"  # DECODERS; used by the as_deployed view only

    def __post_init__(self) -> None:
        if self.view not in VIEWS:
            raise ValueError(f"view {self.view!r}: expected one of {VIEWS}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder {self.decoder!r}: expected one of {DECODERS}")

    def write(self, path: Path) -> None:
        """Save as JSON (a file the peer's handler reads at start-up)."""
        path.write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> HandlerConfig:
        """The configuration saved by `write`, its prefix resolved against the file's folder."""
        config = cls(**json.loads(path.read_text(encoding="utf-8")))
        return replace(config, prefix=str(path.parent / config.prefix))


class PeerDetector:
    """One model replica inside a peer's worker: loaded and warmed on construction."""

    def __init__(self, config: HandlerConfig) -> None:
        if config.repo_root not in sys.path:
            sys.path.insert(0, config.repo_root)
        from bench.plain_model import load_baseline_model

        self.config = config
        self.model: BaselineModel = load_baseline_model(
            config.model_code, Path(config.prefix), config.edge, config.batch_size
        )
        print(f"{READY_LINE} {os.getpid()}", flush=True)

    def prepare(self, body: bytes) -> PreparedImage:
        """One JPEG as the network's input, decoded the way this view decodes."""
        from predictor.runtime.imaging import prepare

        if self.config.view == "same_handler":
            return prepare(body, self.model.preprocessing, MAX_PIXELS)
        return self._as_deployed(body)

    def _as_deployed(self, body: bytes) -> PreparedImage:
        """Full-size decode and resize by the peer's library, then the declared normalisation."""
        from predictor.runtime.imaging import PreparedImage, preprocess

        p = self.model.preprocessing

        def target(width: int, height: int) -> tuple[int, int]:
            if p.resize == "stretch":
                return p.width, p.height
            fit = min(p.width / width, p.height / height)
            return max(1, round(width * fit)), max(1, round(height * fit))

        pixels, size = decode_as_deployed(body, self.config.decoder, target)
        # The pixels are already at the target size: preprocess() only places and normalises them.
        tensor, placement = preprocess(pixels, p, displayed=size)
        return PreparedImage(tensor, placement)

    def detect(self, bodies: Sequence[bytes]) -> list[dict[str, Any]]:
        """The contract's answer for each JPEG of a batch; an unusable one: ``{"error": ...}``."""
        from predictor.detections import to_detections

        answers: list[dict[str, Any]] = [{} for _ in bodies]
        images = []
        for index, body in enumerate(bodies):
            try:
                images.append((index, self.prepare(bytes(body))))
            except Exception as exc:  # each decoder raises its own types
                answers[index] = {"error": f"{type(exc).__name__}: {exc}"}
        if images:
            outputs = self.model.forward([image.tensor for _, image in images])
            for (index, image), raw in zip(images, outputs, strict=True):
                found = to_detections(raw, image.placement, self.model.classes, THRESHOLD)
                answers[index] = {"prediction": [d.to_json() for d in found]}
        return answers


def decode_as_deployed(
    body: bytes, decoder: str, target: Callable[[int, int], tuple[int, int]]
) -> tuple[ImageBGR, tuple[int, int]]:
    """Decode at full size, then resize to ``target(width, height)`` as the peers' examples do.

    - ``mxnet``: MMS's MXNet vision service template, ``mx.image.imdecode`` then
      ``mx.image.imresize`` (bilinear);
    - ``pil``: TorchServe's vision handlers and Ray Serve's image tutorials,
      ``PIL.Image.open`` then a bilinear ``resize`` (what torchvision's
      ``Resize`` does to a PIL image);
    - ``opencv``: BentoML's YOLO example, whose model reads the uploaded file
      with OpenCV, ``cv2.imdecode`` then ``cv2.resize`` (bilinear).

    Returns BGR uint8 pixels (the layout `predictor.runtime.imaging.preprocess`
    takes) and the decoded image's full (width, height).
    """
    import numpy as np

    if decoder == "mxnet":
        import mxnet as mx

        decoded = mx.image.imdecode(body)
        size = (int(decoded.shape[1]), int(decoded.shape[0]))
        rgb = mx.image.imresize(decoded, *target(*size), interp=1).asnumpy()
    elif decoder == "pil":
        from PIL import Image

        with Image.open(io.BytesIO(body)) as image:
            size = image.size
            rgb = np.asarray(image.convert("RGB").resize(target(*size), Image.Resampling.BILINEAR))
    elif decoder == "opencv":
        import cv2

        bgr = cv2.imdecode(np.frombuffer(body, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError("OpenCV could not decode the image")
        size = (int(bgr.shape[1]), int(bgr.shape[0]))
        resized = cv2.resize(bgr, target(*size), interpolation=cv2.INTER_LINEAR)
        return np.asarray(resized, dtype=np.uint8), size
    else:
        raise ValueError(f"decoder {decoder!r}: expected one of {DECODERS}")
    return np.ascontiguousarray(rgb[:, :, ::-1], dtype=np.uint8), size
