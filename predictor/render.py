"""Drawing detections onto images, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import numpy.typing as npt

from predictor.model import Detection

ImageBGR = npt.NDArray[np.uint8]

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
