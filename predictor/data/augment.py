"""Box-safe augmentations for training: every geometric change moves the boxes with it.

Images are ``H x W x C`` uint8 arrays; boxes are ``(N, 4)`` int64 arrays of half-open
pixel edges ``xmin, ymin, xmax, ymax`` (see :mod:`predictor.data.boxes`). Functions never
modify their inputs, validate the boxes they are given (an invalid box raises ValueError
instead of being silently carried along), and never return an empty or inverted box.
Random variants take a ``numpy.random.Generator`` and use nothing else, so a seeded
generator reproduces them exactly.

Operations that can drop objects (crops) also return ``keep``, a boolean array over the
input boxes, so labels (or any per-box data) can be filtered the same way:
``labels = labels[keep]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

from predictor.data.classes import CLASSES

Image = NDArray[np.uint8]
Boxes = NDArray[np.int64]
Keep = NDArray[np.bool_]


def check_boxes(boxes: Boxes, width: int, height: int) -> Boxes:
    """Return ``boxes`` as an ``(N, 4)`` int64 array, or raise ValueError if any is invalid."""
    array = np.asarray(boxes)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {array.shape}")
    if not np.issubdtype(array.dtype, np.integer) and not np.array_equal(array, np.round(array)):
        raise ValueError("boxes must be whole pixel edges")
    array = array.astype(np.int64)
    bad = (
        (array[:, 0] < 0)
        | (array[:, 1] < 0)
        | (array[:, 2] > width)
        | (array[:, 3] > height)
        | (array[:, 2] <= array[:, 0])
        | (array[:, 3] <= array[:, 1])
    )
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"box {index} {array[index].tolist()} is empty or outside the {width}x{height} image"
        )
    return array


def hflip(image: Image, boxes: Boxes) -> tuple[Image, Boxes]:
    """Mirror left-right."""
    height, width = image.shape[:2]
    boxes = check_boxes(boxes, width, height)
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def crop(
    image: Image,
    boxes: Boxes,
    window: tuple[int, int, int, int],
    min_visible: float = 0.5,
) -> tuple[Image, Boxes, Keep]:
    """Cut out ``window = (xmin, ymin, xmax, ymax)`` (half-open, inside the image).

    Boxes are clipped to the window and shifted into its coordinates. A box is dropped
    when the part inside the window has less than ``min_visible`` of its area (or none).
    Clipping keeps every remaining pixel of an object inside its box; for a non-rectangular
    object cut by the window the clipped box may be looser than its remaining pixels,
    which is the best a box-only pipeline can know.
    """
    height, width = image.shape[:2]
    boxes = check_boxes(boxes, width, height)
    x0, y0, x1, y1 = (int(v) for v in window)
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"crop window {window} is empty or outside the {width}x{height} image")
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], x0, x1) - x0
    clipped[:, [1, 3]] = np.clip(boxes[:, [1, 3]], y0, y1) - y0
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    # A zero-area remnant is dropped even when min_visible is 0.
    keep = (visible > 0) & (visible >= min_visible * area)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), clipped[keep], keep


def resize(
    image: Image,
    boxes: Boxes,
    size: tuple[int, int],
    interpolation: int | None = None,
) -> tuple[Image, Boxes]:
    """Scale to ``size = (width, height)``; box edges are scaled and rounded to the nearest pixel.

    Default interpolation is area averaging when shrinking (no aliasing) and bilinear when
    enlarging. A box that would round to zero width or height is kept one pixel wide.
    """
    height, width = image.shape[:2]
    boxes = check_boxes(boxes, width, height)
    new_width, new_height = (int(v) for v in size)
    if new_width < 1 or new_height < 1:
        raise ValueError(f"resize target must be at least 1x1, got {size}")
    if interpolation is None:
        shrinking = new_width * new_height < width * height
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = np.asarray(
        cv2.resize(image, (new_width, new_height), interpolation=interpolation), dtype=np.uint8
    )
    if resized.ndim == 2 and image.ndim == 3:
        resized = resized[:, :, None]  # cv2 drops a single channel axis.
    scaled = np.empty_like(boxes)
    scaled[:, [0, 2]] = _scale_edges(boxes[:, [0, 2]], width, new_width)
    scaled[:, [1, 3]] = _scale_edges(boxes[:, [1, 3]], height, new_height)
    _ensure_one_pixel(scaled, 0, new_width)
    _ensure_one_pixel(scaled, 1, new_height)
    return resized, scaled


def _scale_edges(edges: Boxes, old: int, new: int) -> Boxes:
    """round(edge * new / old), half up, in exact integer arithmetic."""
    result: Boxes = (2 * edges * new + old) // (2 * old)
    return result


def _ensure_one_pixel(boxes: Boxes, axis: int, limit: int) -> None:
    low, high = boxes[:, axis], boxes[:, axis + 2]
    collapsed = high <= low
    high[collapsed] = np.minimum(low[collapsed] + 1, limit)
    low[collapsed] = high[collapsed] - 1


def expand(
    image: Image,
    boxes: Boxes,
    size: tuple[int, int],
    offset: tuple[int, int],
    fill: tuple[int, ...] = (0, 0, 0),
) -> tuple[Image, Boxes]:
    """Place the image at ``offset = (x, y)`` on a larger ``size = (width, height)`` canvas.

    This is the "zoom out" of SSD training: objects become smaller relative to the image.
    """
    height, width = image.shape[:2]
    boxes = check_boxes(boxes, width, height)
    new_width, new_height = size
    x, y = offset
    if not (0 <= x <= new_width - width and 0 <= y <= new_height - height):
        raise ValueError(f"a {width}x{height} image at {offset} does not fit in {size}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    canvas = np.empty((new_height, new_width, channels), np.uint8)
    canvas[:] = np.asarray(fill[:channels], np.uint8)
    canvas[y : y + height, x : x + width] = image.reshape(height, width, channels)
    if image.ndim == 2:
        canvas = canvas[:, :, 0]
    moved = boxes + np.array([x, y, x, y], dtype=np.int64)
    return canvas, moved


def color_jitter(
    rng: np.random.Generator,
    image: Image,
    brightness: float = 0.25,
    contrast: float = 0.25,
    saturation: float = 0.25,
    hue_degrees: float = 10.0,
) -> Image:
    """Random brightness, contrast, saturation and hue changes of a BGR image.

    Each strength is the largest relative change (hue: the largest shift in degrees).
    Only pixel values change, so boxes need no update.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"color_jitter needs an H x W x 3 BGR image, got shape {image.shape}")
    result = image.astype(np.float32)
    result += float(rng.uniform(-brightness, brightness)) * 255.0
    mean = float(result.mean())
    result = (result - mean) * float(rng.uniform(1 - contrast, 1 + contrast)) + mean
    grey = result @ np.array([0.114, 0.587, 0.299], np.float32)
    factor = float(rng.uniform(1 - saturation, 1 + saturation))
    result = grey[:, :, None] + (result - grey[:, :, None]) * factor
    out = np.clip(result, 0, 255).astype(np.uint8)
    shift = round(float(rng.uniform(-hue_degrees, hue_degrees)) / 2)  # OpenCV hue: 0-179
    if shift:
        hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int16) + shift) % 180
        out = np.asarray(cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR), dtype=np.uint8)
    return out


def random_hflip(
    rng: np.random.Generator, image: Image, boxes: Boxes, probability: float = 0.5
) -> tuple[Image, Boxes]:
    """:func:`hflip` with the given probability (a validated copy otherwise)."""
    if rng.random() < probability:
        return hflip(image, boxes)
    height, width = image.shape[:2]
    return image.copy(), check_boxes(boxes, width, height).copy()


def random_crop(
    rng: np.random.Generator,
    image: Image,
    boxes: Boxes,
    min_scale: float = 0.3,
    max_aspect_change: float = 2.0,
    min_visible: float = 0.5,
    trials: int = 50,
) -> tuple[Image, Boxes, Keep]:
    """:func:`crop` at a random window that keeps at least one object.

    The window's sides are between ``min_scale`` and 1 of the image's, its aspect ratio
    within ``max_aspect_change`` of the image's. If no window in ``trials`` keeps an
    object, the image is returned uncropped (nothing is dropped).
    """
    height, width = image.shape[:2]
    boxes = check_boxes(boxes, width, height)
    for _ in range(trials):
        scale = float(rng.uniform(min_scale, 1.0))
        aspect = math.exp(float(rng.uniform(-1, 1)) * math.log(max_aspect_change))
        crop_width = min(width, max(1, round(width * scale * math.sqrt(aspect))))
        crop_height = min(height, max(1, round(height * scale / math.sqrt(aspect))))
        x0 = int(rng.integers(0, width - crop_width + 1))
        y0 = int(rng.integers(0, height - crop_height + 1))
        window = (x0, y0, x0 + crop_width, y0 + crop_height)
        cropped, kept_boxes, keep = crop(image, boxes, window, min_visible)
        if keep.any() or boxes.shape[0] == 0:
            return cropped, kept_boxes, keep
    return image.copy(), boxes.copy(), np.ones(boxes.shape[0], dtype=bool)


def random_expand(
    rng: np.random.Generator,
    image: Image,
    boxes: Boxes,
    max_ratio: float = 3.0,
    fill: tuple[int, ...] = (0, 0, 0),
) -> tuple[Image, Boxes]:
    """:func:`expand` onto a canvas up to ``max_ratio`` times the size, at a random place."""
    height, width = image.shape[:2]
    ratio = float(rng.uniform(1.0, max_ratio))
    new_width, new_height = round(width * ratio), round(height * ratio)
    offset = (
        int(rng.integers(0, new_width - width + 1)),
        int(rng.integers(0, new_height - height + 1)),
    )
    return expand(image, boxes, (new_width, new_height), offset, fill)


# Class ids (in CLASSES order) whose mirror image is still the same class. A mirrored 2 or
# 5 is no digit at all and looks like the other, so images holding any other class are
# never flipped by TrainAugment.
MIRROR_SAFE_CLASS_IDS: frozenset[int] = frozenset(
    CLASSES.index(name) for name in ("0", "8", "circle", "square", "triangle")
)


@dataclass(frozen=True)
class TrainAugment:
    """The training pipeline: colour jitter, expand, crop, flip, resize, each optional.

    Call it with a generator, an image, its boxes and their class ids; it returns the
    augmented triple, with class ids filtered like the boxes. An image is flipped only
    if every class id in it is in ``mirror_safe`` (None: any image may be flipped).
    """

    out_size: tuple[int, int] = (300, 300)
    expand_probability: float = 0.5
    max_expand_ratio: float = 3.0
    expand_fill: tuple[int, ...] | None = None
    """Colour around an expanded image; None: the image's mean colour."""
    crop_probability: float = 0.7
    min_crop_scale: float = 0.3
    min_visible: float = 0.5
    flip_probability: float = 0.5
    mirror_safe: frozenset[int] | None = MIRROR_SAFE_CLASS_IDS
    jitter: bool = True

    def __call__(
        self,
        rng: np.random.Generator,
        image: Image,
        boxes: Boxes,
        labels: NDArray[np.int64],
    ) -> tuple[Image, Boxes, NDArray[np.int64]]:
        """Augment one sample (inputs are not modified)."""
        if len(labels) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
        labels = np.asarray(labels).copy()
        # Separate streams: switching jitter on or off leaves the geometry (boxes) the same.
        color_rng = np.random.default_rng(int(rng.integers(2**63)))
        rng = np.random.default_rng(int(rng.integers(2**63)))
        if self.jitter:
            image = color_jitter(color_rng, image)
        if rng.random() < self.expand_probability:
            fill = self.expand_fill
            if fill is None:
                channels = 1 if image.ndim == 2 else image.shape[2]
                fill = tuple(int(v) for v in image.reshape(-1, channels).mean(axis=0))
            image, boxes = random_expand(rng, image, boxes, self.max_expand_ratio, fill)
        if rng.random() < self.crop_probability:
            image, boxes, keep = random_crop(
                rng, image, boxes, self.min_crop_scale, min_visible=self.min_visible
            )
            labels = labels[keep]
        flippable = self.mirror_safe is None or set(labels.tolist()) <= self.mirror_safe
        image, boxes = random_hflip(rng, image, boxes, self.flip_probability if flippable else 0.0)
        image, boxes = resize(image, boxes, self.out_size)
        return image, boxes, labels
