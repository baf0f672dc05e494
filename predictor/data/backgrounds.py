"""Scene backgrounds: flat colours, gradients, soft blotches, grain and clutter.

Clutter is deliberately unlike every class, so it teaches the detector what to ignore:
thin straight lines and smooth waves that cross the whole image (longer than any object,
without corners), large faint lumpy stains, and specks far smaller than the smallest
object. (Random zigzags were tried and dropped: their corners make chance triangles,
7s and 4s that are not labelled.)
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import NDArray

Image = NDArray[np.uint8]


def render_background(rng: np.random.Generator, width: int, height: int) -> Image:
    """A random ``height x width`` BGR background, possibly with grain and clutter."""
    kind = int(rng.integers(4))
    if kind == 0:
        image = _flat(rng, width, height)
    elif kind == 1:
        image = _linear_gradient(rng, width, height)
    elif kind == 2:
        image = _radial_gradient(rng, width, height)
    else:
        image = _blotches(rng, width, height)
    if rng.random() < 0.4:
        image = add_grain(rng, image, amplitude=int(rng.integers(4, 25)))
    if rng.random() < 0.6:
        draw_clutter(rng, image, count=int(rng.integers(1, 8)))
    return image


def random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A uniformly random BGR colour."""
    b, g, r = (int(v) for v in rng.integers(0, 256, 3))
    return (b, g, r)


def solid(color: tuple[int, int, int], width: int, height: int) -> Image:
    """A ``height x width`` image of one BGR colour."""
    # Tiling whole rows is much faster than broadcasting a 3-element colour over H x W.
    row = np.tile(np.asarray(color, np.uint8), width)
    return np.tile(row, (height, 1)).reshape(height, width, 3)


def _flat(rng: np.random.Generator, width: int, height: int) -> Image:
    return solid(random_color(rng), width, height)


# Smooth backgrounds are computed at 1/_COARSE resolution and scaled up: same look, and a
# fraction of the per-pixel arithmetic.
_COARSE = 4


def _coarse_grid(width: int, height: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Full-resolution x and y coordinates of the centres of a coarse grid's cells."""
    xs = (np.arange(math.ceil(width / _COARSE), dtype=np.float32) + 0.5) * _COARSE - 0.5
    ys = (np.arange(math.ceil(height / _COARSE), dtype=np.float32) + 0.5) * _COARSE - 0.5
    return xs, ys


def _blend(rng: np.random.Generator, t: NDArray[np.float32], width: int, height: int) -> Image:
    """Colours from one random colour (t = 0) to another (t = 1), scaled up to full size."""
    start = rng.integers(0, 256, 3).astype(np.float32)
    end = rng.integers(0, 256, 3).astype(np.float32)
    coarse = start + np.clip(t, 0.0, 1.0)[:, :, None] * (end - start)
    small = np.round(coarse).astype(np.uint8)
    return np.asarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))


def _linear_gradient(rng: np.random.Generator, width: int, height: int) -> Image:
    theta = float(rng.uniform(0, 2 * math.pi))
    dx, dy = math.cos(theta), math.sin(theta)
    span = abs(dx) * width + abs(dy) * height
    xs, ys = _coarse_grid(width, height)
    t = (ys[:, None] * dy - min(0.0, dy) * height) + (xs[None, :] * dx - min(0.0, dx) * width)
    return _blend(rng, (t / span).astype(np.float32), width, height)


def _radial_gradient(rng: np.random.Generator, width: int, height: int) -> Image:
    cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    xs, ys = _coarse_grid(width, height)
    distance = np.sqrt((ys[:, None] - cy) ** 2 + (xs[None, :] - cx) ** 2)
    return _blend(rng, distance / max(float(distance.max()), 1.0), width, height)


def _blotches(rng: np.random.Generator, width: int, height: int) -> Image:
    """Soft low-frequency colour variation, like paper or a wall."""
    grid = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3))
    # Pull the colours towards their mean so blotches stay a background, not a pattern.
    mean = grid.mean(axis=(0, 1), keepdims=True)
    softened = (mean + (grid - mean) * float(rng.uniform(0.2, 0.7))).astype(np.uint8)
    coarse_size = (math.ceil(width / _COARSE), math.ceil(height / _COARSE))
    coarse = cv2.resize(softened, coarse_size, interpolation=cv2.INTER_CUBIC)
    return np.asarray(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR))


def add_grain(rng: np.random.Generator, image: Image, amplitude: int) -> Image:
    """Grey per-pixel noise, uniform in about +-amplitude."""
    height, width = image.shape[:2]
    # rng.bytes is by far the cheapest source of this much randomness.
    raw = np.frombuffer(rng.bytes(height * width), np.uint8).reshape(height, width)
    spread = (np.arange(256) * (2 * amplitude + 1) >> 8).astype(np.uint8)
    noise = cv2.cvtColor(cv2.LUT(raw, spread), cv2.COLOR_GRAY2BGR)
    # Saturating uint8 arithmetic: subtract the offset first, then add 0..2*amplitude.
    lower = np.clip(np.arange(256) - amplitude, 0, 255).astype(np.uint8)
    lowered = cv2.LUT(image, lower)
    return np.asarray(cv2.add(lowered, noise), dtype=np.uint8)


def draw_clutter(rng: np.random.Generator, image: Image, count: int) -> None:
    height, width = image.shape[:2]
    for _ in range(count):
        color = random_color(rng)
        kind = float(rng.random())
        if kind < 0.35:
            _long_line(rng, image, color)
        elif kind < 0.6:
            _wave(rng, image, color)
        elif kind < 0.85:
            _stain(rng, image, color)
        else:
            for _ in range(int(rng.integers(5, 30))):
                centre = (int(rng.integers(width)), int(rng.integers(height)))
                cv2.circle(image, centre, int(rng.integers(1, 3)), color, -1, cv2.LINE_AA)


def _long_line(rng: np.random.Generator, image: Image, color: tuple[int, int, int]) -> None:
    height, width = image.shape[:2]
    cx, cy = float(rng.uniform(0, width)), float(rng.uniform(0, height))
    theta = float(rng.uniform(0, math.pi))
    # At least as long as the image's shorter side, so it can never pass for a "1".
    half = float(rng.uniform(0.5, 1.0)) * math.hypot(width, height)
    dx, dy = math.cos(theta) * half, math.sin(theta) * half
    start = (round(cx - dx), round(cy - dy))
    end = (round(cx + dx), round(cy + dy))
    cv2.line(image, start, end, color, int(rng.integers(1, 4)), cv2.LINE_AA)


def _wave(rng: np.random.Generator, image: Image, color: tuple[int, int, int]) -> None:
    """A smooth wavy line right across the image: no corners, and larger than any object."""
    height, width = image.shape[:2]
    t = np.linspace(0.0, 1.0, 64)
    amplitude = float(rng.uniform(0.03, 0.15)) * min(width, height)
    phase = float(rng.uniform(0, 2 * math.pi))
    offset = amplitude * np.sin(2 * math.pi * float(rng.uniform(0.5, 3.0)) * t + phase)
    if rng.random() < 0.5:
        points = np.stack([t * width, float(rng.uniform(0, height)) + offset], axis=1)
    else:
        points = np.stack([float(rng.uniform(0, width)) + offset, t * height], axis=1)
    cv2.polylines(
        image,
        [np.round(points).astype(np.int32)],
        False,
        color,
        int(rng.integers(1, 4)),
        cv2.LINE_AA,
    )


def _stain(rng: np.random.Generator, image: Image, color: tuple[int, int, int]) -> None:
    """A large, faint, lumpy, usually elongated smudge: part of the background, not an object."""
    height, width = image.shape[:2]
    angles = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
    wobble = np.ones_like(angles)
    for harmonic in (2, 3, 4):
        phase = float(rng.uniform(0, 2 * math.pi))
        wobble += float(rng.uniform(0.0, 0.15)) * np.cos(harmonic * angles + phase)
    radius = float(rng.uniform(0.15, 0.45)) * min(width, height)
    outline = np.stack([np.cos(angles) * float(rng.uniform(1.0, 2.5)), np.sin(angles)], axis=1)
    tilt = float(rng.uniform(0, math.pi))
    rotation = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    centre = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    points = (outline * (radius * wobble)[:, None]) @ rotation.T + centre
    x0, y0 = np.maximum(np.floor(points.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(points.max(axis=0)).astype(int) + 1, [width, height])
    if x1 <= x0 or y1 <= y0:
        return
    region = image[y0:y1, x0:x1]
    mask = np.zeros(region.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(points - [x0, y0]).astype(np.int32)], (1,), cv2.LINE_8)
    alpha = float(rng.uniform(0.1, 0.25))
    tint = solid(color, x1 - x0, y1 - y0)
    cv2.copyTo(cv2.addWeighted(region, 1 - alpha, tint, alpha, 0), mask, region)
