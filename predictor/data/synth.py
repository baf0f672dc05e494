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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray
from tqdm import tqdm

from predictor.data.backgrounds import (
    Image,
    add_grain,
    draw_clutter,
    random_color,
    render_background,
    solid,
)
from predictor.data.boxes import Annotation, Box
from predictor.data.classes import CLASSES
from predictor.data.dataset import IMAGES_DIR, Dataset, ImageRecord
from predictor.data.formats import Format, require_empty_dir, write_annotations
from predictor.data.glyphs import Glyph, Mask, render_glyph, render_letter
from predictor.data.photos import PhotoLibrary
from predictor.data.styles import CLUTTER_CHARACTERS, StyleSet, style_set

Color = tuple[int, int, int]

# Luminance (0-255) by which an object must differ from nearly all background under it.
MIN_CONTRAST = 60.0
_LUMA_WEIGHTS = np.array([0.114, 0.587, 0.299])  # B, G, R, as in cv2.COLOR_BGR2GRAY
_SMALLEST_OBJECT = 8  # pixels; below this digits stop being legible
_PLACEMENT_TRIES = 20
_SHRINK_STEPS = 4
_NEGATIVE_PHOTO_SHARE = 0.75
_CLASSIC = style_set("classic")


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
    inner: Mask | None = None
    """Two-tone shapes: the part of the mask painted in ``inner_color``."""
    inner_color: Color | None = None

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
    clutter: tuple[PlacedObject, ...] = ()
    """Unlabelled characters painted beside the objects (label ``letter``)."""

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


def render_scene(
    rng: np.random.Generator,
    config: SceneConfig | None = None,
    styles: StyleSet | None = None,
    photos: PhotoLibrary | None = None,
) -> Scene:
    """Draw one random scene: background, objects, clutter, then the camera's flaws.

    ``styles`` says how (default: the ``classic`` set, which needs no fonts); ``photos``
    supplies photo backgrounds for the share of scenes ``styles.photo_share`` asks for.
    A scene has 1-6 non-overlapping objects, or none for ``styles.negative_share``.
    """
    config = config or SceneConfig()
    styles = styles or _CLASSIC
    width = int(rng.integers(config.min_side, config.max_side + 1))
    height = (
        width if rng.random() < 0.25 else int(rng.integers(config.min_side, config.max_side + 1))
    )
    negative = rng.random() < styles.negative_share
    # Empty scenes go on photos more often than others: the false detections to unlearn
    # are the digits and shapes a model imagines in real-world texture.
    photo_share = max(styles.photo_share, _NEGATIVE_PHOTO_SHARE) if negative else styles.photo_share
    on_photo = photos is not None and rng.random() < photo_share
    background = (
        _photo_background(rng, photos, width, height)
        if photos is not None and on_photo
        else render_background(rng, width, height)
    )
    image = background.copy()
    short_side = min(width, height)
    count = 0 if negative else int(rng.integers(config.min_objects, config.max_objects + 1))
    labels = [CLASSES[int(i)] for i in rng.integers(len(CLASSES), size=count)]
    placed: list[PlacedObject] = []
    for label, size in zip(labels, _object_sizes(rng, config, short_side, count), strict=True):
        obj = _place(rng, image, label, size, placed, config.gap, _glyph_drawer(rng, label, styles))
        if obj is not None:
            _paint(image, obj)
            placed.append(obj)
    for _ in range(100):
        if placed or negative:
            break
        # Only a pathological background defeats every try; a smaller object then fits.
        label = CLASSES[int(rng.integers(len(CLASSES)))]
        size = max(short_side // 6, _SMALLEST_OBJECT)
        obj = _place(rng, image, label, size, placed, 0, _glyph_drawer(rng, label, styles))
        if obj is not None:
            _paint(image, obj)
            placed.append(obj)
    if not placed and not negative and not on_photo:
        raise RuntimeError("no object could be placed with enough contrast")  # a bug
    letters: list[PlacedObject] = []
    if styles.glyphs.fonts and rng.random() < styles.letter_share:
        letters = _add_letters(rng, image, placed, config, styles)
    image = _camera_flaws(rng, image, styles)
    return Scene(image, background, tuple(placed), tuple(letters))


def _object_sizes(
    rng: np.random.Generator, config: SceneConfig, short_side: int, count: int
) -> list[int]:
    """Longer box sides, log-uniform in the configured scale range, largest first."""
    log_scales = rng.uniform(math.log(config.min_scale), math.log(config.max_scale), count)
    # Big objects first: they are the hardest to fit once the image fills up.
    sizes = sorted((round(math.exp(s) * short_side) for s in log_scales), reverse=True)
    return [max(size, _SMALLEST_OBJECT) for size in sizes]


def _photo_background(
    rng: np.random.Generator, photos: PhotoLibrary, width: int, height: int
) -> Image:
    """A photo crop, sometimes with grain and clutter lines on it."""
    image = photos.background(rng, width, height)
    if rng.random() < 0.3:
        image = add_grain(rng, image, amplitude=int(rng.integers(4, 16)))
    if rng.random() < 0.3:
        draw_clutter(rng, image, count=int(rng.integers(1, 4)))
    return image


def _glyph_drawer(rng: np.random.Generator, label: str, styles: StyleSet) -> Callable[[int], Glyph]:
    return lambda size: render_glyph(rng, label, size, styles=styles.glyphs)


def _add_letters(
    rng: np.random.Generator,
    image: Image,
    objects: Sequence[PlacedObject],
    config: SceneConfig,
    styles: StyleSet,
) -> list[PlacedObject]:
    """Paint 1-5 unlabelled characters, clear of every object, as things to ignore."""
    count = int(rng.integers(1, 6))
    fonts = styles.glyphs.fonts
    taken = list(objects)
    for size in _object_sizes(rng, config, min(image.shape[:2]), count):
        character = CLUTTER_CHARACTERS[int(rng.integers(len(CLUTTER_CHARACTERS)))]

        def draw(side: int, character: str = character) -> Glyph:
            return Glyph(render_letter(rng, character, side, fonts), "letter")

        letter = _place(rng, image, "letter", size, taken, config.gap, draw)
        if letter is not None:
            _paint(image, letter)
            taken.append(letter)
    return taken[len(objects) :]


def _camera_flaws(rng: np.random.Generator, image: Image, styles: StyleSet) -> Image:
    """Washed-out contrast and a little blur, for the shares the style set asks."""
    if rng.random() < styles.faded_share:
        keep = float(rng.uniform(0.6, 0.9))
        mean = image.reshape(-1, 3).mean(axis=0)
        faded = mean + (image.astype(np.float32) - mean) * keep
        image = np.clip(np.round(faded), 0, 255).astype(np.uint8)
    if rng.random() < styles.blur_share:
        sigma = float(rng.uniform(0.4, 1.3))
        image = np.asarray(cv2.GaussianBlur(image, (0, 0), sigma), dtype=np.uint8)
    return image


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
        if glyph.inner is not None:
            raise ValueError(f"object {index} ({item.label}): two-tone fixtures are not supported")
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
    styles: StyleSet | None = None,
    photos: PhotoLibrary | None = None,
    quality: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Render ``images`` scenes into a new dataset directory in format ``fmt``.

    Images are ``images/000000.jpg`` onwards, drawn in ``styles`` (default ``classic``)
    on ``photos`` where the style set asks for them. JPEG quality is ``quality``, or
    drawn per image from the style set's range when None. ``out_dir`` must be missing
    or empty. Shows a tqdm progress bar on stderr unless ``progress`` is False.
    """
    if images < 0:
        raise ValueError("number of images must not be negative")
    if seed < 0:
        raise ValueError("seed must not be negative")
    styles = styles or _CLASSIC
    root = Path(out_dir)
    require_empty_dir(root)
    images_dir = root / IMAGES_DIR
    images_dir.mkdir(parents=True, exist_ok=True)
    dataset = Dataset(classes=CLASSES)
    for index in tqdm(range(images), desc="synth", unit="img", disable=not progress):
        rng = np.random.default_rng([seed, index])
        scene = render_scene(rng, config, styles, photos)
        low, high = styles.quality
        image_quality = quality if quality is not None else int(rng.integers(low, high + 1))
        file_name = f"{index:06d}.jpg"
        image_path = images_dir / file_name
        image_path.write_bytes(encode_jpeg(scene.image, image_quality))
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
    draw: Callable[[int], Glyph],
) -> PlacedObject | None:
    """Find a free, high-contrast spot for a new object, shrinking it if none is found.

    ``draw`` renders the object at a given size.
    """
    height, width = image.shape[:2]
    for _ in range(_SHRINK_STEPS):
        glyph = draw(size)
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
                    inner_color = _second_tone(rng, color) if glyph.inner is not None else None
                    return PlacedObject(
                        label, box, glyph.mask, color, glyph.style, glyph.inner, inner_color
                    )
        size = int(size * 0.7)
        if size < _SMALLEST_OBJECT:
            break
    return None


def _second_tone(rng: np.random.Generator, border: Color) -> Color:
    """A fill colour that stands clear of its border, so the outline stays visible."""
    for _ in range(20):
        fill = random_color(rng)
        if abs(_luma(fill) - _luma(border)) >= MIN_CONTRAST:
            return fill
    return (255, 255, 255) if _luma(border) < 128 else (0, 0, 0)


def _paint(image: Image, obj: PlacedObject) -> None:
    box = obj.box
    region = image[box.ymin : box.ymax, box.xmin : box.xmax]
    # cv2.copyTo writes through the view; it is ~20x faster than boolean-mask assignment.
    written = cv2.copyTo(solid(obj.color, box.width, box.height), obj.mask.view(np.uint8), region)
    if written is not region:
        raise RuntimeError("cv2.copyTo did not paint in place")
    if obj.inner is not None and obj.inner_color is not None:
        fill = solid(obj.inner_color, box.width, box.height)
        if cv2.copyTo(fill, obj.inner.view(np.uint8), region) is not region:
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
