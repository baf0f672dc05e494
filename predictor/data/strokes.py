"""Pen-stroke templates for drawing digits and shapes the way a person does with a mouse.

A template is a tuple of strokes; a stroke is an ``(N, 2)`` float array of points in a
unit box (x right, y down, y from 0 at the top to 1 at the bottom). The renderer
distorts, jitters and scales them, so templates only need the topology and rough
proportions of each character. Several variants per digit cover common handwriting
(a ``1`` with or without a flag and base, open and closed ``4``, ...).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Stroke = NDArray[np.float64]
Template = tuple[Stroke, ...]


def arc(cx: float, cy: float, rx: float, ry: float, start_deg: float, end_deg: float) -> Stroke:
    """Points along an elliptical arc; angles in degrees, 0 = right, 90 = down."""
    steps = max(2, math.ceil(abs(end_deg - start_deg) / 8) + 1)
    angles = np.radians(np.linspace(start_deg, end_deg, steps))
    return np.stack([cx + rx * np.cos(angles), cy + ry * np.sin(angles)], axis=1)


def polyline(*points: tuple[float, float]) -> Stroke:
    """A stroke through the given points."""
    return np.asarray(points, dtype=np.float64)


def join(*parts: Stroke) -> Stroke:
    """One continuous stroke made of several parts drawn without lifting the pen."""
    return np.concatenate(parts, axis=0)


DIGIT_TEMPLATES: dict[str, tuple[Template, ...]] = {
    "0": (
        (arc(0.5, 0.5, 0.5, 0.5, 250, 625),),
        (arc(0.5, 0.5, 0.5, 0.5, 275, 640),),
    ),
    "1": (
        (polyline((0.25, 0.22), (0.6, 0.0), (0.6, 1.0)),),
        (polyline((0.5, 0.0), (0.5, 1.0)),),
        (polyline((0.25, 0.22), (0.6, 0.0), (0.6, 1.0)), polyline((0.3, 1.0), (0.9, 1.0))),
    ),
    "2": (
        (join(arc(0.5, 0.3, 0.45, 0.3, 190, 400), polyline((0.05, 1.0), (0.95, 1.0))),),
        (
            join(
                arc(0.5, 0.28, 0.45, 0.28, 200, 380), polyline((0.1, 1.0), (0.2, 0.95), (1.0, 0.98))
            ),
        ),
    ),
    "3": (
        (join(arc(0.45, 0.25, 0.42, 0.25, 200, 450), arc(0.45, 0.74, 0.5, 0.26, 270, 520)),),
        (join(polyline((0.05, 0.0), (0.9, 0.0), (0.4, 0.4)), arc(0.45, 0.7, 0.5, 0.3, 260, 520)),),
    ),
    "4": (
        (polyline((0.7, 1.0), (0.7, 0.0), (0.0, 0.68), (1.0, 0.68)),),
        (polyline((0.25, 0.0), (0.05, 0.62), (1.0, 0.62)), polyline((0.72, 0.25), (0.72, 1.0))),
    ),
    "5": (
        (join(polyline((0.9, 0.0), (0.2, 0.0), (0.12, 0.45)), arc(0.5, 0.7, 0.48, 0.3, 215, 520)),),
        (
            join(polyline((0.2, 0.0), (0.12, 0.45)), arc(0.5, 0.7, 0.48, 0.3, 215, 520)),
            polyline((0.2, 0.0), (0.92, 0.02)),
        ),
    ),
    "6": ((join(arc(0.62, 0.62, 0.55, 0.62, 282, 165), arc(0.5, 0.73, 0.42, 0.27, 180, -180)),),),
    "7": (
        (polyline((0.0, 0.02), (1.0, 0.0), (0.35, 1.0)),),
        (polyline((0.0, 0.02), (1.0, 0.0), (0.35, 1.0)), polyline((0.45, 0.5), (0.9, 0.5))),
    ),
    "8": (
        (arc(0.5, 0.25, 0.4, 0.25, 0, 370), arc(0.5, 0.73, 0.5, 0.27, 0, 370)),
        (arc(0.5, 0.25, 0.4, 0.25, 90, 460), arc(0.5, 0.73, 0.5, 0.27, -90, 280)),
    ),
    "9": (
        (join(arc(0.5, 0.3, 0.5, 0.3, 0, 365), polyline((0.92, 1.0))),),
        (join(arc(0.5, 0.3, 0.5, 0.3, 0, 360), arc(0.0, 0.3, 1.0, 0.7, 0, 70)),),
    ),
}


def hand_shape_template(shape: str, rng: np.random.Generator) -> Template:
    """A closed outline as one stroke, starting somewhere random, often overshooting."""
    overshoot = float(rng.uniform(0.0, 0.12))
    if shape == "circle":
        start = float(rng.uniform(0, 360))
        return (arc(0.5, 0.5, 0.5, 0.5, start, start + 360 * (1 + overshoot)),)
    if shape == "square":
        corners = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    elif shape == "triangle":
        corners = [(0.5, 0.0), (1.0, 0.87), (0.0, 0.87)]
    else:
        raise ValueError(f"no hand-drawn template for {shape!r}")
    first = int(rng.integers(len(corners)))
    ordered = corners[first:] + corners[:first]
    first_corner = np.asarray(ordered[0])
    # The pen comes back past the first corner a little, as it does by hand.
    overshoot_point = first_corner + (np.asarray(ordered[1]) - first_corner) * overshoot
    points = np.vstack([np.asarray(ordered), first_corner, overshoot_point])
    return (points,)
