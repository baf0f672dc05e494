"""The shipped model finds what is really there: the original service's test, and an mAP floor.

These tests check WHAT is detected, so a regression anywhere between the JPEG
bytes and the JSON boxes (colour order, normalisation, resizing, box scaling,
orientation) fails the suite, not just a change of JSON shape.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from predictor.config import SHIPPED_MODEL_EDGE, SHIPPED_MODEL_PREFIX
from predictor.data import synthesize
from predictor.data.photos import (
    GCOMPRIS_PARTS,
    GCOMPRIS_RESOURCES,
    write_gcompris_photos,
    write_negatives,
)
from predictor.data.styles import style_set
from predictor.data.synth import FixtureObject, encode_jpeg, render_fixture
from predictor.detections import Detection
from predictor.runtime.render import draw_detections
from predictor.training.detection_metrics import iou_matrix
from predictor.training.evaluate import evaluate_checkpoint, evaluate_negatives
from tests.support.server_process import ServerProcess

from .conftest import REPO_ROOT, known_objects
from .convert.photos import load_photo, photo_annotations

SHIPPED = REPO_ROOT / SHIPPED_MODEL_PREFIX
# Held-out scenes: a seed the model was never trained or validated on, in the training
# styles; and scenes in the styles training never saw (models/README.md). Both here on
# procedural backgrounds only: the wallpapers are not installed for the tests.
HELD_OUT_SEED = 3
WITHHELD_SEED = 4
HELD_OUT_IMAGES = 150
MAP50_FLOOR = 0.93
CLASS_AP50_FLOOR = 0.85
WITHHELD_MAP50_FLOOR = 0.90
WITHHELD_CLASS_AP50_FLOOR = 0.75
# Issue 16 asks for none. The shipped model makes 1 in 12 photos, the cup's rim in coffee
# (models/README.md; the detector alone, without its crop verifier, made 4; the models
# before it 3 and 14): this guards against more, until the target is reached.
MAX_FALSE_DETECTIONS_IN_NEGATIVES = 1


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two (xmin, ymin, xmax, ymax) boxes."""
    return float(iou_matrix([a], [b])[0, 0])


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[ServerProcess]:
    assert Path(f"{SHIPPED}-symbol.json").is_file(), f"{SHIPPED} is not committed"
    # No model settings: the server's default, both shipped models (COCO first, then digits).
    with ServerProcess({"REST_HOST": "127.0.0.1"}) as server:
        yield server


def test_original_service_test_on_the_shipped_model(
    shipped_server: ServerProcess, artifacts: Path
) -> None:
    fixture = known_objects()
    ok, jpeg = cv2.imencode(".jpg", fixture.image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    status, payload = shipped_server.request("/predict?model=digits", jpeg.tobytes())
    assert status == 200
    found = payload["prediction"]
    detections = [
        Detection(d["objectClass"], d["probability"], d["x"], d["y"], d["width"], d["height"])
        for d in found
    ]
    drawn = draw_detections(fixture.image, detections)
    cv2.imwrite(str(artifacts / "original_service_test.jpg"), drawn)

    assert sorted(d["objectClass"] for d in found) == ["3", "7", "circle"], found
    for truth in fixture.objects:
        (match,) = [d for d in found if d["objectClass"] == truth.label]
        box = (match["x"], match["y"], match["x"] + match["width"], match["y"] + match["height"])
        overlap = iou(box, truth.box.as_tuple())
        assert overlap >= 0.5, (truth.label, box, truth.box.as_tuple(), overlap)


def test_original_service_test_on_real_photos_with_the_coco_model(
    shipped_server: ServerProcess, artifacts: Path
) -> None:
    """A real photo in, the right COCO class first with its box: the original test, for real.

    The photos ship with scikit-image and matplotlib; their boxes were annotated
    once by eye (tests/convert/photo_boxes.json). `chelsea` must pass, and three
    of the other four (the coffee cup is the known miss: the model ranks the
    table under it first, models/README.md).
    """
    passed = {}
    for name, truth in photo_annotations().items():
        pixels = np.ascontiguousarray(load_photo(name)[:, :, ::-1])
        ok, jpeg = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        # No ?model=: the default model of the default server is the COCO detector.
        status, payload = shipped_server.request("/predict", jpeg.tobytes())
        assert status == 200, payload
        found = payload["prediction"]
        detections = [
            Detection(d["objectClass"], d["probability"], d["x"], d["y"], d["width"], d["height"])
            for d in found
        ]
        cv2.imwrite(str(artifacts / f"coco_{name}.jpg"), draw_detections(pixels, detections))
        if not found:
            passed[name] = (None, 0.0)
            continue
        first = found[0]
        box = (first["x"], first["y"], first["x"] + first["width"], first["y"] + first["height"])
        overlap = iou(box, tuple(truth["box"]))
        passed[name] = (first["objectClass"], overlap)
    right = {n for n, (c, o) in passed.items() if c == photo_annotations()[n]["class"] and o >= 0.5}
    assert "chelsea" in right, passed
    assert len(right - {"chelsea"}) >= 3, passed


@pytest.mark.parametrize(
    ("styles", "seed", "floor", "class_floor"),
    [
        ("train", HELD_OUT_SEED, MAP50_FLOOR, CLASS_AP50_FLOOR),
        ("withheld", WITHHELD_SEED, WITHHELD_MAP50_FLOOR, WITHHELD_CLASS_AP50_FLOOR),
    ],
)
def test_shipped_model_meets_the_map_floor_on_held_out_scenes(
    tmp_path_factory: pytest.TempPathFactory,
    artifacts: Path,
    styles: str,
    seed: int,
    floor: float,
    class_floor: float,
) -> None:
    held_out = tmp_path_factory.mktemp(f"held_out_{styles}") / "scenes"
    synthesize(
        held_out, HELD_OUT_IMAGES, seed=seed, fmt="voc", styles=style_set(styles), progress=False
    )
    report = evaluate_checkpoint(SHIPPED, held_out, edge=SHIPPED_MODEL_EDGE, progress=False)
    (artifacts / f"shipped_model_map_{styles}.txt").write_text(report.format_table() + "\n")
    assert report.map50 >= floor, report.format_table()
    weak = [c.name for c in report.classes if c.ap50 is not None and c.ap50 < class_floor]
    assert not weak, report.format_table()
    assert np.isfinite(report.map50_95)


def test_shipped_model_sees_nothing_in_photos_without_digits_or_shapes(
    tmp_path: Path, artifacts: Path
) -> None:
    """scikit-image's and matplotlib's photos (never trained on): no more false detections
    above 0.5 than the shipped model's measured 1 (the target is none: not yet met)."""
    photos = write_negatives(tmp_path / "negatives")
    assert len(photos) >= 8
    report = evaluate_negatives(SHIPPED, tmp_path / "negatives", edge=SHIPPED_MODEL_EDGE)
    (artifacts / "shipped_model_negatives.txt").write_text(report.format_table() + "\n")
    assert report.threshold == 0.5
    assert len(report.detections) <= MAX_FALSE_DETECTIONS_IN_NEGATIVES, report.format_table()
    assert report.highest["grass.jpg"] < 0.5 and report.highest["rocket.jpg"] < 0.5


@pytest.mark.skipif(
    not GCOMPRIS_RESOURCES.is_dir(),
    reason="gcompris-qt-data is not installed (make training-assets)",
)
def test_shipped_model_sees_nothing_in_gcompris_photos_it_never_saw(
    tmp_path: Path, artifacts: Path
) -> None:
    """GCompris's 109 monuments, animals and musicians (evaluation only): none above 0.5,
    where the detector without its verifier made 6 (models/README.md)."""
    folder = tmp_path / "gcompris-negatives"
    assert write_gcompris_photos(folder, GCOMPRIS_PARTS["gcompris-negatives"]) >= 100
    report = evaluate_negatives(SHIPPED, folder, edge=SHIPPED_MODEL_EDGE)
    (artifacts / "shipped_model_gcompris_negatives.txt").write_text(report.format_table() + "\n")
    assert not report.detections, report.format_table()


# One object alone on a plain 300x300 image (the model's input size, so no resizing
# blurs the phase): every size from 40 to 90 px, moved in 6-px steps across 60 px, a
# whole cell of the coarser anchor grid. The first model of issue 16 scored a centred
# 50-px circle 0.02 and the same circle 12 px to the right and down 1.00: its anchors had gaps.
POSITION_SIZES = (40, 50, 60, 70, 80, 90)
POSITION_OFFSETS = tuple(range(0, 60, 6))
POSITION_LABELS = ("circle", "square", "7", "0")
POSITION_FOUND_SHARE = 0.95


def test_shipped_model_finds_a_lone_object_wherever_it_sits(
    shipped_server: ServerProcess, artifacts: Path
) -> None:
    missed: list[str] = []
    for label in POSITION_LABELS:
        for size in POSITION_SIZES:
            for offset in POSITION_OFFSETS:
                centre = (150 + offset - 30, 150 + offset // 2 - 15)
                scene = render_fixture(
                    [FixtureObject(label, centre, size, (30, 30, 30), _plain_style(label))],
                    size=(300, 300),
                    seed=size,
                    background=(235, 235, 235),
                )
                (truth,) = scene.objects
                status, payload = shipped_server.request(
                    "/predict?model=digits", encode_jpeg(scene.image, 92)
                )
                assert status == 200
                box = truth.box
                expected = (box.xmin, box.ymin, box.xmax, box.ymax)
                if not any(
                    d["objectClass"] == label
                    and iou(expected, (d["x"], d["y"], d["x"] + d["width"], d["y"] + d["height"]))
                    >= 0.5
                    for d in payload["prediction"]
                ):
                    missed.append(f"{label} {size} px at {centre}")
    tried = len(POSITION_LABELS) * len(POSITION_SIZES) * len(POSITION_OFFSETS)
    (artifacts / "shipped_model_positions.txt").write_text(
        f"missed {len(missed)} of {tried}\n" + "\n".join(missed) + "\n"
    )
    assert len(missed) <= (1 - POSITION_FOUND_SHARE) * tried, missed


def _plain_style(label: str) -> str:
    return "font" if label.isdigit() else "filled"
