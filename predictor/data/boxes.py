"""Bounding boxes: the one internal representation, and exact conversions to disk formats.

Internal representation
-----------------------
A :class:`Box` is four Python ints ``xmin, ymin, xmax, ymax`` in pixel-edge coordinates,
origin at the top-left corner of the image, x to the right and y down. It is half-open:
it covers pixel columns ``xmin .. xmax - 1`` and rows ``ymin .. ymax - 1``, so
``width = xmax - xmin`` and ``height = ymax - ymin``. A valid box in a ``W x H`` image has
``0 <= xmin < xmax <= W`` and ``0 <= ymin < ymax <= H``.

On-disk conventions, and how each maps to the internal box exactly
------------------------------------------------------------------
* Pascal VOC: 1-based *inclusive* pixel indices of the first and last covered pixel:
  ``(xmin + 1, ymin + 1, xmax, ymax)``.
* COCO: ``[x, y, w, h]`` in continuous pixel coordinates with the same edges as ours:
  ``[xmin, ymin, xmax - xmin, ymax - ymin]``.
* YOLO: centre and size normalised by the image size:
  ``cx = (xmin + xmax) / 2W, cy = (ymin + ymax) / 2H, w = (xmax - xmin) / W,
  h = (ymax - ymin) / H``, written with :data:`YOLO_DECIMALS` decimals, which recovers the
  exact pixel edges by rounding for any image up to millions of pixels wide.

Readers accept non-integer values (other tools write ``12.0`` or sub-pixel COCO boxes) and
round each *edge* half-up to the nearest pixel edge.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

YOLO_DECIMALS = 8


def round_half_up(value: float) -> int:
    """Round to the nearest int, halves upwards (Python's ``round`` rounds halves to even)."""
    return math.floor(value + 0.5)


@dataclass(frozen=True, slots=True)
class Box:
    """A half-open pixel box; see the module docstring for the convention."""

    xmin: int
    ymin: int
    xmax: int
    ymax: int

    @property
    def width(self) -> int:
        """Number of pixel columns covered."""
        return self.xmax - self.xmin

    @property
    def height(self) -> int:
        """Number of pixel rows covered."""
        return self.ymax - self.ymin

    @property
    def area(self) -> int:
        """Number of pixels covered (0 for empty or inverted boxes)."""
        return max(0, self.width) * max(0, self.height)

    def as_tuple(self) -> tuple[int, int, int, int]:
        """``(xmin, ymin, xmax, ymax)``."""
        return (self.xmin, self.ymin, self.xmax, self.ymax)

    def problem(self, image_width: int, image_height: int) -> str | None:
        """Why this box is invalid in an image of the given size, or None if it is valid."""
        if self.xmax <= self.xmin or self.ymax <= self.ymin:
            return f"empty box {self.describe()} (width {self.width}, height {self.height})"
        if self.xmin < 0 or self.ymin < 0 or self.xmax > image_width or self.ymax > image_height:
            return (
                f"box {self.describe()} outside the {image_width}x{image_height} image "
                "(half-open pixel coordinates)"
            )
        return None

    def describe(self) -> str:
        """Short human-readable form used in error messages."""
        return f"[xmin={self.xmin}, ymin={self.ymin}, xmax={self.xmax}, ymax={self.ymax}]"

    def overlaps(self, other: Box, gap: int = 0) -> bool:
        """True if the boxes share a pixel, or come closer than ``gap`` pixels."""
        return (
            self.xmin < other.xmax + gap
            and other.xmin < self.xmax + gap
            and self.ymin < other.ymax + gap
            and other.ymin < self.ymax + gap
        )

    # --- Pascal VOC -------------------------------------------------------------------
    def to_voc(self) -> tuple[int, int, int, int]:
        """1-based inclusive ``(xmin, ymin, xmax, ymax)`` as written in VOC XML."""
        return (self.xmin + 1, self.ymin + 1, self.xmax, self.ymax)

    @classmethod
    def from_voc(cls, xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
        """Inverse of :meth:`to_voc`."""
        return cls(
            round_half_up(xmin) - 1,
            round_half_up(ymin) - 1,
            round_half_up(xmax),
            round_half_up(ymax),
        )

    # --- COCO -------------------------------------------------------------------------
    def to_coco(self) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` as in a COCO ``bbox``."""
        return (self.xmin, self.ymin, self.width, self.height)

    @classmethod
    def from_coco(cls, x: float, y: float, w: float, h: float) -> Box:
        """Inverse of :meth:`to_coco`; rounds the far edge, not the size, so edges stay put."""
        return cls(round_half_up(x), round_half_up(y), round_half_up(x + w), round_half_up(y + h))

    # --- YOLO -------------------------------------------------------------------------
    def to_yolo(self, image_width: int, image_height: int) -> tuple[float, float, float, float]:
        """Normalised ``(cx, cy, w, h)``."""
        return (
            (self.xmin + self.xmax) / (2 * image_width),
            (self.ymin + self.ymax) / (2 * image_height),
            self.width / image_width,
            self.height / image_height,
        )

    @classmethod
    def from_yolo(
        cls, cx: float, cy: float, w: float, h: float, image_width: int, image_height: int
    ) -> Box:
        """Inverse of :meth:`to_yolo` (exact for values written with enough decimals)."""
        return cls(
            round_half_up((cx - w / 2) * image_width),
            round_half_up((cy - h / 2) * image_height),
            round_half_up((cx + w / 2) * image_width),
            round_half_up((cy + h / 2) * image_height),
        )


def format_yolo_value(value: float) -> str:
    """A normalised YOLO value as text, with enough decimals to round-trip exactly."""
    return f"{value:.{YOLO_DECIMALS}f}"


@dataclass(frozen=True, slots=True)
class Annotation:
    """One labelled object: a class name and its box."""

    label: str
    box: Box


def tight_box(mask: NDArray[np.bool_] | NDArray[np.uint8]) -> Box | None:
    """The smallest box containing every non-zero pixel of a 2-D mask, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def boxes_to_array(boxes: Sequence[Box]) -> NDArray[np.int64]:
    """Boxes as an ``(N, 4)`` int64 array of ``xmin, ymin, xmax, ymax``."""
    array = np.zeros((len(boxes), 4), dtype=np.int64)
    for i, box in enumerate(boxes):
        array[i] = box.as_tuple()
    return array


def array_to_boxes(array: NDArray[np.int64]) -> list[Box]:
    """Inverse of :func:`boxes_to_array`."""
    return [Box(int(a), int(b), int(c), int(d)) for a, b, c, d in array.tolist()]
