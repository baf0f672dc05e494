"""Detection over files and folders without the server (`predictor predict`).

Decoding runs on a thread pool a few batches ahead of the forward pass, so a
large photo archive keeps the device busy; results stream out in input order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from predictor.detections import Detection, to_detections
from predictor.errors import ImageError
from predictor.runtime.imaging import PreparedImage, prepare
from predictor.runtime.model import Detector
from predictor.runtime.render import draw_detections
from predictor.runtime.threads import preprocess_pool


@dataclass(frozen=True)
class FileResult:
    """Detections for one file, or why it could not be read."""

    path: Path
    detections: tuple[Detection, ...] = ()
    error: str | None = None

    def to_json_line(self) -> str:
        """One JSON object per line: path plus the contract's prediction list, or an error."""
        if self.error is not None:
            return json.dumps({"path": str(self.path), "error": self.error})
        prediction = [d.to_json() for d in self.detections]
        return json.dumps({"path": str(self.path), "prediction": prediction}, allow_nan=False)


def detect_files(
    files: Sequence[Path],
    detector: Detector,
    threshold: float,
    max_image_pixels: int,
    workers: int,
    nice: int = 0,
) -> Iterator[FileResult]:
    """Detect objects in every file, batching forwards; yields results in input order.

    ``nice``: how much lower the decoding threads' CPU priority is (`predictor.runtime.threads`).
    """
    batch_size = detector.max_batch
    with preprocess_pool(workers, nice, "decode") as pool:

        def load(path: Path) -> PreparedImage:
            data = path.read_bytes()
            return prepare(data, detector.preprocessing, max_image_pixels, require_jpeg=False)

        ahead = batch_size * 3
        futures: list[tuple[Path, Future[PreparedImage]]] = []
        index = 0
        while index < len(files) or futures:
            while index < len(files) and len(futures) < ahead:
                futures.append((files[index], pool.submit(load, files[index])))
                index += 1
            chunk, futures = futures[:batch_size], futures[batch_size:]
            ready: list[tuple[Path, PreparedImage]] = []
            failed: dict[Path, str] = {}
            for path, future in chunk:
                try:
                    ready.append((path, future.result()))
                except (OSError, ImageError) as exc:
                    failed[path] = str(exc)
            outputs = detector.forward([image.tensor for _, image in ready]) if ready else []
            by_path = {
                path: FileResult(
                    path,
                    tuple(to_detections(raw, image.placement, detector.classes, threshold)),
                )
                for (path, image), raw in zip(ready, outputs, strict=True)
            }
            for path, _ in chunk:
                yield by_path.get(path) or FileResult(path, error=failed[path])


def write_drawing(result: FileResult, source_root: Path | None, out_dir: Path) -> Path | None:
    """Save the image of ``result`` with its boxes drawn, under ``out_dir``."""
    if result.error is not None:
        return None
    pixels = cv2.imread(str(result.path), cv2.IMREAD_COLOR)
    if pixels is None:
        return None
    image = np.asarray(pixels, dtype=np.uint8)
    relative = result.path.relative_to(source_root) if source_root else Path(result.path.name)
    target = (out_dir / relative).with_suffix(".jpg")
    target.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(target), draw_detections(image, result.detections))
    return target
