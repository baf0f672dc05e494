"""The object classes of the digits-and-shapes task, in their fixed training order."""

from __future__ import annotations

DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# The index of a name in this tuple is its class id everywhere (model output, YOLO labels).
CLASSES: tuple[str, ...] = DIGITS + SHAPES
