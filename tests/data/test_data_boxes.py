"""The box type, its conversions, and image-size reading."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from predictor.data.boxes import Box, format_yolo_value, round_half_up, tight_box
from predictor.data.errors import DatasetError
from predictor.data.imageinfo import read_image_size


def test_voc_is_one_based_inclusive() -> None:
    # The top-left pixel alone: VOC calls it (1, 1)-(1, 1).
    assert Box(0, 0, 1, 1).to_voc() == (1, 1, 1, 1)
    assert Box(10, 20, 30, 40).to_voc() == (11, 21, 30, 40)
    assert Box.from_voc(11, 21, 30, 40) == Box(10, 20, 30, 40)


def test_coco_shares_edges() -> None:
    assert Box(10, 20, 30, 45).to_coco() == (10, 20, 20, 25)
    assert Box.from_coco(10, 20, 20, 25) == Box(10, 20, 30, 45)
    # Sub-pixel boxes from other tools: each edge goes to the nearest pixel edge.
    assert Box.from_coco(10.4, 19.6, 20.2, 5.0) == Box(10, 20, 31, 25)


def test_yolo_is_normalised_centre_and_size() -> None:
    assert Box(0, 0, 640, 480).to_yolo(640, 480) == (0.5, 0.5, 1.0, 1.0)
    assert Box(0, 0, 1, 1).to_yolo(4, 2) == (0.125, 0.25, 0.25, 0.5)
    assert Box.from_yolo(0.125, 0.25, 0.25, 0.5, 4, 2) == Box(0, 0, 1, 1)


def test_round_half_up() -> None:
    assert [round_half_up(v) for v in (-0.5, 0.49, 0.5, 1.5, 2.5)] == [0, 0, 1, 2, 3]


def test_problem_names_empty_and_outside_boxes() -> None:
    assert Box(0, 0, 10, 10).problem(10, 10) is None
    assert "empty box" in (Box(5, 0, 5, 10).problem(10, 10) or "")
    assert "empty box" in (Box(6, 0, 5, 10).problem(10, 10) or "")
    assert "outside the 10x10 image" in (Box(0, 0, 11, 10).problem(10, 10) or "")
    assert "outside" in (Box(-1, 0, 5, 5).problem(10, 10) or "")


def test_overlaps_with_gap() -> None:
    a = Box(0, 0, 10, 10)
    assert not a.overlaps(Box(10, 0, 20, 10))  # touching edges share no pixel
    assert a.overlaps(Box(10, 0, 20, 10), gap=1)
    assert not a.overlaps(Box(12, 0, 20, 10), gap=2)
    assert a.overlaps(Box(9, 9, 20, 20))


def test_tight_box() -> None:
    mask = np.zeros((10, 12), bool)
    assert tight_box(mask) is None
    mask[2, 3] = mask[7, 9] = True
    assert tight_box(mask) == Box(3, 2, 10, 8)


@given(
    size=st.tuples(st.integers(1, 1_000_000), st.integers(1, 1_000_000)),
    corners=st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)),
)
def test_yolo_text_round_trips_for_huge_images(
    size: tuple[int, int], corners: tuple[float, float, float, float]
) -> None:
    width, height = size
    xs = sorted(round(c * width) for c in corners[:2])
    ys = sorted(round(c * height) for c in corners[2:])
    box = Box(xs[0], ys[0], max(xs[1], xs[0] + 1), max(ys[1], ys[0] + 1))
    cx, cy, w, h = (float(format_yolo_value(v)) for v in box.to_yolo(width, height))
    assert Box.from_yolo(cx, cy, w, h, width, height) == box


@pytest.mark.parametrize(
    ("suffix", "params"),
    [
        (".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90]),
        (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
        (".png", []),
        (".bmp", []),
    ],
)
def test_read_image_size(tmp_path: Path, suffix: str, params: list[int]) -> None:
    image = np.zeros((37, 53, 3), np.uint8)
    path = tmp_path / f"image{suffix}"
    assert cv2.imwrite(str(path), image, params)
    assert read_image_size(path) == (53, 37)


def test_read_image_size_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing image file") as missing:
        read_image_size(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(missing.value)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"junk\.jpg: not a readable image"):
        read_image_size(junk)
