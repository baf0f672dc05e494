"""Augmentations keep every box on its object, checked against the augmented pixels.

Each test image holds up to three objects, object k drawn only in colour channel k, so
that objects may overlap and interpolation can never mix one object into another: the
pixels of object k after any augmentation are simply ``image[..., k] >= 128``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from predictor.data import CLASSES, render_scene
from predictor.data.augment import (
    TrainAugment,
    check_boxes,
    color_jitter,
    crop,
    expand,
    hflip,
    random_crop,
    resize,
)
from predictor.data.boxes import Box, boxes_to_array, tight_box
from predictor.data.glyphs import render_glyph

from .helpers import ARTIFACTS

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Layout:
    image: NDArray[np.uint8]
    boxes: NDArray[np.int64]
    kinds: list[str]


def draw_mask(
    draw: st.DrawFn, kind: str, width: int, height: int, min_size: int, max_fraction: float
) -> NDArray[np.bool_]:
    max_width = max(min_size, int(width * max_fraction))
    max_height = max(min_size, int(height * max_fraction))
    if kind == "rect":
        return np.ones(
            (draw(st.integers(min_size, max_height)), draw(st.integers(min_size, max_width))), bool
        )
    if kind == "disc":
        # Twice the size of a rectangle: a disc's thin left/right tips fade first when an
        # image shrinks in y and stretches in x.
        largest = min(max_width, max_height)
        diameter = draw(st.integers(min(max(2 * min_size, 3), largest), largest))
        canvas = np.zeros((diameter + 2, diameter + 2), np.uint8)
        centre = round((diameter + 1) / 2 * 8)
        cv2.circle(canvas, (centre, centre), round((diameter - 1) / 2 * 8), (1,), -1, cv2.LINE_8, 3)
        crop_box = tight_box(canvas)
        assert crop_box is not None
        return canvas[crop_box.ymin : crop_box.ymax, crop_box.xmin : crop_box.xmax] > 0
    label = draw(st.sampled_from(CLASSES))
    seed = draw(st.integers(0, 2**32 - 1))
    size = draw(st.integers(6, int(min(max_width, max_height) * 0.9)))
    return render_glyph(np.random.default_rng(seed), label, size).mask


@st.composite
def layouts(
    draw: st.DrawFn,
    kinds: tuple[str, ...] = ("rect", "disc", "glyph"),
    min_size: int = 1,
    max_fraction: float = 1.0,
) -> Layout:
    width, height = draw(st.integers(24, 160)), draw(st.integers(24, 160))
    image = np.zeros((height, width, 3), np.uint8)
    chosen: list[str] = []
    for channel in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(kinds))
        mask = draw_mask(draw, kind, width, height, min_size, max_fraction)
        mask_height, mask_width = mask.shape
        x = draw(st.integers(0, width - mask_width))
        y = draw(st.integers(0, height - mask_height))
        image[y : y + mask_height, x : x + mask_width, channel][mask] = 255
        chosen.append(kind)
    # The ground truth comes from the pixels, not from where we meant to draw.
    boxes = [object_box(image, channel) for channel in range(len(chosen))]
    assert all(box is not None for box in boxes)
    return Layout(image, boxes_to_array([box for box in boxes if box]), chosen)


def object_box(image: NDArray[np.uint8], channel: int) -> Box | None:
    return tight_box(image[:, :, channel] >= 128)


def as_box(row: NDArray[np.int64]) -> Box:
    return Box(*(int(v) for v in row))


def assert_valid(boxes: NDArray[np.int64], width: int, height: int) -> None:
    assert boxes.dtype == np.int64
    assert ((boxes[:, 0] >= 0) & (boxes[:, 1] >= 0)).all()
    assert ((boxes[:, 2] <= width) & (boxes[:, 3] <= height)).all()
    assert ((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])).all()


@SETTINGS
@given(layout=layouts())
def test_hflip_boxes_are_tight_on_flipped_pixels(layout: Layout) -> None:
    image, boxes = hflip(layout.image, layout.boxes)
    assert (image == layout.image[:, ::-1]).all()
    for channel, row in enumerate(boxes):
        assert object_box(image, channel) == as_box(row)


@SETTINGS
@given(layout=layouts(), data=st.data(), min_visible=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_crop_clips_boxes_and_drops_mostly_hidden_objects(
    layout: Layout, data: st.DataObject, min_visible: float
) -> None:
    height, width = layout.image.shape[:2]
    x0 = data.draw(st.integers(0, width - 1))
    x1 = data.draw(st.integers(x0 + 1, width))
    y0 = data.draw(st.integers(0, height - 1))
    y1 = data.draw(st.integers(y0 + 1, height))
    image, boxes, keep = crop(layout.image, layout.boxes, (x0, y0, x1, y1), min_visible)
    assert image.shape == (y1 - y0, x1 - x0, 3)
    assert (image == layout.image[y0:y1, x0:x1]).all()
    assert_valid(boxes, x1 - x0, y1 - y0)
    assert len(boxes) == int(keep.sum())
    kept = iter(boxes)
    for channel, (original, kind) in enumerate(zip(layout.boxes, layout.kinds, strict=True)):
        ox0, oy0, ox1, oy1 = (int(v) for v in original)
        clipped = Box(max(ox0, x0) - x0, max(oy0, y0) - y0, min(ox1, x1) - x0, min(oy1, y1) - y0)
        area = (ox1 - ox0) * (oy1 - oy0)
        visible = max(0, clipped.width) * max(0, clipped.height)
        assert bool(keep[channel]) == (visible > 0 and visible >= min_visible * area)
        if not keep[channel]:
            continue
        box = as_box(next(kept))
        assert box == clipped
        pixels = object_box(image, channel)
        inside = x0 <= ox0 and y0 <= oy0 and ox1 <= x1 and oy1 <= y1
        if inside or kind == "rect":
            assert pixels == box
        elif pixels is not None:
            # A cut glyph: every remaining pixel lies inside its clipped box.
            assert box.xmin <= pixels.xmin and box.ymin <= pixels.ymin
            assert pixels.xmax <= box.xmax and pixels.ymax <= box.ymax


@SETTINGS
@given(
    data=st.data(),
    factors=st.tuples(st.floats(0.34, 3.0), st.floats(0.34, 3.0)),
    interpolation=st.sampled_from([None, cv2.INTER_LINEAR, cv2.INTER_AREA]),
)
def test_resize_boxes_match_resized_pixels_within_a_pixel(
    data: st.DataObject, factors: tuple[float, float], interpolation: int | None
) -> None:
    # Objects at least 4 px in the result, so that interpolation cannot erase them.
    min_size = math.ceil(4 / min(factors))
    layout = data.draw(layouts(kinds=("rect", "disc"), min_size=min_size))
    height, width = layout.image.shape[:2]
    size = (max(1, round(width * factors[0])), max(1, round(height * factors[1])))
    image, boxes = resize(layout.image, layout.boxes, size, interpolation)
    assert image.shape == (size[1], size[0], 3)
    assert_valid(boxes, *size)
    for channel, row in enumerate(boxes):
        pixels = object_box(image, channel)
        assert pixels is not None
        assert np.abs(np.array(pixels.as_tuple()) - row).max() <= 1, (pixels, row)


def test_resize_never_collapses_a_box() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    boxes = np.array([[0, 0, 1, 1], [99, 99, 100, 100], [50, 10, 51, 90]], np.int64)
    _, small = resize(image, boxes, (10, 10))
    assert small.tolist() == [[0, 0, 1, 1], [9, 9, 10, 10], [5, 1, 6, 9]]


@SETTINGS
@given(layout=layouts(), data=st.data())
def test_expand_moves_boxes_with_the_image(layout: Layout, data: st.DataObject) -> None:
    height, width = layout.image.shape[:2]
    new_width = data.draw(st.integers(width, 3 * width))
    new_height = data.draw(st.integers(height, 3 * height))
    offset = (
        data.draw(st.integers(0, new_width - width)),
        data.draw(st.integers(0, new_height - height)),
    )
    image, boxes = expand(layout.image, layout.boxes, (new_width, new_height), offset)
    assert image.shape == (new_height, new_width, 3)
    for channel, row in enumerate(boxes):
        assert object_box(image, channel) == as_box(row)


@SETTINGS
@given(
    layout=layouts(kinds=("rect",), min_size=12, max_fraction=0.7),
    seed=st.integers(0, 2**32 - 1),
    out_size=st.tuples(st.integers(64, 200), st.integers(64, 200)),
)
def test_training_pipeline_keeps_boxes_on_objects(
    layout: Layout, seed: int, out_size: tuple[int, int]
) -> None:
    labels = np.arange(len(layout.boxes), dtype=np.int64)  # label = the object's channel
    # A black surround keeps "pixel >= 128" the object's edge after interpolation; the
    # default (mean colour) fill would shift that threshold, not the object.
    augment = TrainAugment(out_size=out_size, expand_fill=(0, 0, 0), mirror_safe=None, jitter=False)
    image, boxes, kept_labels = augment(
        np.random.default_rng(seed), layout.image, layout.boxes, labels
    )
    assert image.shape == (out_size[1], out_size[0], 3)
    assert_valid(boxes, *out_size)
    assert len(boxes) == len(kept_labels) >= 1
    for row, channel in zip(boxes, kept_labels, strict=True):
        pixels = object_box(image, int(channel))
        assert pixels is not None
        assert np.abs(np.array(pixels.as_tuple()) - row).max() <= 1, (pixels, row)
    # Colour jitter draws from its own stream: the geometry is the same with it on.
    jittered = TrainAugment(out_size=out_size, expand_fill=(0, 0, 0), mirror_safe=None, jitter=True)
    image2, boxes2, labels2 = jittered(
        np.random.default_rng(seed), layout.image, layout.boxes, labels
    )
    assert (boxes2 == boxes).all() and (labels2 == kept_labels).all()
    assert image2.shape == image.shape


def test_pipeline_never_mirrors_asymmetric_digits() -> None:
    image = np.zeros((40, 60, 3), np.uint8)
    image[5:20, 2:10] = 255
    boxes = np.array([[2, 5, 10, 20]], np.int64)
    always_flip = TrainAugment(
        out_size=(60, 40),
        expand_probability=0,
        crop_probability=0,
        flip_probability=1,
        jitter=False,
    )
    rng = np.random.default_rng(0)
    _, two, _ = always_flip(rng, image, boxes, np.array([CLASSES.index("2")]))
    _, circle, _ = always_flip(rng, image, boxes, np.array([CLASSES.index("circle")]))
    assert two.tolist() == [[2, 5, 10, 20]]
    assert circle.tolist() == [[50, 5, 58, 20]]


@SETTINGS
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1))
def test_random_crop_keeps_an_object(layout: Layout, seed: int) -> None:
    image, boxes, keep = random_crop(np.random.default_rng(seed), layout.image, layout.boxes)
    assert keep.any()
    assert_valid(boxes, image.shape[1], image.shape[0])


def test_color_jitter_changes_only_colours() -> None:
    scene = render_scene(np.random.default_rng(3))
    a = color_jitter(np.random.default_rng(1), scene.image)
    b = color_jitter(np.random.default_rng(1), scene.image)
    assert a.shape == scene.image.shape and a.dtype == np.uint8
    assert (a == b).all()
    assert np.abs(a.astype(int) - scene.image.astype(int)).mean() > 1
    same = color_jitter(np.random.default_rng(1), scene.image, 0.0, 0.0, 0.0, 0.0)
    assert np.abs(same.astype(int) - scene.image.astype(int)).max() <= 1


def test_inputs_are_not_modified_and_bad_boxes_are_refused() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    boxes = np.array([[1, 1, 5, 5]], np.int64)
    before = boxes.copy()
    hflip(image, boxes)
    resize(image, boxes, (20, 20))
    crop(image, boxes, (0, 0, 3, 3))
    assert (boxes == before).all()
    for bad in ([[5, 1, 5, 5]], [[6, 1, 5, 5]], [[-1, 0, 5, 5]], [[0, 0, 11, 5]], [[0.5, 0, 5, 5]]):
        with pytest.raises(ValueError):
            check_boxes(np.array(bad), 10, 10)
    with pytest.raises(ValueError, match="crop window"):
        crop(image, boxes, (0, 0, 11, 5))


def test_write_augmented_example_with_boxes() -> None:
    """Leaves test-artifacts/data/augmented_boxes.png for a human to look at."""
    scene = render_scene(np.random.default_rng(2024))
    labels = np.array([CLASSES.index(a.label) for a in scene.annotations], np.int64)
    boxes = boxes_to_array([a.box for a in scene.annotations])
    augment = TrainAugment(
        out_size=(400, 400), expand_probability=1.0, crop_probability=1.0, min_crop_scale=0.6
    )
    image, out_boxes, out_labels = augment(np.random.default_rng(5), scene.image, boxes, labels)
    assert_valid(out_boxes, 400, 400)
    panels = []
    for picture, rows, names in ((scene.image, boxes, labels), (image, out_boxes, out_labels)):
        canvas = cv2.resize(picture, (400, 400)) if picture is scene.image else picture.copy()
        sx, sy = 400 / picture.shape[1], 400 / picture.shape[0]
        for (x0, y0, x1, y1), label in zip(rows.tolist(), names.tolist(), strict=True):
            top_left = (round(x0 * sx), round(y0 * sy))
            cv2.rectangle(
                canvas, top_left, (round(x1 * sx) - 1, round(y1 * sy) - 1), (0, 0, 255), 1
            )
            cv2.putText(
                canvas,
                CLASSES[label],
                (top_left[0], max(12, top_left[1] - 3)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.45,
                (0, 0, 255),
                1,
            )
        panels.append(canvas)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "augmented_boxes.png"
    assert cv2.imwrite(str(path), np.hstack(panels))
    assert path.stat().st_size > 10_000
