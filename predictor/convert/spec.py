"""What a converted checkpoint declares beside its weights: classes and preprocessing.

``PREFIX-preprocess.json`` tells the server how to turn a photo into the
network's input (`predictor.checkpoint.Preprocessing`).
"""

from __future__ import annotations

from dataclasses import replace

from predictor.checkpoint import Preprocessing
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


def default_preprocess(head: str, width: int, height: int) -> Preprocessing:
    """What the TF.js exports of the known detectors take (measured; see models/README.md).

    NanoDet: upstream's normalisation (BGR, mean/std on 0..255) and its
    keep-ratio warp (letterbox, centred, zero padding). Human's ``nanodet.ts``
    feeds this export RGB / 255 stretched instead; on the test photos that
    calls the cat a mouse and the motorcycle a vase. CenterNet: RGB 0..255,
    no normalisation, letterboxed with zero padding as it was trained.
    """
    letterbox = Preprocessing(
        width=width,
        height=height,
        resize="letterbox",
        letterbox_anchor="center",
        interpolation="predictor",
        pixel_scale=255,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        reduced_decoding=True,
    )
    if head == "nanodet":
        return replace(
            letterbox,
            mean=(123.675, 116.28, 103.53),
            std=(58.395, 57.12, 57.375),
            channel_order="BGR",
        )
    if head == "centernet":
        return letterbox
    raise ConversionError(f"no default preprocessing for head {head!r}")
