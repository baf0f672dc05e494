"""The sample photos, their annotated boxes, and preprocessing per a declaration.

The preprocessing here is the test's own small numpy/OpenCV reading of
``PREFIX-preprocess.json`` (the server has its own); what both must agree on
is the declaration.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from predictor.checkpoint import Preprocessing
from predictor.data.photos import sample_photo

BOXES_FILE = Path(__file__).with_name("photo_boxes.json")
PHOTOS = ("chelsea", "astronaut", "grace_hopper", "coffee", "motorcycle_left")

UInt8Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]


def photo_annotations() -> dict[str, dict[str, Any]]:
    """Photo name -> {"class", "box"} from photo_boxes.json."""
    data: dict[str, dict[str, Any]] = json.loads(BOXES_FILE.read_text(encoding="utf-8"))
    return {name: value for name, value in data.items() if not name.startswith("_")}


def load_photo(name: str) -> UInt8Image:
    """The photo as an RGB uint8 array (scikit-image and matplotlib sample data)."""
    return np.ascontiguousarray(sample_photo(name)[:, :, ::-1])


@dataclass(frozen=True)
class Placement:
    """Where the photo went on the network's canvas: scale and offset per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def to_original(self, box: FloatArray) -> FloatArray:
        """A canvas box (xmin, ymin, xmax, ymax) in the original photo's pixels."""
        xs = (box[[0, 2]] - self.offset_x) / self.scale_x
        ys = (box[[1, 3]] - self.offset_y) / self.scale_y
        return np.array([xs[0], ys[0], xs[1], ys[1]], dtype=np.float32)


def _interpolation(declared: str, width: int, height: int, new_w: int, new_h: int) -> int:
    grows_x, grows_y = new_w > width, new_h > height
    shrinks_x, shrinks_y = new_w < width, new_h < height
    if declared == "gluoncv":
        if grows_x and grows_y:
            return cv2.INTER_CUBIC
        if shrinks_x and shrinks_y:
            return cv2.INTER_AREA
        return cv2.INTER_LINEAR
    return cv2.INTER_AREA if shrinks_x or shrinks_y else cv2.INTER_LINEAR


def preprocess(image: UInt8Image, spec: Preprocessing) -> tuple[FloatArray, Placement]:
    """The network input (1, ...) for an RGB photo, and where the photo sits on it."""
    height, width = image.shape[:2]
    if spec.resize == "stretch":
        new_w, new_h = spec.width, spec.height
    else:
        scale = min(spec.width / width, spec.height / height)
        new_w, new_h = round(width * scale), round(height * scale)
    resized = cv2.resize(
        image,
        (new_w, new_h),
        interpolation=_interpolation(spec.interpolation, width, height, new_w, new_h),
    )
    if spec.resize == "letterbox":
        canvas = np.full((spec.height, spec.width, 3), spec.pad_value, dtype=np.float32)
        if spec.letterbox_anchor == "center":
            left, top = (spec.width - new_w) // 2, (spec.height - new_h) // 2
        else:
            left, top = 0, 0
        canvas[top : top + new_h, left : left + new_w] = resized
    else:
        canvas, left, top = resized.astype(np.float32), 0, 0
    pixels = canvas / 255.0 if spec.pixel_scale == 1 else canvas
    pixels = (pixels - np.array(spec.mean)) / np.array(spec.std)
    if spec.channel_order == "BGR":
        pixels = pixels[:, :, ::-1]
    if spec.layout == "NCHW":
        pixels = pixels.transpose(2, 0, 1)
    tensor = np.ascontiguousarray(pixels[None], dtype=np.float32)
    return tensor, Placement(new_w / width, new_h / height, float(left), float(top))


def iou(a: FloatArray | list[float], b: FloatArray | list[float]) -> float:
    """Intersection over union of two corner boxes."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0
