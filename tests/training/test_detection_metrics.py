"""Detection metrics: hand-computed cases, properties, and a slow reference implementation.

Random scenes use whole-pixel coordinates: every width, area and intersection is then
an exact small integer, so an IoU is a correctly rounded quotient of integers, and
translating a scene cannot change a single bit of any result.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.training import detection_metrics
from predictor.training.detection_metrics import (
    IOU_THRESHOLDS,
    EvaluationReport,
    GroundTruth,
    Predictions,
    average_precision,
    evaluate,
    iou_matrix,
)

Box = tuple[float, float, float, float]
Scene = tuple[list[GroundTruth], list[Predictions]]

N_CLASSES = 3
NAMES = ("cat", "dog", "bird")
# Modest example counts: the suite shares a two-core machine with training runs.
FEW = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def truth(boxes: Sequence[Box], labels: Sequence[int]) -> GroundTruth:
    """Ground truth of one image from plain lists."""
    return GroundTruth(
        np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(labels, dtype=np.int64)
    )


def detections(boxes: Sequence[Box], labels: Sequence[int], scores: Sequence[float]) -> Predictions:
    """Predictions of one image from plain lists."""
    return Predictions(
        np.array(boxes, dtype=np.float64).reshape(-1, 4),
        np.array(labels, dtype=np.int64),
        np.array(scores, dtype=np.float64),
    )


# ------------------------------------------------------------------- hand-computed

# Two objects of class 0 and a detection far from both.
OBJECT_A: Box = (0, 0, 10, 10)
OBJECT_B: Box = (20, 0, 30, 10)
NOWHERE: Box = (50, 50, 60, 60)

# Ranked TP, FP, TP over 2 objects: recall .5, .5, 1; precision 1, .5, 2/3.
# All points: 0.5 * 1 + 0.5 * 2/3 (the envelope lifts the FP's 0.5 to 2/3).
TP_FP_TP_ALL_POINTS = 0.5 * 1 + 0.5 * (2 / 3)
# 101 points: recall 0, .01, ..., .50 (51 levels) reach precision 1 at the first TP;
# .51, ..., 1.00 (50 levels) only at the last, with precision 2/3.
TP_FP_TP_COCO = (51 * 1 + 50 * (2 / 3)) / 101
# Ranked TP, FP, FP over 2 objects: only the 51 levels up to recall .5 are reached.
TP_FP_FP_COCO = 51 / 101


def test_perfect_predictions_score_one() -> None:
    truths = [
        truth([OBJECT_A, OBJECT_B], [0, 1]),
        truth([(5, 5, 9, 12), (0, 0, 10, 10), (1, 1, 11, 11)], [2, 0, 0]),
    ]
    predictions = [
        detections(t.boxes.tolist(), t.labels.tolist(), [0.5] * len(t.labels)) for t in truths
    ]
    report = evaluate(truths, predictions, NAMES)
    assert [(row.ap50, row.ap50_95) for row in report.classes] == [(1.0, 1.0)] * 3
    assert (report.map50, report.map50_95) == (1.0, 1.0)
    assert [row.ground_truths for row in report.classes] == [3, 1, 1]
    assert report.images == 2


def test_tp_fp_tp_by_hand() -> None:
    report = evaluate(
        [truth([OBJECT_A, OBJECT_B], [0, 0])],
        [detections([OBJECT_A, NOWHERE, OBJECT_B], [0, 0, 0], [0.9, 0.8, 0.7])],
        ["only"],
    )
    assert report.classes[0].ap50 == pytest.approx(TP_FP_TP_ALL_POINTS, abs=1e-12)
    assert report.classes[0].ap50 == pytest.approx(5 / 6, abs=1e-12)
    # IoU is 1 for both hits, so every threshold sees the same curve.
    assert report.classes[0].ap50_95 == pytest.approx(TP_FP_TP_COCO, abs=1e-12)
    assert report.classes[0].ap50_95 == pytest.approx(253 / 303, abs=1e-12)
    assert report.map50 == report.classes[0].ap50
    assert report.map50_95 == report.classes[0].ap50_95


def test_average_precision_by_hand() -> None:
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    assert average_precision(recall, precision, "all_points") == pytest.approx(5 / 6, abs=1e-12)
    assert average_precision(recall, precision, "coco101") == pytest.approx(253 / 303, abs=1e-12)
    # Recall stopping at .3: the levels above it count as precision 0.
    assert average_precision([0.1, 0.3], [1.0, 0.5], "all_points") == pytest.approx(0.2)
    assert average_precision([0.1, 0.3], [1.0, 0.5], "coco101") == pytest.approx(
        (11 * 1.0 + 20 * 0.5) / 101
    )
    # A rising tail lifts everything before it: the envelope is 0.8 throughout.
    assert average_precision([0.2, 0.4, 0.6, 0.8], [0.5, 0.4, 0.6, 0.8], "all_points") == (
        pytest.approx(0.8 * 0.8)
    )
    assert average_precision([], [], "all_points") == 0.0
    assert average_precision([], [], "coco101") == 0.0


@pytest.mark.parametrize(
    ("height", "passed"),
    # Box (0, 0, 10, h) against (0, 0, 10, 10) has IoU h / 10 exactly; it matches at the
    # thresholds up to and including that value.
    [(4, 0), (5, 1), (5.5, 2), (6, 3), (6.4, 3), (7, 5), (8, 7), (9, 9), (9.5, 10), (10, 10)],
)
def test_iou_between_thresholds(height: float, passed: int) -> None:
    report = evaluate(
        [truth([(0, 0, 10, 10)], [0])], [detections([(0, 0, 10, height)], [0], [0.9])], ["x"]
    )
    assert report.classes[0].ap50 == (1.0 if passed else 0.0)
    assert report.classes[0].ap50_95 == pytest.approx(passed / 10, abs=1e-12)


def test_iou_point_six_changes_only_the_strict_thresholds() -> None:
    # As test_tp_fp_tp_by_hand, but the second hit covers 60 % of OBJECT_B: IoU 0.6,
    # a hit at 0.50, 0.55, 0.60 and a false positive at 0.65 .. 0.95.
    report = evaluate(
        [truth([OBJECT_A, OBJECT_B], [0, 0])],
        [detections([OBJECT_A, NOWHERE, (20, 0, 30, 6)], [0, 0, 0], [0.9, 0.8, 0.7])],
        ["only"],
    )
    assert report.classes[0].ap50 == pytest.approx(5 / 6, abs=1e-12)
    expected = (3 * TP_FP_TP_COCO + 7 * TP_FP_FP_COCO) / 10
    assert report.classes[0].ap50_95 == pytest.approx(expected, abs=1e-12)


def test_duplicate_detection_is_a_false_positive() -> None:
    # If the duplicate (0.8) took OBJECT_A again it would count as a hit and AP would be 1.
    report = evaluate(
        [truth([OBJECT_A, OBJECT_B], [0, 0])],
        [detections([OBJECT_A, OBJECT_A, OBJECT_B], [0, 0, 0], [0.9, 0.8, 0.7])],
        ["only"],
    )
    assert report.classes[0].ap50 == pytest.approx(5 / 6, abs=1e-12)
    assert report.classes[0].ap50_95 == pytest.approx(TP_FP_TP_COCO, abs=1e-12)


def test_second_detection_takes_the_best_unmatched_object() -> None:
    # Two overlapping objects (IoU 80/120 = 2/3) and two detections on the first. The
    # first detection takes it (IoU 1 beats 2/3); the second takes the other object,
    # which it overlaps at 2/3: a hit at 0.50 .. 0.65, a miss from 0.70 up.
    first, second = (0, 0, 10, 10), (2, 0, 12, 10)
    report = evaluate(
        [truth([first, second], [0, 0])],
        [detections([first, first], [0, 0], [0.9, 0.8])],
        ["only"],
    )
    assert report.classes[0].ap50 == 1.0
    # Both hit: AP 1; only the first hits: 51 of 101 levels at precision 1.
    assert report.classes[0].ap50_95 == pytest.approx((4 * 1 + 6 * 51 / 101) / 10, abs=1e-12)


def test_detection_takes_the_best_object_not_the_first() -> None:
    # The first detection overlaps object 1 at 70/120 and object 2 at 0.9: it takes
    # object 2. The second overlaps object 1 at 0.8 and object 2 at 50/130 only, so
    # it is a hit just because the first did not take object 1.
    objects = truth([(0, 0, 10, 10), (3, 0, 13, 10)], [0, 0])
    report = evaluate(
        [objects], [detections([(3, 0, 12, 10), (0, 0, 8, 10)], [0, 0], [0.9, 0.8])], ["x"]
    )
    assert report.classes[0].ap50 == 1.0
    # Both hit up to 0.80; at 0.85 and 0.90 only the first (TP, FP); at 0.95 neither.
    expected = (7 * 1 + 2 * 51 / 101 + 0) / 10
    assert report.classes[0].ap50_95 == pytest.approx(expected, abs=1e-12)


def test_equal_scores_rank_in_input_order() -> None:
    # The FP comes first in image 0 and ties with the TP of image 1: image order decides.
    truths = [truth([OBJECT_A], [0]), truth([OBJECT_B], [0])]
    fp_first = [detections([NOWHERE], [0], [0.5]), detections([OBJECT_B], [0], [0.5])]
    tp_first = [detections([], [], []), detections([OBJECT_B, NOWHERE], [0, 0], [0.5, 0.5])]
    # FP then TP over 2 objects: recall 0, .5; precision 0, .5.
    assert evaluate(truths, fp_first, ["x"]).map50 == pytest.approx(0.25)
    # TP then FP: recall .5, .5; precision 1, .5.
    assert evaluate(truths, tp_first, ["x"]).map50 == pytest.approx(0.5)


def test_class_confusion() -> None:
    # Image 0: a cat detected as a dog. Image 1: a dog detected correctly, lower score.
    report = evaluate(
        [truth([OBJECT_A], [0]), truth([OBJECT_B], [1])],
        [detections([OBJECT_A], [1], [0.9]), detections([OBJECT_B], [1], [0.5])],
        NAMES,
    )
    cat, dog, bird = report.classes
    # The cat is missed: AP 0 although a box sits right on it.
    assert (cat.ground_truths, cat.detections, cat.ap50, cat.ap50_95) == (1, 0, 0.0, 0.0)
    # Dog: FP then TP over one object: recall 0, 1; precision 0, .5.
    assert (dog.ground_truths, dog.detections) == (1, 2)
    assert dog.ap50 == pytest.approx(0.5)
    assert dog.ap50_95 == pytest.approx(0.5)
    assert (bird.ap50, bird.ap50_95) == (None, None)
    assert report.map50 == pytest.approx(0.25)
    assert report.map50_95 == pytest.approx(0.25)


def test_no_predictions_scores_zero() -> None:
    report = evaluate(
        [truth([OBJECT_A, OBJECT_B], [0, 1]), truth([], [])],
        [detections([], [], []), Predictions(np.array([]), np.array([]), np.array([]))],
        NAMES,
    )
    assert [(row.ap50, row.ap50_95) for row in report.classes] == [
        (0.0, 0.0),
        (0.0, 0.0),
        (None, None),
    ]
    assert (report.map50, report.map50_95) == (0.0, 0.0)


def test_empty_images_change_nothing_but_the_count() -> None:
    truths = [truth([OBJECT_A, OBJECT_B], [0, 0])]
    predictions = [detections([OBJECT_A, NOWHERE, OBJECT_B], [0, 0, 0], [0.9, 0.8, 0.7])]
    plain = evaluate(truths, predictions, ["only"])
    padded = evaluate(
        [truth([], []), *truths, truth([], [])],
        [detections([], [], []), *predictions, detections([], [], [])],
        ["only"],
    )
    assert padded.classes == plain.classes
    assert (padded.map50, padded.map50_95, padded.images) == (plain.map50, plain.map50_95, 3)


def test_detections_in_an_image_without_objects_are_false_positives() -> None:
    report = evaluate(
        [truth([OBJECT_A], [0]), truth([], [])],
        [detections([OBJECT_A], [0], [0.5]), detections([OBJECT_A], [0], [0.9])],
        ["only"],
    )
    # FP then TP over one object.
    assert report.map50 == pytest.approx(0.5)


def test_class_without_ground_truth_is_left_out_of_the_mean() -> None:
    report = evaluate(
        [truth([OBJECT_A], [0])],
        # Perfect on the cat, plus a confident bird that is not there.
        [detections([OBJECT_A, NOWHERE], [0, 2], [0.5, 0.9])],
        NAMES,
    )
    cat, dog, bird = report.classes
    assert (cat.ap50, cat.ap50_95) == (1.0, 1.0)
    assert (dog.ground_truths, dog.detections, dog.ap50, dog.ap50_95) == (0, 0, None, None)
    assert (bird.ground_truths, bird.detections, bird.ap50, bird.ap50_95) == (0, 1, None, None)
    assert (report.map50, report.map50_95) == (1.0, 1.0)


def test_no_ground_truth_at_all() -> None:
    report = evaluate([truth([], [])], [detections([NOWHERE], [0], [0.9])], ["x", "y"])
    assert all(row.ap50 is None and row.ap50_95 is None for row in report.classes)
    assert math.isnan(report.map50) and math.isnan(report.map50_95)
    as_json = report.to_json()
    assert (as_json["map50"], as_json["map50_95"]) == (None, None)
    json.dumps(as_json, allow_nan=False)
    assert report.format_table().splitlines()[-1].split()[-2:] == ["-", "-"]
    assert evaluate([], [], ["x"]).images == 0


# ----------------------------------------------------------------------------- IoU


def test_iou_matrix_values() -> None:
    a = np.array([(0, 0, 2, 2), (0, 0, 10, 10)], dtype=np.float64)
    b = np.array([(1, 1, 3, 3), (2, 0, 4, 2), (0, 0, 10, 5), (0, 0, 0, 0)], dtype=np.float64)
    expected = np.array(
        [
            [1 / 7, 0.0, 4 / 50, 0.0],  # (2, 0, 4, 2) only touches: half-open boxes, no overlap
            [4 / 100, 4 / 100, 0.5, 0.0],
        ]
    )
    np.testing.assert_allclose(iou_matrix(a, b), expected, rtol=0, atol=1e-15)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)
    assert iou_matrix([], b).shape == (0, 4)
    assert iou_matrix([], []).shape == (0, 0)
    # The degenerate box has no area: IoU 0 even with itself, never NaN.
    assert iou_matrix([(3, 3, 3, 8)], [(3, 3, 3, 8)])[0, 0] == 0.0


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


@st.composite
def float_boxes(draw: st.DrawFn) -> Box:
    """A box with arbitrary float coordinates (possibly of zero width or height)."""
    x0, x1 = sorted((draw(finite), draw(finite)))
    y0, y1 = sorted((draw(finite), draw(finite)))
    return (x0, y0, x1, y1)


@FEW
@given(st.lists(float_boxes(), max_size=6), st.lists(float_boxes(), max_size=6))
def test_iou_matrix_properties(a: list[Box], b: list[Box]) -> None:
    forward = iou_matrix(a, b)
    assert forward.shape == (len(a), len(b))
    assert np.array_equal(forward, iou_matrix(b, a).T)
    assert ((forward >= 0) & (forward <= 1)).all()
    boxes = np.array(a, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    diagonal = np.diag(iou_matrix(a, a))
    assert (diagonal[areas > 0] == 1.0).all()
    assert (diagonal[areas == 0] == 0.0).all()


# --------------------------------------------------------------------- random scenes

GRID = 16


@st.composite
def grid_boxes(draw: st.DrawFn, min_size: int = 0) -> Box:
    """A whole-pixel box of up to 12 x 12 on a small grid, so that random boxes often overlap."""
    x0, y0 = draw(st.integers(0, GRID)), draw(st.integers(0, GRID))
    width, height = draw(st.integers(min_size, 12)), draw(st.integers(min_size, 12))
    return (x0, y0, x0 + width, y0 + height)


@st.composite
def near(draw: st.DrawFn, box: Box) -> Box:
    """``box`` with each edge moved by up to 2 pixels: IoUs spread over all thresholds."""
    x0, y0, x1, y1 = (edge + draw(st.integers(-2, 2)) for edge in box)
    return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@st.composite
def scenes(draw: st.DrawFn, distinct_scores: bool = False) -> Scene:
    """1-4 images with up to 4 objects and 6 detections each, most near an object.

    Scores are quarters (so ties are common), or all distinct.
    """
    labels = st.integers(0, N_CLASSES - 1)
    truths: list[GroundTruth] = []
    drafts: list[tuple[list[Box], list[int], list[float]]] = []
    for _ in range(draw(st.integers(1, 4))):
        objects: list[tuple[Box, int]] = []
        for _ in range(draw(st.integers(0, 4))):
            # Often a neighbour of an earlier object of the same class, so that one
            # detection can reach the threshold with several objects.
            if len(objects) > 0 and draw(st.booleans()):
                box, label = draw(st.sampled_from(objects))
                objects.append((draw(near(box)), label))
            else:
                objects.append((draw(grid_boxes()), draw(labels)))
        truths.append(truth([box for box, _ in objects], [label for _, label in objects]))
        boxes: list[Box] = []
        classes: list[int] = []
        for _ in range(draw(st.integers(0, 6))):
            if objects and draw(st.integers(0, 3)) > 0:
                box, label = draw(st.sampled_from(objects))
                boxes.append(draw(near(box)))
                # Now and then the right place with the wrong class.
                classes.append(draw(labels) if draw(st.integers(0, 4)) == 0 else label)
            else:
                boxes.append(draw(grid_boxes()))
                classes.append(draw(labels))
        scores = [draw(st.integers(1, 4)) / 4 for _ in boxes]
        drafts.append((boxes, classes, scores))
    if distinct_scores:
        total = sum(len(boxes) for boxes, _, _ in drafts)
        ranks = iter(draw(st.permutations(range(total))))
        drafts = [(b, c, [(next(ranks) + 1) / (total + 1) for _ in b]) for b, c, _ in drafts]
    return truths, [detections(*draft) for draft in drafts]


@FEW
@given(
    st.lists(st.tuples(grid_boxes(min_size=1), st.integers(0, N_CLASSES - 1)), max_size=12),
    st.data(),
)
def test_perfect_predictions_property(objects: list[tuple[Box, int]], data: st.DataObject) -> None:
    split = data.draw(st.integers(0, len(objects)))
    images = [objects[:split], objects[split:]]
    truths = [truth([box for box, _ in part], [label for _, label in part]) for part in images]
    predictions = [
        detections(
            [box for box, _ in part],
            [label for _, label in part],
            data.draw(
                st.lists(st.sampled_from([0.2, 0.5, 0.9]), min_size=len(part), max_size=len(part))
            ),
        )
        for part in images
    ]
    report = evaluate(truths, predictions, NAMES)
    for class_id, row in enumerate(report.classes):
        present = any(label == class_id for _, label in objects)
        assert (row.ap50, row.ap50_95) == ((1.0, 1.0) if present else (None, None))
    if objects:
        assert (report.map50, report.map50_95) == (1.0, 1.0)


@FEW
@given(scenes(distinct_scores=True), st.data())
def test_invariant_to_image_order(scene: Scene, data: st.DataObject) -> None:
    truths, predictions = scene
    order = data.draw(st.permutations(range(len(truths))))
    shuffled = evaluate([truths[i] for i in order], [predictions[i] for i in order], NAMES)
    assert shuffled.to_json() == evaluate(truths, predictions, NAMES).to_json()


@FEW
@given(scenes(distinct_scores=True), st.data())
def test_invariant_to_detection_order(scene: Scene, data: st.DataObject) -> None:
    truths, predictions = scene
    shuffled = []
    for image in predictions:
        order = np.array(data.draw(st.permutations(range(len(image.scores)))), dtype=np.intp)
        shuffled.append(Predictions(image.boxes[order], image.labels[order], image.scores[order]))
    assert (
        evaluate(truths, shuffled, NAMES).to_json()
        == evaluate(truths, predictions, NAMES).to_json()
    )


@FEW
@given(scenes(), st.data())
def test_trailing_false_positive_leaves_ap_unchanged(scene: Scene, data: st.DataObject) -> None:
    truths, predictions = scene
    image = data.draw(st.integers(0, len(predictions) - 1))
    label = data.draw(st.integers(0, N_CLASSES - 1))
    lowest = min((float(p.scores.min()) for p in predictions if len(p.scores)), default=1.0)
    target = predictions[image]
    # Far off the grid: it overlaps nothing.
    extra = Predictions(
        np.vstack([target.boxes, [(1000, 1000, 1010, 1010)]]),
        np.append(target.labels, label),
        np.append(target.scores, lowest / 2),
    )
    before = evaluate(truths, predictions, NAMES)
    after = evaluate(truths, [*predictions[:image], extra, *predictions[image + 1 :]], NAMES)
    for old, new in zip(before.classes, after.classes, strict=True):
        assert new.detections == old.detections + (new.name == NAMES[label])
        for old_ap, new_ap in ((old.ap50, new.ap50), (old.ap50_95, new.ap50_95)):
            assert (new_ap is None) == (old_ap is None)
            if old_ap is not None:
                assert new_ap == pytest.approx(old_ap, rel=1e-12, abs=1e-15)
    assert after.map50 == pytest.approx(before.map50, rel=1e-12, nan_ok=True)


@FEW
@given(scenes(), st.integers(-1000, 1000), st.integers(-1000, 1000))
def test_invariant_to_translation(scene: Scene, dx: int, dy: int) -> None:
    truths, predictions = scene
    offset = np.array([dx, dy, dx, dy], dtype=np.float64)
    moved_truths = [GroundTruth(t.boxes + offset, t.labels) for t in truths]
    moved = [Predictions(p.boxes + offset, p.labels, p.scores) for p in predictions]
    assert (
        evaluate(moved_truths, moved, NAMES).to_json()
        == evaluate(truths, predictions, NAMES).to_json()
    )


# --------------------------------------------------------------- reference implementation


def exact_iou(a: Sequence[float], b: Sequence[float]) -> Fraction:
    """IoU in exact rational arithmetic."""
    ax0, ay0, ax1, ay1 = (Fraction(v) for v in a)
    bx0, by0, bx1, by1 = (Fraction(v) for v in b)
    inter = max(Fraction(0), min(ax1, bx1) - max(ax0, bx0)) * max(
        Fraction(0), min(ay1, by1) - max(ay0, by0)
    )
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else Fraction(0)


def reference_ap(hits: list[bool], objects: int) -> tuple[Fraction, Fraction]:
    """All-points and 101-point AP of ranked hit/miss flags, straight from the definitions."""
    recall: list[Fraction] = []
    precision: list[Fraction] = []
    found = 0
    for rank, hit in enumerate(hits, start=1):
        found += hit
        recall.append(Fraction(found, objects))
        precision.append(Fraction(found, rank))
    # Interpolated precision at recall r: the best precision at any recall >= r.
    all_points = Fraction(0)
    previous = Fraction(0)
    for k in range(len(hits)):
        all_points += (recall[k] - previous) * max(precision[k:])
        previous = recall[k]
    coco = Fraction(0)
    for level in (Fraction(k, 100) for k in range(101)):
        reached = [p for r, p in zip(recall, precision, strict=True) if r >= level]
        coco += max(reached, default=Fraction(0))
    return all_points, coco / 101


def reference_evaluate(
    truths: Sequence[GroundTruth], predictions: Sequence[Predictions], n_classes: int
) -> list[tuple[int, int, Fraction | None, Fraction | None]]:
    """(objects, detections, AP@0.5, AP@[.5:.95]) per class, by brute force."""
    thresholds = [Fraction(k, 100) for k in range(50, 100, 5)]
    rows: list[tuple[int, int, Fraction | None, Fraction | None]] = []
    for class_id in range(n_classes):
        objects = [
            (image, index, box)
            for image, t in enumerate(truths)
            for index, (box, label) in enumerate(
                zip(t.boxes.tolist(), t.labels.tolist(), strict=True)
            )
            if label == class_id
        ]
        ranked = [
            (score, image, box)
            for image, p in enumerate(predictions)
            for box, label, score in zip(
                p.boxes.tolist(), p.labels.tolist(), p.scores.tolist(), strict=True
            )
            if label == class_id
        ]
        ranked.sort(key=lambda d: -d[0])  # list.sort is stable: ties stay in input order
        if not objects:
            rows.append((0, len(ranked), None, None))
            continue
        voc: list[Fraction] = []
        coco: list[Fraction] = []
        for threshold in thresholds:
            taken: set[tuple[int, int]] = set()
            hits: list[bool] = []
            for _, image, box in ranked:
                best: tuple[int, int] | None = None
                best_iou = Fraction(-1)
                for obj_image, obj_index, obj_box in objects:
                    if obj_image != image or (obj_image, obj_index) in taken:
                        continue
                    overlap = exact_iou(box, obj_box)
                    if overlap > best_iou:
                        best, best_iou = (obj_image, obj_index), overlap
                if best is not None and best_iou >= threshold:
                    taken.add(best)
                    hits.append(True)
                else:
                    hits.append(False)
            all_points, coco101 = reference_ap(hits, len(objects))
            voc.append(all_points)
            coco.append(coco101)
        rows.append((len(objects), len(ranked), voc[0], sum(coco, Fraction(0)) / len(coco)))
    return rows


@settings(FEW, max_examples=50)
@given(scenes())
def test_agrees_with_reference(scene: Scene) -> None:
    truths, predictions = scene
    report = evaluate(truths, predictions, NAMES)
    expected = reference_evaluate(truths, predictions, N_CLASSES)
    for row, (objects, count, ap50, ap50_95) in zip(report.classes, expected, strict=True):
        assert (row.ground_truths, row.detections) == (objects, count)
        for got, want in ((row.ap50, ap50), (row.ap50_95, ap50_95)):
            if want is None:
                assert got is None
            else:
                assert got == pytest.approx(float(want), abs=1e-12)
    scored = [(ap50, ap50_95) for _, _, ap50, ap50_95 in expected if ap50 is not None]
    if scored:
        assert report.map50 == pytest.approx(float(sum(a for a, _ in scored) / len(scored)))
        assert report.map50_95 == pytest.approx(
            float(sum(b for _, b in scored if b is not None) / len(scored))
        )
    else:
        assert math.isnan(report.map50)


def random_scene(images: int, objects: int, per_image: int, classes: int, seed: int) -> Scene:
    """A large random scene: most detections jittered copies of objects, some misclassified."""
    rng = np.random.default_rng(seed)
    truths, predictions = [], []
    for _ in range(images):
        n = int(rng.integers(0, objects + 1))
        corner = rng.uniform(0, 250, (n, 2))
        boxes = np.hstack([corner, corner + rng.uniform(5, 80, (n, 2))])
        labels = rng.integers(0, classes, n)
        truths.append(GroundTruth(boxes, labels))
        if n:
            source = rng.integers(0, n, per_image)
            found = boxes[source] + rng.normal(0, 4, (per_image, 4))
            found[:, 2:] = np.maximum(found[:, 2:], found[:, :2])
            guessed = np.where(
                rng.random(per_image) < 0.8, labels[source], rng.integers(0, classes, per_image)
            )
        else:
            found, guessed = np.zeros((0, 4)), np.zeros(0, np.int64)
        predictions.append(Predictions(found, guessed, rng.random(len(guessed))))
    return truths, predictions


def test_blocking_does_not_change_results(monkeypatch: pytest.MonkeyPatch) -> None:
    # Images are matched in padded blocks; tiny blocks (one image each) must agree
    # with the default, and both with the reference on a scene too big to enumerate by hand.
    truths, predictions = random_scene(40, 6, 12, 4, seed=5)
    names = ["a", "b", "c", "d"]
    default = evaluate(truths, predictions, names)
    monkeypatch.setattr(detection_metrics, "_BLOCK_ELEMENTS", 1)
    assert evaluate(truths, predictions, names).to_json() == default.to_json()
    reference = reference_evaluate(truths, predictions, len(names))
    for row, (_, _, ap50, _) in zip(default.classes, reference, strict=True):
        assert ap50 is not None
        assert row.ap50 == pytest.approx(float(ap50), abs=1e-12)


def test_large_evaluation_is_fast() -> None:
    truths, predictions = random_scene(1000, 9, 100, 13, seed=1)
    # CPU time of this process, so a busy machine does not make the test flaky.
    start = time.process_time()
    report = evaluate(truths, predictions, [str(i) for i in range(13)])
    elapsed = time.process_time() - start
    assert sum(row.detections for row in report.classes) == sum(len(p.scores) for p in predictions)
    assert 0 < report.map50 < 1
    assert elapsed < 2.5, f"evaluating 1000 images took {elapsed:.2f} s of CPU"


# ----------------------------------------------------------------------- reporting


def sample_report() -> EvaluationReport:
    return evaluate(
        [truth([OBJECT_A, OBJECT_B], [0, 0])],
        [detections([OBJECT_A, NOWHERE, OBJECT_B, NOWHERE], [0, 0, 0, 2], [0.9, 0.8, 0.7, 0.6])],
        ["person", "bicycle", "traffic light"],
    )


def test_format_table() -> None:
    report = sample_report()
    table = report.format_table()
    lines = table.splitlines()
    for name in ("person", "bicycle", "traffic light"):
        assert any(line.startswith(name) for line in lines)
    person = next(line for line in lines if line.startswith("person"))
    assert person.split() == ["person", "2", "3", "0.833", f"{TP_FP_TP_COCO:.3f}"]
    light = next(line for line in lines if line.startswith("traffic light"))
    assert light.split()[-4:] == ["0", "1", "-", "-"]
    overall = lines[-1].split()
    assert overall[-4:] == ["2", "4", "0.833", "0.835"]
    assert "1 images" in lines[-1]
    # Columns line up: the last column is right-aligned, so every line has one length.
    assert len({len(line) for line in lines}) == 1


def test_to_json_round_trips() -> None:
    report = sample_report()
    as_json = report.to_json()
    assert json.loads(json.dumps(as_json, allow_nan=False)) == as_json
    assert as_json["images"] == 1
    assert as_json["map50"] == pytest.approx(5 / 6)
    assert as_json["classes"] == [
        {
            "name": "person",
            "ground_truths": 2,
            "detections": 3,
            "ap50": pytest.approx(5 / 6),
            "ap50_95": pytest.approx(TP_FP_TP_COCO),
        },
        {"name": "bicycle", "ground_truths": 0, "detections": 0, "ap50": None, "ap50_95": None},
        {
            "name": "traffic light",
            "ground_truths": 0,
            "detections": 1,
            "ap50": None,
            "ap50_95": None,
        },
    ]


# ------------------------------------------------------------------------ validation


def test_inputs_are_copied_and_frozen() -> None:
    boxes = np.array([[0.0, 0.0, 1.0, 1.0]])
    labels = np.array([1.0])  # whole-number floats, as networks emit, are accepted
    gt = GroundTruth(boxes, labels)
    boxes[0, 0] = 0.5
    assert gt.boxes[0, 0] == 0.0
    assert gt.labels.dtype == np.int64 and gt.labels.tolist() == [1]
    with pytest.raises(ValueError):
        gt.boxes[0, 0] = 0.25
    with pytest.raises(dataclasses.FrozenInstanceError):
        gt.labels = np.array([0])  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: truth([(0, 0, 1, 1)], [0, 1]), "shape"),
        (lambda: GroundTruth(np.zeros((2, 5)), np.zeros(2, np.int64)), r"\(N, 4\)"),
        (lambda: GroundTruth(np.zeros(4), np.zeros(1, np.int64)), r"\(N, 4\)"),
        (lambda: GroundTruth(np.array([[0, 0, 1, np.nan]]), np.zeros(1, np.int64)), "NaN"),
        (lambda: truth([(5, 0, 1, 1)], [0]), "xmax < xmin"),
        (lambda: GroundTruth(np.zeros((1, 4)), np.array([0.5])), "whole-number"),
        (lambda: detections([(0, 0, 1, 1)], [0], [0.5, 0.2]), "shape"),
        (lambda: detections([(0, 0, 1, 1)], [0], [math.nan]), "NaN"),
    ],
)
def test_bad_inputs_are_rejected(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_evaluate_rejects_inconsistent_inputs() -> None:
    one_truth = [truth([OBJECT_A], [0])]
    one_prediction = [detections([OBJECT_A], [0], [0.9])]
    with pytest.raises(ValueError, match="1 ground-truth images but 2 prediction images"):
        evaluate(one_truth, one_prediction * 2, NAMES)
    with pytest.raises(ValueError, match="class_names is empty"):
        evaluate(one_truth, one_prediction, [])
    with pytest.raises(ValueError, match=r"ground_truth\[0\].labels has class id 3, outside 0..2"):
        evaluate([truth([OBJECT_A], [3])], one_prediction, NAMES)
    with pytest.raises(ValueError, match=r"predictions\[0\].labels has class id -1"):
        evaluate(one_truth, [detections([OBJECT_A], [-1], [0.9])], NAMES)
    with pytest.raises(TypeError, match="expected GroundTruth and Predictions"):
        evaluate(one_prediction, one_truth, NAMES)  # type: ignore[arg-type]


def test_average_precision_rejects_bad_curves() -> None:
    with pytest.raises(ValueError, match="one length"):
        average_precision([0.5, 1.0], [1.0], "all_points")
    with pytest.raises(ValueError, match="non-decreasing"):
        average_precision([0.5, 0.4], [1.0, 1.0], "coco101")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        average_precision([0.5, 1.5], [1.0, 1.0], "all_points")
    with pytest.raises(ValueError, match="unknown AP method"):
        average_precision([1.0], [1.0], "voc07")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        iou_matrix([(0, 0, 1)], [(0, 0, 1, 1)])


def test_thresholds_are_exact() -> None:
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
