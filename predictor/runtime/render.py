"""Drawing detections onto images, for people to look at.

`draw_detections` serves the command line (``predictor predict --out``) and
`render_jpeg` the HTTP endpoint's ``?render=true`` / ``Accept: image/jpeg``.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from predictor.detections import Detection
from predictor.errors import ImageError
from predictor.runtime.imaging import decode_full

ImageBGR = npt.NDArray[np.uint8]

RENDER_JPEG_QUALITY = 90

# Distinct, saturated colours (BGR), chosen by class name so a class keeps its colour.
_PALETTE = (
    (48, 48, 255), (48, 200, 48), (255, 128, 0), (0, 200, 255), (200, 0, 200),
    (255, 255, 0), (0, 128, 255), (128, 0, 255), (0, 255, 128), (255, 0, 128),
    (128, 128, 0), (0, 128, 128), (128, 0, 128),
)  # fmt: skip


def colour_for(name: str) -> tuple[int, int, int]:
    """A stable colour per class name."""
    return _PALETTE[sum(name.encode("utf-8")) % len(_PALETTE)]


def draw_detections(image: ImageBGR, detections: Sequence[Detection]) -> ImageBGR:
    """A copy of ``image`` with each box, its class and probability drawn on it."""
    canvas = image.copy()
    height, width = canvas.shape[:2]
    scale = max(0.4, min(width, height) / 800.0)
    thickness = max(1, round(2 * scale))
    for detection in detections:
        colour = colour_for(detection.object_class)
        top_left = (detection.x, detection.y)
        bottom_right = (detection.x + detection.width - 1, detection.y + detection.height - 1)
        cv2.rectangle(canvas, top_left, bottom_right, colour, thickness)
        label = f"{detection.object_class} {detection.probability:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(
            label, cv2.FONT_HERSHEY_SIMPLEX, 0.5 * scale, thickness
        )
        label_y = detection.y if detection.y - text_h - baseline >= 0 else detection.y + text_h
        label_y = max(label_y, text_h + baseline)
        cv2.rectangle(
            canvas,
            (detection.x, label_y - text_h - baseline),
            (detection.x + text_w, label_y),
            colour,
            cv2.FILLED,
        )
        cv2.putText(
            canvas,
            label,
            (detection.x, label_y - baseline),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.5 * scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    return canvas


def encode_jpeg(image: ImageBGR, quality: int = RENDER_JPEG_QUALITY) -> bytes:
    """JPEG bytes of a BGR image."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ImageError("the image could not be encoded as JPEG")
    return bytes(buffer.tobytes())


def render_jpeg(
    data: bytes,
    detections: Sequence[Detection],
    max_pixels: int,
    quality: int = RENDER_JPEG_QUALITY,
) -> bytes:
    """The JPEG ``data`` at full resolution with ``detections`` drawn on it, as JPEG bytes.

    Decoding applies the EXIF orientation, as detection does, so the boxes (in
    displayed-image pixels) land on the objects. CPU-bound: call it off the
    event loop.
    """
    return encode_jpeg(draw_detections(decode_full(data, max_pixels), detections), quality)
