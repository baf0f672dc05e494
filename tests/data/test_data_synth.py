"""Synthetic scenes: determinism, coverage, exact boxes, visibility, fixtures."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from predictor.data import (
    CLASSES,
    FORMATS,
    Box,
    FixtureObject,
    Format,
    SceneConfig,
    load_dataset,
    render_fixture,
    render_scene,
    synthesize,
)
from predictor.data.boxes import tight_box
from predictor.data.synth import MIN_CONTRAST, Scene

from .helpers import ARTIFACTS, luma

SMALL = SceneConfig(min_side=96, max_side=160)


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = synthesize(tmp_path / "a", 6, seed=11, progress=False)
    synthesize(tmp_path / "b", 6, seed=11, progress=False)
    files = all_files(tmp_path / "a")
    assert len([name for name in files if name.startswith("images/")]) == 6
    assert files == all_files(tmp_path / "b")
    assert first.object_count >= 6


def test_different_seed_gives_different_images(tmp_path: Path) -> None:
    synthesize(tmp_path / "a", 3, seed=11, progress=False)
    synthesize(tmp_path / "b", 3, seed=12, progress=False)
    a, b = all_files(tmp_path / "a"), all_files(tmp_path / "b")
    for name in ("images/000000.jpg", "images/000001.jpg", "images/000002.jpg"):
        assert a[name] != b[name]


def test_longer_run_starts_with_the_shorter_one(tmp_path: Path) -> None:
    synthesize(tmp_path / "short", 2, seed=5, fmt="yolo", progress=False)
    synthesize(tmp_path / "long", 4, seed=5, fmt="yolo", progress=False)
    short, long = all_files(tmp_path / "short"), all_files(tmp_path / "long")
    assert all(long[name] == data for name, data in short.items())


def test_files_on_disk_are_the_rendered_scenes(tmp_path: Path) -> None:
    dataset = synthesize(tmp_path / "d", 3, seed=9, fmt="coco", config=SMALL, progress=False)
    for index, record in enumerate(dataset.images):
        scene = render_scene(np.random.default_rng([9, index]), SMALL)
        assert record.objects == scene.annotations
        decoded = cv2.imread(str(record.image_path), cv2.IMREAD_COLOR)
        assert decoded.shape == scene.image.shape == (record.height, record.width, 3)
        # JPEG at quality 90 stays close to the rendered pixels (saturated colours shift a
        # little through YCbCr); any other scene would be off by tens of levels.
        assert np.abs(decoded.astype(int) - scene.image.astype(int)).mean() < 8


@pytest.mark.parametrize("fmt", FORMATS)
def test_synth_output_loads_in_every_format(tmp_path: Path, fmt: Format) -> None:
    written = synthesize(tmp_path / fmt, 3, seed=2, fmt=fmt, config=SMALL, progress=False)
    loaded = load_dataset(tmp_path / fmt)
    assert loaded.classes == CLASSES
    assert [(r.file_name, r.width, r.height, r.objects) for r in loaded.images] == [
        (r.file_name, r.width, r.height, r.objects) for r in written.images
    ]


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render_scene(np.random.default_rng([1234, i])) for i in range(300)]


def test_every_class_and_style_appears(scenes: list[Scene]) -> None:
    labels = Counter(obj.label for scene in scenes for obj in scene.objects)
    assert set(labels) == set(CLASSES)
    assert min(labels.values()) >= 25, labels
    styles = Counter(
        (obj.style, "digit" if obj.label.isdigit() else "shape")
        for scene in scenes
        for obj in scene.objects
    )
    assert set(styles) == {
        ("font", "digit"),
        ("hand", "digit"),
        ("filled", "shape"),
        ("outline", "shape"),
        ("hand", "shape"),
    }
    counts = Counter(len(scene.objects) for scene in scenes)
    assert min(counts) == 1 and max(counts) == 6


def test_image_sizes_and_object_scales_vary(scenes: list[Scene]) -> None:
    shapes = [scene.image.shape for scene in scenes]
    assert all(256 <= h <= 640 and 256 <= w <= 640 and c == 3 for h, w, c in shapes)
    assert 0 < sum(h == w for h, w, _ in shapes) < len(shapes)
    scales = [
        max(obj.box.width, obj.box.height) / min(scene.image.shape[:2])
        for scene in scenes
        for obj in scene.objects
    ]
    assert max(scales) <= 0.6 * 1.05
    assert min(scales) < 0.1 and max(scales) > 0.45
    assert min(max(obj.box.width, obj.box.height) for s in scenes for obj in s.objects) >= 8


def test_boxes_are_exact_and_disjoint(scenes: list[Scene]) -> None:
    for scene in scenes:
        height, width = scene.image.shape[:2]
        changed = np.any(scene.image != scene.background, axis=2)
        painted = np.zeros((height, width), bool)
        for obj in scene.objects:
            box = obj.box
            assert box.problem(width, height) is None
            assert obj.mask.shape == (box.height, box.width)
            # The mask touches all four sides of its box: the box is tight on the drawing.
            assert tight_box(obj.mask) == Box(0, 0, box.width, box.height)
            region = scene.image[box.ymin : box.ymax, box.xmin : box.xmax]
            assert (region[obj.mask] == obj.color).all()
            painted[box.ymin : box.ymax, box.xmin : box.xmax] |= obj.mask
        # Nothing but the objects' masks differs from the background.
        assert not (changed & ~painted).any()
        for i, a in enumerate(scene.objects):
            for b in scene.objects[i + 1 :]:
                assert not a.box.overlaps(b.box, gap=2), (a.box, b.box)


def test_objects_stand_out_from_their_background(scenes: list[Scene]) -> None:
    for scene in scenes:
        for obj in scene.objects:
            box = obj.box
            under = luma(scene.background[box.ymin : box.ymax, box.xmin : box.xmax])
            difference = np.abs(under - luma(np.array(obj.color, np.float64)))
            assert np.median(difference) >= MIN_CONTRAST
            # Nearly every background pixel around the object differs clearly from it.
            assert np.mean(difference < MIN_CONTRAST / 2) < 0.05


def test_fixture_puts_known_objects_at_known_places(tmp_path: Path) -> None:
    objects: list[FixtureObject | tuple[str, tuple[int, int], int]] = [
        FixtureObject("3", (60, 60), 70, style="font"),
        ("circle", (170, 70), 80),
        FixtureObject("7", (260, 150), 90, color=(0, 0, 200), style="hand"),
    ]
    scene = render_fixture(objects, size=(320, 240), seed=4)
    assert [a.label for a in scene.annotations] == ["3", "circle", "7"]
    is_ink = np.any(scene.image != 255, axis=2)
    for obj, (cx, cy, size) in zip(
        scene.objects, [(60, 60, 70), (170, 70, 80), (260, 150, 90)], strict=True
    ):
        box = obj.box
        assert abs((box.xmin + box.xmax) / 2 - cx) <= 1 and abs((box.ymin + box.ymax) / 2 - cy) <= 1
        assert abs(max(box.width, box.height) - size) <= max(2, 0.05 * size)
        # From pixels alone: the ink near this object has exactly this tight box.
        window = np.zeros_like(is_ink)
        window[max(0, box.ymin - 3) : box.ymax + 3, max(0, box.xmin - 3) : box.xmax + 3] = True
        assert tight_box(is_ink & window) == box
    assert scene.objects[2].color == (0, 0, 200)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(ARTIFACTS / "fixture.jpg"), scene.image)


def test_fixture_rejects_impossible_layouts() -> None:
    with pytest.raises(ValueError, match="touches"):
        render_fixture([("1", (50, 50), 40), ("2", (60, 50), 40)], size=(200, 100))
    with pytest.raises(ValueError, match="leaves the image"):
        render_fixture([("square", (5, 5), 40)], size=(200, 100))
    with pytest.raises(ValueError, match="too close to the background"):
        render_fixture([FixtureObject("4", (50, 50), 40, color=(250, 250, 250))], size=(200, 100))
