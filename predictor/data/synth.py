"""Synthetic detection scenes of digits and shapes, with exact ground truth.

Each object is rendered into its own binary mask (:mod:`predictor.data.glyphs`), so its
box is the tight box of exactly the pixels painted for it. Objects are placed by
reject-and-retry so that boxes never overlap or touch (a gap of ``SceneConfig.gap``
pixels), and each gets a colour whose luminance stands clear of the background under
its box, so every labelled object is visible (also in grey-scale).

Determinism: image ``i`` of a run with seed ``s`` is drawn from
``numpy.random.default_rng([s, i])`` and nothing else, so the same seed gives the same
bytes, and a longer run begins with the images of a shorter one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from predictor.data.backgrounds import Image, random_color, render_background, solid
from predictor.data.boxes import Annotation, Box
from predictor.data.classes import CLASSES
from predictor.data.dataset import IMAGES_DIR, Dataset, ImageRecord
from predictor.data.formats import Format, require_empty_dir, write_annotations
from predictor.data.glyphs import Mask, render_glyph

Color = tuple[int, int, int]

# Luminance (0-255) by which an object must differ from nearly all background under it.
MIN_CONTRAST = 60.0
_LUMA_WEIGHTS = np.array([0.114, 0.587, 0.299])  # B, G, R, as in cv2.COLOR_BGR2GRAY
_SMALLEST_OBJECT = 8  # pixels; below this digits stop being legible
_PLACEMENT_TRIES = 20
_SHRINK_STEPS = 4


@dataclass(frozen=True)
class SceneConfig:
    """How scenes vary. Object scale is the longer box side over the image's shorter side."""

    min_side: int = 256
    max_side: int = 640
    min_objects: int = 1
    max_objects: int = 6
    min_scale: float = 0.08
    max_scale: float = 0.6
    gap: int = 2
    """Minimum number of background pixels between any two boxes."""

    def __post_init__(self) -> None:
        if not 32 <= self.min_side <= self.max_side:
            raise ValueError("need 32 <= min_side <= max_side")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if not 0 < self.min_scale <= self.max_scale <= 1:
            raise ValueError("need 0 < min_scale <= max_scale <= 1")
        if self.gap < 0:
            raise ValueError("gap must not be negative")


@dataclass(frozen=True)
class PlacedObject:
    """One object of a scene: its label, box, mask (the box's shape), colour and style."""

    label: str
    box: Box
    mask: Mask
    color: Color
    style: str

    @property
    def annotation(self) -> Annotation:
        """The ground-truth label and box."""
        return Annotation(self.label, self.box)


@dataclass(frozen=True)
class Scene:
    """A rendered image (BGR uint8), the background it was painted on, and its objects."""

    image: Image
    background: Image
    objects: tuple[PlacedObject, ...]

    @property
    def annotations(self) -> list[Annotation]:
        """Ground truth for the image, in placement order."""
        return [obj.annotation for obj in self.objects]


@dataclass(frozen=True)
class FixtureObject:
    """An object to put at a known place in :func:`render_fixture`."""

    label: str
    center: tuple[int, int]
    """Pixel ``(x, y)`` at which the box is centred."""
    size: int
    """Longer side of the box in pixels (approximately: the drawing decides exactly)."""
    color: Color = (0, 0, 0)
    style: str | None = None
    """Drawing style (see :mod:`predictor.data.glyphs`); None picks one from the seed."""


def render_scene(rng: np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Draw one random scene: background, clutter and 1-6 non-overlapping objects."""
    config = config or SceneConfig()
    width = int(rng.integers(config.min_side, config.max_side + 1))
    height = (
        width if rng.random() < 0.25 else int(rng.integers(config.min_side, config.max_side + 1))
    )
    background = render_background(rng, width, height)
    image = background.copy()
    short_side = min(width, height)
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    labels = [CLASSES[int(i)] for i in rng.integers(len(CLASSES), size=count)]
    log_scales = rng.uniform(math.log(config.min_scale), math.log(config.max_scale), count)
    # Big objects first: they are the hardest to fit once the image fills up.
    sizes = sorted((round(math.exp(s) * short_side) for s in log_scales), reverse=True)
    placed: list[PlacedObject] = []
    for label, size in zip(labels, sizes, strict=True):
        obj = _place(rng, image, label, max(size, _SMALLEST_OBJECT), placed, config.gap)
        if obj is not None:
            _paint(image, obj)
            placed.append(obj)
    for _ in range(100):
        if placed:
            break
        # Only a pathological background defeats every try; a smaller object then fits.
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        obj = _place(rng, image, label, max(short_side // 6, _SMALLEST_OBJECT), placed, 0)
        if obj is not None:
            _paint(image, obj)
            placed.append(obj)
    if not placed:
        raise RuntimeError("no object could be placed with enough contrast")  # a bug
    return Scene(image=image, background=background, objects=tuple(placed))


def render_fixture(
    objects: Sequence[FixtureObject | tuple[str, tuple[int, int], int]],
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    background: Color = (255, 255, 255),
) -> Scene:
    """Draw given objects at given places on a flat background, for test images.

    ``objects`` are FixtureObjects or ``(label, (cx, cy), size)`` tuples (drawn black);
    ``size`` is the image's ``(width, height)``. The seed only picks drawing details.
    Raises ValueError if an object leaves the image, touches another, or would be too
    faint against the background.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    image = solid(background, width, height)
    flat = image.copy()
    placed: list[PlacedObject] = []
    for index, spec in enumerate(objects):
        item = spec if isinstance(spec, FixtureObject) else FixtureObject(*spec)
        if abs(_luma(item.color) - _luma(background)) < MIN_CONTRAST:
            raise ValueError(f"object {index} ({item.label}): colour too close to the background")
        glyph = render_glyph(rng, item.label, item.size, item.style)
        mask_height, mask_width = glyph.mask.shape
        x = item.center[0] - mask_width // 2
        y = item.center[1] - mask_height // 2
        box = Box(x, y, x + mask_width, y + mask_height)
        if box.problem(width, height):
            raise ValueError(
                f"object {index} ({item.label}): box {box.describe()} leaves the image"
            )
        for other in placed:
            if box.overlaps(other.box, gap=1):
                raise ValueError(f"object {index} ({item.label}) touches {other.label}")
        obj = PlacedObject(item.label, box, glyph.mask, item.color, glyph.style)
        _paint(image, obj)
        placed.append(obj)
    return Scene(image=image, background=flat, objects=tuple(placed))


def encode_jpeg(image: Image, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR image (deterministic for a given OpenCV build)."""
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return bytes(encoded.tobytes())


def synthesize(
    out_dir: Path | str,
    images: int,
    seed: int,
    fmt: Format = "voc",
    *,
    config: SceneConfig | None = None,
    quality: int = 90,
    progress: bool = True,
) -> Dataset:
    """Render ``images`` scenes into a new dataset directory in format ``fmt``.

    Images are ``images/000000.jpg`` onwards. ``out_dir`` must be missing or empty.
    Shows a tqdm progress bar on stderr unless ``progress`` is False.
    """
    if images < 0:
        raise ValueError("number of images must not be negative")
    if seed < 0:
        raise ValueError("seed must not be negative")
    root = Path(out_dir)
    require_empty_dir(root)
    images_dir = root / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(classes=CLASSES)
    for index in tqdm(range(images), desc="synth", unit="img", disable=not progress):
        scene = render_scene(np.random.default_rng([seed, index]), config)
        file_name = f"{index:06d}.jpg"
        image_path = images_dir / file_name
        image_path.write_bytes(encode_jpeg(scene.image, quality))
        height, width = scene.image.shape[:2]
        dataset.images.append(ImageRecord(file_name, image_path, width, height, scene.annotations))
    write_annotations(dataset, root, fmt)
    return dataset


def _place(
    rng: np.random.Generator,
    image: Image,
    label: str,
    size: int,
    placed: Sequence[PlacedObject],
    gap: int,
) -> PlacedObject | None:
    """Find a free, high-contrast spot for a new object, shrinking it if none is found."""
    height, width = image.shape[:2]
    for _ in range(_SHRINK_STEPS):
        glyph = render_glyph(rng, label, size)
        mask_height, mask_width = glyph.mask.shape
        if mask_width <= width and mask_height <= height:
            for _ in range(_PLACEMENT_TRIES):
                x = int(rng.integers(0, width - mask_width + 1))
                y = int(rng.integers(0, height - mask_height + 1))
                box = Box(x, y, x + mask_width, y + mask_height)
                if any(box.overlaps(other.box, gap) for other in placed):
                    continue
                color = _contrasting_color(rng, image[y : box.ymax, x : box.xmax])
                if color is not None:
                    return PlacedObject(label, box, glyph.mask, color, glyph.style)
        size = int(size * 0.7)
        if size < _SMALLEST_OBJECT:
            break
    return None


def _paint(image: Image, obj: PlacedObject) -> None:
    box = obj.box
    region = image[box.ymin : box.ymax, box.xmin : box.xmax]
    # cv2.copyTo writes through the view; it is ~20x faster than boolean-mask assignment.
    written = cv2.copyTo(solid(obj.color, box.width, box.height), obj.mask.view(np.uint8), region)
    if written is not region:
        raise RuntimeError("cv2.copyTo did not paint in place")


def _luma(color: Sequence[float] | NDArray[np.float64]) -> float:
    return float(np.dot(np.asarray(color, dtype=np.float64), _LUMA_WEIGHTS))


def _contrasting_color(rng: np.random.Generator, region: Image) -> Color | None:
    """A random colour whose luminance clears the region's by MIN_CONTRAST, or None.

    "The region's luminance" is its 2nd-98th percentile range, so isolated grain or a
    thin clutter line does not rule out every colour, yet the object stands out from
    nearly every pixel it touches.
    """
    step = max(1, min(region.shape[:2]) // 24)
    sample = region[::step, ::step].reshape(-1, 3).astype(np.float64) @ _LUMA_WEIGHTS
    ordered = np.sort(sample)
    last = ordered.size - 1
    # 2nd and 98th percentiles (np.percentile is several times slower on small arrays).
    low, high = float(ordered[int(0.02 * last)]), float(ordered[math.ceil(0.98 * last)])
    # Inclusive luminance ranges allowed for the object, kept 1 away from their limits
    # so that rounding the colour to integers cannot leave them.
    ranges = [
        (lo, hi)
        for lo, hi in ((0.0, low - MIN_CONTRAST - 1), (high + MIN_CONTRAST + 1, 255.0))
        if hi >= lo
    ]
    if not ranges:
        return None
    color = np.asarray(random_color(rng), dtype=np.float64)
    luma = _luma(color)
    if any(lo <= luma <= hi for lo, hi in ranges):
        return _as_color(color)
    lengths = np.array([hi - lo + 1e-6 for lo, hi in ranges])
    lo, hi = ranges[int(rng.choice(len(ranges), p=lengths / lengths.sum()))]
    target = float(rng.uniform(lo, hi))
    # Scale towards black or white: keeps the hue, and luminance is linear in BGR.
    if target < luma:
        color = color * (target / luma)
    else:
        color = 255.0 - (255.0 - color) * ((255.0 - target) / (255.0 - luma))
    return _as_color(color)


def _as_color(color: NDArray[np.float64]) -> Color:
    b, g, r = (int(v) for v in np.clip(np.round(color), 0, 255))
    return (b, g, r)
