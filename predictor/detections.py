"""What a detection is, and how network outputs become detections in the original image.

Plain types and numpy only: anything that names a detection (the HTTP layer,
the v2 codec, tests) can import this without MXNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class RawDetections:
    """One image's network output, in network-input pixels, unfiltered."""

    class_ids: FloatArray  # (N,)
    scores: FloatArray  # (N,)
    boxes: FloatArray  # (N, 4) xmin, ymin, xmax, ymax


@dataclass(frozen=True)
class Placement:
    """Where the original image lies in the network input, to map boxes back.

    A point ``x`` of the input is ``(x - offset_x) * scale_x`` in the original
    image (and likewise for ``y``). A stretched image has no offset; a
    letterboxed one is offset by its padding.
    """

    width: int  # the original image, as displayed (EXIF orientation applied)
    height: int
    scale_x: float  # original pixels per input pixel
    scale_y: float
    offset_x: float = 0.0
    offset_y: float = 0.0

    @classmethod
    def stretched(cls, width: int, height: int, input_width: int, input_height: int) -> Placement:
        """The whole image stretched to the input."""
        return cls(width, height, width / input_width, height / input_height)


@dataclass(frozen=True)
class Detection:
    """One object found in an image, in pixels of the original image."""

    object_class: str
    probability: float
    x: int
    y: int
    width: int
    height: int

    def to_json(self) -> dict[str, Any]:
        """The contract's field names."""
        return {
            "objectClass": self.object_class,
            "probability": self.probability,
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
        }


def to_detections(
    raw: RawDetections,
    placement: Placement,
    classes: Sequence[str],
    threshold: float,
) -> list[Detection]:
    """Keep confident, finite detections and map them to the original image's pixels.

    Boxes are clipped to the image; ``x``, ``y`` is the top-left corner. An
    untrained or broken network emits NaN or infinite values: those rows are
    dropped here so that they never reach a client.
    """
    ids, scores, boxes = raw.class_ids, raw.scores, raw.boxes
    with np.errstate(invalid="ignore"):
        keep = (
            np.isfinite(scores)
            & (scores > threshold)
            & np.isfinite(ids)
            & (ids >= 0)
            & (ids < len(classes))
            & np.isfinite(boxes).all(axis=1)
        )
    order = [int(i) for i in np.flatnonzero(keep)]
    order.sort(key=lambda i: -float(scores[i]))
    width, height = placement.width, placement.height
    detections = []
    for i in order:
        xmin, ymin, xmax, ymax = (float(v) for v in boxes[i])
        left = _clip(round((xmin - placement.offset_x) * placement.scale_x), width)
        top = _clip(round((ymin - placement.offset_y) * placement.scale_y), height)
        right = _clip(round((xmax - placement.offset_x) * placement.scale_x), width)
        bottom = _clip(round((ymax - placement.offset_y) * placement.scale_y), height)
        if right <= left or bottom <= top:
            continue
        detections.append(
            Detection(
                object_class=classes[int(ids[i])],
                # float32's shortest repr, e.g. 0.9959417 rather than 0.995941698551178.
                probability=float(str(scores[i])),
                x=left,
                y=top,
                width=right - left,
                height=bottom - top,
            )
        )
    return detections


def _clip(value: int, limit: int) -> int:
    return max(0, min(limit, value))


__all__ = ["Detection", "FloatArray", "Placement", "RawDetections", "to_detections"]
