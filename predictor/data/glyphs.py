"""Binary masks of single objects: digits and shapes, each in several drawing styles.

Every object is drawn on its own canvas without anti-aliasing, so the mask is exactly the
set of pixels the object will occupy in the scene and its tight box is the ground truth.

Styles
------
digits: ``font`` (OpenCV Hershey fonts, assorted weights, slants, rotations), ``type``
(TrueType/OpenType families from :mod:`predictor.data.fonts`) and ``hand`` (jittered pen
strokes from :mod:`predictor.data.strokes`, like a mouse drawing).
shapes: ``filled``, ``outline`` (geometric, stroke 2-18 % of the size), ``hand`` (a
jittered outline stroke), ``soft`` (squares and triangles whose corners are rounded by
2-7 % of the side, filled or outlined, as a marker or a rounded pen join draws them;
circles plain), ``rounded`` (corners rounded by 8-22 %, filled or outlined; circles seen
at an angle) and ``twotone`` (filled in one colour, bordered in another).

Which styles a set of scenes uses is a :class:`GlyphStyles`; the training and the
withheld (generalisation) sets are defined in :mod:`predictor.data.styles`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from predictor.data.classes import DIGITS, SHAPES
from predictor.data.fonts import render_text
from predictor.data.strokes import DIGIT_TEMPLATES, Stroke, hand_shape_template

FONTS: dict[str, int] = {
    "simplex": cv2.FONT_HERSHEY_SIMPLEX,
    "plain": cv2.FONT_HERSHEY_PLAIN,
    "duplex": cv2.FONT_HERSHEY_DUPLEX,
    "complex": cv2.FONT_HERSHEY_COMPLEX,
    "triplex": cv2.FONT_HERSHEY_TRIPLEX,
    "complex_small": cv2.FONT_HERSHEY_COMPLEX_SMALL,
    "script_simplex": cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    "script_complex": cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
}
_FONT_NAMES = tuple(FONTS)
# Stroke width as a fraction of glyph height: hairline, regular, bold, black.
_FONT_WEIGHTS = (0.03, 0.06, 0.09, 0.13)

DIGIT_STYLES = ("font", "type", "hand")
SHAPE_STYLES = ("filled", "outline", "hand", "soft", "rounded", "twotone")
# Digits stay near upright: a 6 turned half-way round is a 9.
_MAX_DIGIT_ROTATION_DEG = 15.0
# Polyline coordinates carry this many fractional bits, for sub-pixel placement.
_SHIFT = 3
_ONE = 1 << _SHIFT
# Largest move of a corner under the mild perspective, as a fraction of the drawing's side.
_PERSPECTIVE = 0.12

Mask = NDArray[np.bool_]
Canvas = NDArray[np.uint8]


@dataclass(frozen=True)
class _Corners:
    """How a rounded shape is drawn: ranges as fractions of its side."""

    radius: tuple[float, float]
    stroke: tuple[float, float]
    outlined: float
    """Share drawn as an outline rather than filled."""


# Training's ``soft`` corners stay below the withheld ``rounded`` style's radii, so the
# generalisation evaluation still sees corners rounder than any trained one.
_SOFT_CORNERS = _Corners(radius=(0.02, 0.07), stroke=(0.02, 0.18), outlined=0.5)
_ROUND_CORNERS = _Corners(radius=(0.08, 0.22), stroke=(0.04, 0.14), outlined=0.6)


@dataclass(frozen=True)
class GlyphStyles:
    """Which drawing styles a set of scenes uses, and how often.

    ``type`` digits and clutter letters are drawn in ``fonts`` (TrueType/OpenType files,
    :mod:`predictor.data.fonts`); ``font`` digits in OpenCV's Hershey fonts.
    """

    digit_styles: tuple[str, ...] = ("font", "hand")
    digit_weights: tuple[float, ...] = (0.5, 0.5)
    shape_styles: tuple[str, ...] = ("filled", "outline", "hand")
    shape_weights: tuple[float, ...] = (0.4, 0.35, 0.25)
    fonts: tuple[Path, ...] = ()
    perspective: float = 0.0
    """Share of objects drawn under a mild perspective (as if photographed at an angle)."""

    def __post_init__(self) -> None:
        for styles, weights, known in (
            (self.digit_styles, self.digit_weights, DIGIT_STYLES),
            (self.shape_styles, self.shape_weights, SHAPE_STYLES),
        ):
            if unknown := set(styles) - set(known):
                raise ValueError(f"unknown styles {sorted(unknown)}; known: {known}")
            if len(styles) != len(weights) or not math.isclose(sum(weights), 1.0):
                raise ValueError(f"styles {styles} need as many weights summing to 1")
        if "type" in self.digit_styles and not self.fonts:
            raise ValueError("the `type` digit style needs font files")

    def pick_digit_style(self, rng: np.random.Generator) -> str:
        """A digit style, drawn with the configured weights."""
        return str(rng.choice(self.digit_styles, p=self.digit_weights))

    def pick_shape_style(self, rng: np.random.Generator) -> str:
        """A shape style, drawn with the configured weights."""
        return str(rng.choice(self.shape_styles, p=self.shape_weights))


CLASSIC_STYLES = GlyphStyles()
"""Hershey and hand-drawn digits; filled, outlined and hand-drawn shapes; no font files."""


@dataclass(frozen=True)
class Glyph:
    """A rendered object: a tight binary mask and the style it was drawn in."""

    mask: Mask
    """Boolean, cropped so that its first and last rows and columns each hold a pixel."""
    style: str
    inner: Mask | None = None
    """For two-tone shapes: the part of ``mask`` painted in a second colour."""


def render_glyph(
    rng: np.random.Generator,
    label: str,
    size: int,
    style: str | None = None,
    styles: GlyphStyles = CLASSIC_STYLES,
) -> Glyph:
    """Draw one object whose longer side is (close to) ``size`` pixels.

    ``style`` picks a drawing style (see the module docstring); None picks one from
    ``styles`` at random.
    """
    if size < 6:
        raise ValueError(f"object size must be at least 6 pixels, got {size}")
    if label in DIGITS:
        chosen = style or styles.pick_digit_style(rng)
        if chosen == "font":
            canvas = _font_digit(rng, label, size)
        elif chosen == "type":
            canvas = _type_text(rng, label, styles.fonts)
        elif chosen == "hand":
            canvas = _hand_digit(rng, label, size)
        else:
            raise ValueError(f"digit style must be one of {DIGIT_STYLES}, got {style!r}")
    elif label in SHAPES:
        chosen = style or styles.pick_shape_style(rng)
        if chosen == "hand":
            canvas = _hand_shape(rng, label, size)
        elif chosen in ("filled", "outline"):
            canvas = _shape(rng, label, size, filled=chosen == "filled")
        elif chosen == "soft" and label == "circle":
            canvas = _shape(rng, label, size, filled=rng.random() < 0.5)
        elif chosen == "soft":
            canvas = _rounded_shape(rng, label, _SOFT_CORNERS)
        elif chosen == "rounded":
            canvas = _rounded_shape(rng, label, _ROUND_CORNERS)
        elif chosen == "twotone":
            canvas = _shape(rng, label, size, filled=True)
        else:
            raise ValueError(f"shape style must be one of {SHAPE_STYLES}, got {style!r}")
    else:
        raise ValueError(f"unknown object class {label!r}")
    if styles.perspective and rng.random() < styles.perspective:
        canvas = _perspective(rng, canvas)
    mask = _finish(canvas, size)
    inner = _two_tone_inner(rng, mask) if chosen == "twotone" else None
    return Glyph(mask, chosen, inner)


def render_letter(rng: np.random.Generator, letter: str, size: int, fonts: Sequence[Path]) -> Mask:
    """A clutter character (not a class) in one of ``fonts``, about ``size`` px long."""
    return _finish(_type_text(rng, letter, fonts), size)


def _font_digit(rng: np.random.Generator, digit: str, size: int) -> Canvas:
    font = FONTS[_FONT_NAMES[int(rng.integers(len(_FONT_NAMES)))]]
    if rng.random() < 0.2:
        font |= cv2.FONT_ITALIC
    weight = _FONT_WEIGHTS[int(rng.integers(len(_FONT_WEIGHTS)))]
    thickness = max(1, round(weight * size))
    (_, unit_height), _ = cv2.getTextSize(digit, font, 1.0, 1)
    scale = max(size - thickness, 1) / max(unit_height, 1)
    (text_width, text_height), baseline = cv2.getTextSize(digit, font, scale, thickness)
    # Italic and script glyphs lean past the advance width that getTextSize reports.
    pad = thickness + text_height // 3 + 2
    canvas = np.zeros((text_height + baseline + 2 * pad, text_width + 2 * pad), np.uint8)
    cv2.putText(canvas, digit, (pad, pad + text_height), font, scale, (255,), thickness, cv2.LINE_8)
    matrix = _random_linear_map(rng, _MAX_DIGIT_ROTATION_DEG, max_shear=0.2, aspect=(0.8, 1.2))
    return _warp(canvas, matrix)


def _type_text(rng: np.random.Generator, text: str, fonts: Sequence[Path]) -> Canvas:
    """A character in a random TrueType/OpenType font, slanted or rotated a little."""
    canvas = render_text(text, fonts[int(rng.integers(len(fonts)))])
    matrix = _random_linear_map(rng, _MAX_DIGIT_ROTATION_DEG, max_shear=0.15, aspect=(0.85, 1.15))
    return _warp(np.pad(canvas, 4), matrix)


def _hand_digit(rng: np.random.Generator, digit: str, size: int) -> Canvas:
    variants = DIGIT_TEMPLATES[digit]
    template = variants[int(rng.integers(len(variants)))]
    width_ratio = float(rng.uniform(0.5, 0.8))
    matrix = _random_linear_map(rng, 12.0, max_shear=0.3, aspect=(1.0, 1.0))
    matrix = matrix @ np.diag([width_ratio, 1.0])
    strokes = [_jitter(rng, stroke) @ matrix.T for stroke in template]
    thickness = _pen_thickness(rng, size)
    return _draw_strokes(strokes, size, thickness)


def _hand_shape(rng: np.random.Generator, shape: str, size: int) -> Canvas:
    template = hand_shape_template(shape, rng)
    angle = 0.0 if shape == "circle" else float(rng.uniform(-30, 30))
    matrix = _rotation(angle)
    strokes = [_jitter(rng, stroke) @ matrix.T for stroke in template]
    return _draw_strokes(strokes, size, _pen_thickness(rng, size))


def _shape(rng: np.random.Generator, shape: str, size: int, *, filled: bool) -> Canvas:
    thickness = 0 if filled else max(2, round(float(rng.uniform(0.02, 0.18)) * size))
    if shape == "circle":
        pad = thickness + 2
        side = size + 2 * pad
        canvas = np.zeros((side, side), np.uint8)
        centre = round((pad + (size - 1) / 2) * _ONE)
        # An outline's stroke is centred on the radius, so pull it in by half the stroke.
        radius = round(((size - 1) / 2 - thickness / 2) * _ONE)
        cv2.circle(canvas, (centre, centre), radius, (255,), thickness or -1, cv2.LINE_8, _SHIFT)
        return canvas
    if shape == "square":
        corners = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
        angle = float(rng.uniform(0, 90)) if rng.random() < 0.5 else 0.0
    else:
        # A roughly equilateral triangle, each corner nudged a little.
        angles = np.radians(-90 + np.arange(3) * 120 + rng.normal(0, 7, 3))
        radii = rng.uniform(0.85, 1.0, 3)
        corners = np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
        angle = float(rng.uniform(0, 360))
    polygon = corners @ _rotation(angle).T
    if filled:
        canvas, (points,) = _fit_canvas([polygon], size, 0)
        cv2.fillPoly(canvas, [points], (255,), cv2.LINE_8, _SHIFT)
    else:
        canvas, (points,) = _fit_canvas([polygon], size, thickness)
        cv2.polylines(canvas, [points], True, (255,), thickness, cv2.LINE_8, _SHIFT)
    return canvas


def _rounded_shape(rng: np.random.Generator, shape: str, corners: _Corners) -> Canvas:
    """A square or triangle with rounded corners (a circle: an ellipse seen at an angle).

    Drawn large, as the Minkowski sum of a smaller polygon and a disc, and then, for the
    outlined variant, hollowed out by an erosion. The caller scales it to size.
    """
    work = 160
    if shape == "circle":
        canvas = np.zeros((work + 8, work + 8), np.uint8)
        axes = (work // 2, round(work / 2 * float(rng.uniform(0.7, 0.9))))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(canvas, (work // 2 + 4, work // 2 + 4), axes, angle, 0, 360, (255,), -1)
    else:
        radius = max(1, round(work * float(rng.uniform(*corners.radius))))
        core = _shape(rng, shape, work - 2 * radius, filled=True)
        canvas = np.asarray(cv2.dilate(np.pad(core, radius + 2), _disc(radius)), dtype=np.uint8)
    if rng.random() < corners.outlined:
        stroke = max(2, round(work * float(rng.uniform(*corners.stroke))))
        canvas = np.where(cv2.erode(canvas, _disc(stroke)) > 0, 0, canvas).astype(np.uint8)
    return canvas


def _two_tone_inner(rng: np.random.Generator, mask: Mask) -> Mask | None:
    """The fill of a shape outlined in a second colour: the mask less a border."""
    border = max(1, round(max(mask.shape) * float(rng.uniform(0.05, 0.15))))
    inner = cv2.erode(mask.astype(np.uint8), _disc(border)) > 0
    return inner if inner.any() else None


def _disc(radius: int) -> NDArray[np.uint8]:
    return np.asarray(
        cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)), np.uint8
    )


def _perspective(rng: np.random.Generator, canvas: Canvas) -> Canvas:
    """The drawing as seen from a little off-axis: each corner moved by up to 12 %."""
    height, width = canvas.shape
    pad = round(max(height, width) * _PERSPECTIVE) + 2
    padded = np.pad(canvas, pad)
    side = max(height, width)
    corners = np.array(
        [[pad, pad], [pad + width, pad], [pad + width, pad + height], [pad, pad + height]],
        np.float32,
    )
    moved = corners + rng.uniform(-_PERSPECTIVE, _PERSPECTIVE, (4, 2)).astype(np.float32) * side
    matrix = cv2.getPerspectiveTransform(corners, moved)
    size = (padded.shape[1], padded.shape[0])
    return np.asarray(
        cv2.warpPerspective(padded, matrix, size, flags=cv2.INTER_LINEAR, borderValue=(0,)),
        np.uint8,
    )


def _pen_thickness(rng: np.random.Generator, size: int) -> int:
    return max(2, round(float(rng.uniform(0.05, 0.14)) * size))


def _rotation(angle_deg: float) -> NDArray[np.float64]:
    theta = math.radians(angle_deg)
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _random_linear_map(
    rng: np.random.Generator, max_rotation: float, max_shear: float, aspect: tuple[float, float]
) -> NDArray[np.float64]:
    """Rotation, slant and width change, applied to column vectors (x, y)."""
    angle = float(np.clip(rng.normal(0, max_rotation / 2), -max_rotation, max_rotation))
    shear = np.array([[1.0, float(rng.uniform(-max_shear, max_shear))], [0.0, 1.0]])
    stretch = np.diag([float(rng.uniform(*aspect)), 1.0])
    result: NDArray[np.float64] = _rotation(angle) @ shear @ stretch
    return result


def _jitter(rng: np.random.Generator, stroke: Stroke) -> Stroke:
    """Wobble a stroke like an unsteady hand: smooth drift plus a little tremor."""
    dense = _densify(stroke, 0.04)
    steps = np.hypot(*np.diff(dense, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    total = float(along[-1]) or 1.0
    knots = np.linspace(0.0, total, max(2, math.ceil(total / 0.3) + 1))
    amplitude = float(rng.uniform(0.01, 0.035))
    drift = rng.normal(0.0, amplitude, (knots.size, 2))
    offsets = np.stack(
        [np.interp(along, knots, drift[:, 0]), np.interp(along, knots, drift[:, 1])], axis=1
    )
    tremor = rng.normal(0.0, amplitude * 0.15, dense.shape)
    result: Stroke = dense + offsets + tremor
    return result


def _densify(stroke: Stroke, step: float) -> Stroke:
    """Insert points so that no segment is longer than ``step`` (so jitter can bend it)."""
    deltas = np.diff(stroke, axis=0)
    counts = np.maximum(1, np.ceil(np.hypot(deltas[:, 0], deltas[:, 1]) / step)).astype(np.int64)
    segment = np.repeat(np.arange(deltas.shape[0]), counts)
    first_of_segment = np.repeat(np.cumsum(counts) - counts, counts)
    fraction = (np.arange(segment.size) - first_of_segment + 1) / np.repeat(counts, counts)
    inserted = stroke[segment] + deltas[segment] * fraction[:, None]
    return np.concatenate([stroke[:1], inserted], axis=0)


def _fit_canvas(
    strokes: Sequence[NDArray[np.float64]], size: int, thickness: int
) -> tuple[Canvas, list[NDArray[np.int32]]]:
    """Scale point lists so the drawing's longer side is ``size``; return a canvas for them.

    The returned points are fixed-point (``_SHIFT`` fractional bits) for cv2 drawing.
    """
    points = np.concatenate(strokes, axis=0)
    low = points.min(axis=0)
    extent = points.max(axis=0) - low
    scale = max(size - thickness, 1) / max(float(extent.max()), 1e-9)
    pad = thickness + 2
    width = math.ceil(float(extent[0]) * scale) + 2 * pad + 1
    height = math.ceil(float(extent[1]) * scale) + 2 * pad + 1
    fixed = [np.round(((s - low) * scale + pad) * _ONE).astype(np.int32) for s in strokes]
    return np.zeros((height, width), np.uint8), fixed


def _draw_strokes(strokes: Sequence[Stroke], size: int, thickness: int) -> Canvas:
    canvas, fixed = _fit_canvas(strokes, size, thickness)
    cv2.polylines(canvas, fixed, False, (255,), thickness, cv2.LINE_8, _SHIFT)
    return canvas


def _warp(canvas: Canvas, matrix: NDArray[np.float64]) -> Canvas:
    """Apply a 2x2 linear map to a mask, on a canvas large enough to hold the result."""
    height, width = canvas.shape
    corners = np.array([[0, 0], [width, 0], [0, height], [width, height]], np.float64)
    moved = corners @ matrix.T
    low = moved.min(axis=0)
    out_width, out_height = (np.ceil(moved.max(axis=0) - low) + 2).astype(int)
    affine = np.hstack([matrix, (1.0 - low)[:, None]])
    warped = cv2.warpAffine(
        canvas, affine, (int(out_width), int(out_height)), flags=cv2.INTER_LINEAR, borderValue=(0,)
    )
    return np.asarray(warped, dtype=np.uint8)


def _finish(canvas: Canvas, size: int) -> Mask:
    """Threshold, crop tight, and rescale if the drawing came out noticeably off-size."""
    mask = _crop_tight(canvas >= 128)
    longer = max(mask.shape)
    if abs(longer - size) > max(1, 0.04 * size):
        factor = size / longer
        new_size = (max(1, round(mask.shape[1] * factor)), max(1, round(mask.shape[0] * factor)))
        shrink = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
        scaled = cv2.resize(mask.astype(np.uint8) * 255, new_size, interpolation=shrink)
        resized = np.asarray(scaled) >= 128
        if not resized.any():
            resized = np.asarray(
                cv2.resize(mask.astype(np.uint8), new_size, interpolation=cv2.INTER_NEAREST)
            ).astype(bool)
        mask = _crop_tight(resized)
    return mask


def _crop_tight(mask: NDArray[np.bool_]) -> Mask:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise RuntimeError("glyph rendered no pixels")  # A bug, not bad input.
    return np.ascontiguousarray(mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])
