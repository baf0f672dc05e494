"""What a converted checkpoint declares beside its weights: classes and preprocessing.

``PREFIX-preprocess.json`` tells the server how to turn a photo into the
network's input (schema shared with the multi-model server, issue 12).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from predictor.convert.errors import ConversionError

# COCO's 80 detection classes in the order of their 0-based index, as the
# TF.js detectors (and GluonCV's COCO models) number them.
COCO_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def coco_classes() -> list[str]:
    """The 80 COCO class names."""
    return list(COCO_CLASSES)


@dataclass(frozen=True)
class Preprocess:
    """The preprocessing declaration (``PREFIX-preprocess.json``), field for field."""

    width: int
    height: int
    resize: str = "stretch"  # "stretch" | "letterbox"
    letterbox_anchor: str = "center"  # "center" | "top-left"
    pad_value: float = 0
    interpolation: str = "predictor"  # "gluoncv" | "predictor"
    pixel_scale: int = 255  # 1: pixels / 255; 255: 0..255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    layout: str = "NCHW"
    reduced_decoding: bool = True

    def validate(self) -> Preprocess:
        """Self, or `ConversionError` naming the first bad field."""
        allowed = {
            "resize": ("stretch", "letterbox"),
            "letterbox_anchor": ("center", "top-left"),
            "interpolation": ("gluoncv", "predictor"),
            "pixel_scale": (1, 255),
            "channel_order": ("RGB", "BGR"),
            "layout": ("NCHW", "NHWC"),
        }
        for key, values in allowed.items():
            if getattr(self, key) not in values:
                raise ConversionError(f"preprocess {key}={getattr(self, key)!r}: not in {values}")
        if self.width <= 0 or self.height <= 0:
            raise ConversionError(f"preprocess size {self.width}x{self.height} is not positive")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s == 0 for s in self.std):
            raise ConversionError("preprocess mean and std need 3 values each, std non-zero")
        return self

    def to_json(self) -> dict[str, Any]:
        """The declaration as written to disk."""
        data = asdict(self)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Preprocess:
        """Parse a declaration; unknown or missing keys are errors."""
        fields = set(cls.__dataclass_fields__)
        unknown = set(data) - fields
        if unknown:
            raise ConversionError(f"preprocess: unknown keys {sorted(unknown)}")
        missing = fields - set(data)
        if missing:
            raise ConversionError(f"preprocess: missing keys {sorted(missing)}")
        values = dict(data)
        values["mean"] = tuple(float(v) for v in data["mean"])
        values["std"] = tuple(float(v) for v in data["std"])
        return cls(**values).validate()

    @classmethod
    def load(cls, path: Path) -> Preprocess:
        """Read ``PREFIX-preprocess.json``."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConversionError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConversionError(f"{path} is not a JSON object")
        return cls.from_json(data)

    def sized(self, width: int, height: int) -> Preprocess:
        """The same declaration for another input size."""
        return replace(self, width=width, height=height)


def default_preprocess(head: str, width: int, height: int) -> Preprocess:
    """What the TF.js exports of the known detectors take (measured; see models/README.md).

    NanoDet: upstream's normalisation (BGR, mean/std on 0..255) and its
    keep-ratio warp (letterbox, centred, zero padding). Human's ``nanodet.ts``
    feeds this export RGB / 255 stretched instead; on the test photos that
    calls the cat a mouse and the motorcycle a vase. CenterNet: RGB 0..255,
    no normalisation, letterboxed with zero padding as it was trained.
    """
    if head == "nanodet":
        return Preprocess(
            width=width,
            height=height,
            resize="letterbox",
            letterbox_anchor="center",
            pixel_scale=255,
            mean=(123.675, 116.28, 103.53),
            std=(58.395, 57.12, 57.375),
            channel_order="BGR",
        ).validate()
    if head == "centernet":
        return Preprocess(
            width=width,
            height=height,
            resize="letterbox",
            letterbox_anchor="center",
            pixel_scale=255,
        ).validate()
    raise ConversionError(f"no default preprocessing for head {head!r}")
