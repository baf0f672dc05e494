"""Detection-quality metrics: VOC mAP@0.5 and COCO-style mAP@[.5:.95].

Pure numpy, so evaluation never needs MXNet. Boxes are ``xmin, ymin, xmax, ymax``
in pixels with half-open extents: a box's width is ``xmax - xmin`` and its area is
``width * height`` (no "+1" as in the original VOC devkit). Classes are integer
ids ``0 .. C-1``; their names are passed separately.

Matching is the greedy VOC/COCO rule: per class, detections over all images are
ranked by score (descending, ties in input order: image by image, then detection
by detection). Each detection takes the still-unmatched ground-truth box of its
class in its image with the highest IoU, if that IoU reaches the threshold;
otherwise it is a false positive. A ground-truth box is matched at most once, so
a duplicate detection of one object is a false positive.

* ``map50``: the mean over classes with ground truth of the all-points AP
  (VOC2010 onwards) at IoU 0.5.
* ``map50_95``: the mean over IoU 0.50, 0.55, ..., 0.95 and over classes with
  ground truth of the 101-point interpolated AP (the pycocotools rule). Unlike
  pycocotools there are no area ranges, no "crowd" regions and no cap on the
  number of detections per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "COCO_RECALL_POINTS",
    "IOU_THRESHOLDS",
    "ClassResult",
    "EvaluationReport",
    "GroundTruth",
    "Predictions",
    "average_precision",
    "evaluate",
    "iou_matrix",
]

# Written as k/100 rather than np.linspace(.5, .95, 10) or 0.5 + 0.05 * i: a
# correctly rounded quotient is the double nearest the decimal value, so an IoU
# of exactly 60/120 or 3/5 compares equal to the 0.5 or 0.6 threshold instead
# of falling one ulp short of it (linspace gives 0.8999999999999999 for 0.9).
IOU_THRESHOLDS: tuple[float, ...] = tuple(k / 100 for k in range(50, 100, 5))
"""IoU thresholds of the COCO-style mAP: 0.50, 0.55, ..., 0.95."""

COCO_RECALL_POINTS: NDArray[np.float64] = np.arange(101, dtype=np.float64) / 100
"""Recall levels 0, 0.01, ..., 1 at which the 101-point AP samples precision."""
COCO_RECALL_POINTS.setflags(write=False)

APMethod = Literal["all_points", "coco101"]


# --------------------------------------------------------------------------- inputs


def _boxes(value: npt.ArrayLike, what: str, *, ordered: bool) -> NDArray[np.float64]:
    """``value`` as a fresh, read-only (N, 4) float64 array; raises ValueError if it is not."""
    # A copy, so a frozen GroundTruth/Predictions does not alias the caller's buffer.
    boxes = np.array(value, dtype=np.float64)
    if boxes.size == 0:
        # Empty detections often arrive as np.array([]) or a list; accept any empty shape.
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what} must have shape (N, 4), got {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what} contains NaN or infinite coordinates")
    if ordered:
        inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        if inverted.size:
            raise ValueError(
                f"{what}[{inverted[0]}] = {boxes[inverted[0]].tolist()} has xmax < xmin or "
                "ymax < ymin; boxes must be xmin, ymin, xmax, ymax"
            )
    boxes.setflags(write=False)
    return boxes


def _labels(value: npt.ArrayLike, length: int, what: str) -> NDArray[np.int64]:
    """``value`` as a fresh, read-only (length,) int64 array; raises ValueError if it is not."""
    raw = np.asarray(value)
    if raw.ndim != 1 or raw.shape[0] != length:
        raise ValueError(f"{what} must have shape ({length},) to match the boxes, got {raw.shape}")
    if raw.dtype.kind == "f":
        # Network outputs carry class ids as floats; accept them only when they are whole.
        if not np.isfinite(raw).all() or (raw != np.round(raw)).any():
            raise ValueError(f"{what} must hold whole-number class ids")
    elif raw.dtype.kind not in "iu" and raw.size:
        raise ValueError(f"{what} must hold integer class ids, got dtype {raw.dtype}")
    labels = raw.astype(np.int64)
    labels.setflags(write=False)
    return labels


def _scores(value: npt.ArrayLike, length: int, what: str) -> NDArray[np.float64]:
    """``value`` as a fresh, read-only (length,) float64 array; raises ValueError if it is not."""
    scores = np.array(value, dtype=np.float64)
    if scores.ndim != 1 or scores.shape[0] != length:
        raise ValueError(
            f"{what} must have shape ({length},) to match the boxes, got {scores.shape}"
        )
    if not np.isfinite(scores).all():
        # NaN would make the ranking, and so every AP, depend on where sorting puts it.
        raise ValueError(f"{what} contains NaN or infinite scores")
    scores.setflags(write=False)
    return scores


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """The labelled objects of one image.

    The arrays are converted (``boxes`` to float64, ``labels`` to int64), copied and
    made read-only on construction. ``eq=False`` because element-wise array
    comparison has no single truth value; instances compare by identity.
    """

    boxes: NDArray[np.float64]
    """(N, 4) ``xmin, ymin, xmax, ymax`` in pixels."""
    labels: NDArray[np.int64]
    """(N,) class ids."""

    def __post_init__(self) -> None:
        boxes = _boxes(self.boxes, "GroundTruth.boxes", ordered=True)
        labels = _labels(self.labels, len(boxes), "GroundTruth.labels")
        # The documented way to finish initialising a frozen dataclass.
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)


@dataclass(frozen=True, eq=False)
class Predictions:
    """The detections of one image, in any order.

    Converted, copied and made read-only like `GroundTruth`.
    """

    boxes: NDArray[np.float64]
    """(M, 4) ``xmin, ymin, xmax, ymax`` in pixels."""
    labels: NDArray[np.int64]
    """(M,) predicted class ids."""
    scores: NDArray[np.float64]
    """(M,) confidences; only their order matters."""

    def __post_init__(self) -> None:
        boxes = _boxes(self.boxes, "Predictions.boxes", ordered=True)
        labels = _labels(self.labels, len(boxes), "Predictions.labels")
        scores = _scores(self.scores, len(boxes), "Predictions.scores")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "scores", scores)


# ------------------------------------------------------------------------------ IoU


def _iou(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    """IoU of validated (N, 4) and (M, 4) boxes."""
    width = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    height = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.maximum(width, 0.0) * np.maximum(height, 0.0)
    # Clipped like the intersection, so an inverted box has area 0 rather than a
    # negative one that could push IoU above 1.
    area_a = np.maximum(a[:, 2] - a[:, 0], 0.0) * np.maximum(a[:, 3] - a[:, 1], 0.0)
    area_b = np.maximum(b[:, 2] - b[:, 0], 0.0) * np.maximum(b[:, 3] - b[:, 1], 0.0)
    # area_a + area_b is commutative in IEEE arithmetic, so iou(a, b) == iou(b, a).T exactly,
    # and for identical boxes the union is exactly the area, so their IoU is exactly 1.
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.zeros(inter.shape, dtype=np.float64)
    # Two zero-area boxes have union 0: call their IoU 0 rather than NaN.
    np.divide(inter, union, out=iou, where=union > 0)
    return iou


def iou_matrix(a: npt.ArrayLike, b: npt.ArrayLike) -> NDArray[np.float64]:
    """Intersection over union of every box in ``a`` with every box in ``b``.

    ``a`` is (N, 4) and ``b`` is (M, 4), ``xmin, ymin, xmax, ymax`` (empty inputs of any
    shape are taken as zero boxes). Returns an (N, M) float64 array with values in
    [0, 1]: 0 where boxes do not overlap, 1 for identical boxes of non-zero area.
    Zero-area and inverted boxes overlap nothing. Raises ValueError on a wrong
    shape or non-finite coordinates.
    """
    return _iou(_boxes(a, "a", ordered=False), _boxes(b, "b", ordered=False))


# ------------------------------------------------------------------------------- AP


def average_precision(recall: npt.ArrayLike, precision: npt.ArrayLike, method: APMethod) -> float:
    """Average precision of one precision/recall curve.

    ``recall`` and ``precision`` are the values after each detection in rank order
    (so ``recall`` is non-decreasing), both in [0, 1]. Precision is first made
    monotone: at each recall level it becomes the highest precision reached at that
    recall or beyond.

    * ``"all_points"`` (VOC2010 onwards): the area under that envelope, i.e. the sum
      over the curve's points of (recall increase) x (envelope precision).
    * ``"coco101"`` (pycocotools): the mean of the envelope sampled at recall 0, 0.01,
      ..., 1; a level that the curve never reaches counts as precision 0.

    An empty curve (no detections) has AP 0. Raises ValueError on mismatched
    shapes, values outside [0, 1], decreasing recall or an unknown method.
    """
    rec = np.asarray(recall, dtype=np.float64)
    prec = np.asarray(precision, dtype=np.float64)
    if rec.ndim != 1 or rec.shape != prec.shape:
        raise ValueError(
            f"recall and precision must be 1-D arrays of one length, got {rec.shape} and "
            f"{prec.shape}"
        )
    if method not in ("all_points", "coco101"):
        raise ValueError(f"unknown AP method {method!r}; use 'all_points' or 'coco101'")
    if rec.size == 0:
        return 0.0
    # Written as "not (x within range)" so that NaN fails too.
    if not ((rec >= 0) & (rec <= 1) & (prec >= 0) & (prec <= 1)).all():
        raise ValueError("recall and precision must lie in [0, 1]")
    if (np.diff(rec) < 0).any():
        raise ValueError("recall must be non-decreasing (points in rank order)")

    # Running maximum from the right: the best precision at this recall or higher.
    envelope = np.maximum.accumulate(prec[::-1])[::-1]
    if method == "all_points":
        steps = np.diff(rec, prepend=0.0)
        return float(np.sum(steps * envelope))
    # For each recall level, the first point reaching it carries the envelope's value
    # there (the envelope is non-increasing, so that is the maximum over higher recall).
    first = np.searchsorted(rec, COCO_RECALL_POINTS, side="left")
    reached = first < rec.size
    sampled = np.zeros(COCO_RECALL_POINTS.shape, dtype=np.float64)
    sampled[reached] = envelope[first[reached]]
    return float(np.mean(sampled))


# -------------------------------------------------------------------------- results


def _format_ap(value: float | None) -> str:
    """Three decimals, or "-" for an undefined AP."""
    return "-" if value is None or math.isnan(value) else f"{value:.3f}"


def _json_float(value: float) -> float | None:
    """``value``, or None for NaN, which strict JSON cannot represent."""
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class ClassResult:
    """The scores of one class."""

    name: str
    ground_truths: int
    """Ground-truth boxes of this class over all images."""
    detections: int
    """Detections of this class over all images."""
    ap50: float | None
    """All-points AP at IoU 0.5; None when the class has no ground truth."""
    ap50_95: float | None
    """101-point AP averaged over IoU 0.50:0.05:0.95; None when the class has no ground truth."""


@dataclass(frozen=True)
class EvaluationReport:
    """Per-class and overall detection quality on one set of images."""

    classes: tuple[ClassResult, ...]
    map50: float
    """VOC mAP@0.5: mean ``ap50`` over classes with ground truth (NaN if there are none)."""
    map50_95: float
    """COCO-style mAP@[.5:.95]: mean ``ap50_95`` over classes with ground truth (NaN if none)."""
    images: int

    def to_json(self) -> dict[str, object]:
        """A plain dict for `json.dumps`; an undefined mAP (NaN) becomes None (null)."""
        return {
            "images": self.images,
            "map50": _json_float(self.map50),
            "map50_95": _json_float(self.map50_95),
            "classes": [
                {
                    "name": result.name,
                    "ground_truths": result.ground_truths,
                    "detections": result.detections,
                    "ap50": result.ap50,
                    "ap50_95": result.ap50_95,
                }
                for result in self.classes
            ],
        }

    def format_table(self) -> str:
        """A text table: one row per class and an overall row, APs to 3 decimals, "-" if none."""
        header = ("class", "GT", "detections", "AP@0.5", "AP@[.5:.95]")
        rows = [
            (
                result.name,
                str(result.ground_truths),
                str(result.detections),
                _format_ap(result.ap50),
                _format_ap(result.ap50_95),
            )
            for result in self.classes
        ]
        overall = (
            f"all ({self.images} images)",
            str(sum(result.ground_truths for result in self.classes)),
            str(sum(result.detections for result in self.classes)),
            _format_ap(self.map50),
            _format_ap(self.map50_95),
        )
        widths = [max(len(row[i]) for row in (header, *rows, overall)) for i in range(5)]

        def line(cells: tuple[str, ...]) -> str:
            # Names left-aligned, numbers right-aligned so their decimals line up.
            first = cells[0].ljust(widths[0])
            rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
            return "  ".join((first, *rest)).rstrip()

        rule = "  ".join("-" * width for width in widths)
        return "\n".join([line(header), rule, *(line(row) for row in rows), rule, line(overall)])


# ------------------------------------------------------------------------ matching


# Upper bound on the elements of one padded (images, detections or thresholds, boxes)
# array in `_match_images`: 2**21 float64 values are 16 MiB.
_BLOCK_ELEMENTS = 2**21


@dataclass(frozen=True, eq=False)
class _Pending:
    """One image's detections that may match something, in rank order."""

    image: int
    ranked: NDArray[np.intp]
    """Indices of the candidate detections, highest score first."""
    iou: NDArray[np.float64]
    """(len(ranked), boxes) IoU of those detections, -1 against boxes of another class."""


def _candidates(
    image: int, truth: GroundTruth, predictions: Predictions, lowest: float
) -> _Pending | None:
    """The detections of one image that reach ``lowest`` IoU with a box of their class."""
    if len(predictions.labels) == 0 or len(truth.labels) == 0:
        return None
    iou = _iou(predictions.boxes, truth.boxes)
    # Below any threshold, so a detection can never take a box of another class.
    iou[predictions.labels[:, None] != truth.labels[None, :]] = -1.0
    # A detection below the lowest threshold with every box is a false positive at
    # every threshold and takes nothing, so it can be left out of the greedy loop.
    candidates = np.flatnonzero(iou.max(axis=1) >= lowest)
    if candidates.size == 0:
        return None
    # Stable sort on the negated score: highest first, ties in input order.
    ranked = candidates[np.argsort(-predictions.scores[candidates], kind="stable")]
    return _Pending(image, ranked, iou[ranked])


def _blocks(pending: list[_Pending]) -> list[list[_Pending]]:
    """``pending`` grouped so that each group's padded arrays stay under `_BLOCK_ELEMENTS`."""
    # Sorted by size, so one crowded image is padded together with others like it
    # rather than inflating a block of small ones.
    ordered = sorted(pending, key=lambda p: (p.iou.shape[1], p.iou.shape[0]))
    blocks: list[list[_Pending]] = []
    block: list[_Pending] = []
    rows = columns = 0
    for item in ordered:
        grown_rows, grown_columns = max(rows, item.iou.shape[0]), max(columns, item.iou.shape[1])
        # The per-rank arrays are (images, thresholds, boxes), the IoU block (images, ranks, boxes).
        depth = max(grown_rows, len(IOU_THRESHOLDS))
        if block and (len(block) + 1) * depth * grown_columns > _BLOCK_ELEMENTS:
            blocks.append(block)
            block, grown_rows, grown_columns = [], item.iou.shape[0], item.iou.shape[1]
        block.append(item)
        rows, columns = grown_rows, grown_columns
    if block:
        blocks.append(block)
    return blocks


def _match_images(
    truths: Sequence[GroundTruth],
    predictions: Sequence[Predictions],
    thresholds: NDArray[np.float64],
) -> list[NDArray[np.bool_]]:
    """Which detections are true positives, per image and IoU threshold.

    Returns one (M, T) boolean array per image, rows in the detections' input
    order. Images are independent (a detection only matches ground truth of its own
    image), and ranking all detections globally then keeping one image's gives the
    same order as ranking that image's alone, so greedy matching can run image by
    image. Here it runs on many images in lock-step: step k takes the k-th ranked
    candidate of every image in a block, for all thresholds at once, so the Python
    loop runs once per rank rather than once per detection and threshold.
    """
    hits = [np.zeros((len(p.labels), thresholds.size), dtype=bool) for p in predictions]
    pending = [
        found
        for image, (truth, predicted) in enumerate(zip(truths, predictions, strict=True))
        if (found := _candidates(image, truth, predicted, float(thresholds.min()))) is not None
    ]
    for block in _blocks(pending):
        size = len(block)
        depth = max(item.iou.shape[0] for item in block)
        width = max(item.iou.shape[1] for item in block)
        # Padding is -1: never reaches a threshold, so padded ranks hit nothing and
        # padded boxes are never taken.
        overlaps = np.full((size, depth, width), -1.0)
        for b, item in enumerate(block):
            overlaps[b, : item.iou.shape[0], : item.iou.shape[1]] = item.iou
        # available[b, t, g]: box g of image b is still unmatched at threshold t.
        available = np.ones((size, thresholds.size, width), dtype=bool)
        block_hits = np.zeros((size, depth, thresholds.size), dtype=bool)
        images = np.arange(size)[:, None]
        levels = np.arange(thresholds.size)[None, :]
        for rank in range(depth):
            open_overlaps = np.where(available, overlaps[:, rank, None, :], -1.0)
            best = open_overlaps.argmax(axis=2)  # first of equal IoUs: the lowest box index
            hit = open_overlaps[images, levels, best] >= thresholds
            block_hits[:, rank] = hit
            hit_image, hit_level = np.nonzero(hit)
            available[hit_image, hit_level, best[hit_image, hit_level]] = False
        for b, item in enumerate(block):
            hits[item.image][item.ranked] = block_hits[b, : item.ranked.size]
    return hits


def _check_labels(labels: NDArray[np.int64], n_classes: int, what: str) -> None:
    """Raise ValueError if a class id is outside ``0 .. n_classes - 1``."""
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        bad = labels[(labels < 0) | (labels >= n_classes)]
        raise ValueError(
            f"{what} has class id {int(bad[0])}, outside 0..{n_classes - 1} "
            f"({n_classes} class names given)"
        )


def evaluate(
    ground_truth: Sequence[GroundTruth],
    predictions: Sequence[Predictions],
    class_names: Sequence[str],
) -> EvaluationReport:
    """Score ``predictions`` against ``ground_truth``, image by image.

    ``ground_truth[i]`` and ``predictions[i]`` describe the same image; class ids
    index ``class_names``. A class with ground truth but no detections has AP 0; a
    class without ground truth has AP None and is left out of both means, though
    its detections are counted. Raises ValueError if the two sequences differ in
    length, ``class_names`` is empty or a class id is out of range.
    """
    names = tuple(class_names)
    if not names:
        raise ValueError("class_names is empty")
    if len(ground_truth) != len(predictions):
        raise ValueError(
            f"{len(ground_truth)} ground-truth images but {len(predictions)} prediction images"
        )
    n_classes = len(names)
    thresholds = np.array(IOU_THRESHOLDS, dtype=np.float64)

    truth_counts = np.zeros(n_classes, dtype=np.int64)
    label_parts: list[NDArray[np.int64]] = []
    score_parts: list[NDArray[np.float64]] = []
    for index, (truth, predicted) in enumerate(zip(ground_truth, predictions, strict=True)):
        if not isinstance(truth, GroundTruth) or not isinstance(predicted, Predictions):
            raise TypeError(
                f"image {index}: expected GroundTruth and Predictions, got "
                f"{type(truth).__name__} and {type(predicted).__name__}"
            )
        _check_labels(truth.labels, n_classes, f"ground_truth[{index}].labels")
        _check_labels(predicted.labels, n_classes, f"predictions[{index}].labels")
        truth_counts += np.bincount(truth.labels, minlength=n_classes)
        label_parts.append(predicted.labels)
        score_parts.append(predicted.scores)

    hit_parts = _match_images(ground_truth, predictions, thresholds)
    # Concatenated in image order, so a stable sort below breaks score ties by
    # image, then by position within the image.
    hits = np.concatenate(hit_parts) if hit_parts else np.zeros((0, thresholds.size), bool)
    labels = np.concatenate(label_parts) if label_parts else np.zeros(0, np.int64)
    scores = np.concatenate(score_parts) if score_parts else np.zeros(0, np.float64)

    results: list[ClassResult] = []
    ap50s: list[float] = []
    ap50_95s: list[float] = []
    for class_id, name in enumerate(names):
        mine = labels == class_id
        n_detections = int(np.count_nonzero(mine))
        n_truths = int(truth_counts[class_id])
        if n_truths == 0:
            results.append(ClassResult(name, 0, n_detections, None, None))
            continue
        ranked = hits[mine][np.argsort(-scores[mine], kind="stable")]
        true_positives = np.cumsum(ranked, axis=0, dtype=np.float64)
        recall = true_positives / n_truths
        precision = true_positives / np.arange(1, n_detections + 1, dtype=np.float64)[:, None]
        # IOU_THRESHOLDS[0] is 0.5: column 0 is the VOC curve.
        ap50 = average_precision(recall[:, 0], precision[:, 0], "all_points")
        coco = [
            average_precision(recall[:, t], precision[:, t], "coco101")
            for t in range(thresholds.size)
        ]
        ap50_95 = sum(coco) / len(coco)
        results.append(ClassResult(name, n_truths, n_detections, ap50, ap50_95))
        ap50s.append(ap50)
        ap50_95s.append(ap50_95)

    # With no ground truth at all there is nothing to average: NaN, as numpy's mean of nothing.
    return EvaluationReport(
        classes=tuple(results),
        map50=sum(ap50s) / len(ap50s) if ap50s else math.nan,
        map50_95=sum(ap50_95s) / len(ap50_95s) if ap50_95s else math.nan,
        images=len(ground_truth),
    )
