"""Detection heads: from a detector's raw outputs to what the server decodes.

The server expects three outputs, in this order: class ids (B, N, 1),
scores (B, N, 1) and corner boxes (B, N, 4) in network-input pixels, with
non-maximum suppression already done and -1 in padding rows (GluonCV's SSD
convention). A TF.js export stops earlier (raw scores and box regressions;
decoding and NMS live in the JavaScript around it), so each head here
rebuilds that decoding as MXNet operators appended to the translated graph,
batch-independent throughout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mxnet as mx
import numpy as np

from predictor.convert.errors import ConversionError
from predictor.convert.graphmodel import Array


@dataclass(frozen=True)
class NmsSettings:
    """Candidate selection and class-aware non-maximum suppression."""

    score_threshold: float = 0.05
    iou_threshold: float = 0.6
    max_detections: int = 100
    candidates: int = 1000  # top (box, class) pairs that enter the suppression


@dataclass(frozen=True)
class Head:
    """The decoded outputs and the constants they need."""

    outputs: list[mx.sym.Symbol]  # class ids, scores, boxes
    params: dict[str, Array]


ConstantFactory = Callable[[Array, str], mx.sym.Symbol]


class _Constants:
    """Named float32 parameters for a head (kept apart from the translated graph's)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.params: dict[str, Array] = {}

    def __call__(self, array: Array, name: str) -> mx.sym.Symbol:
        full = f"{self.prefix}_{name}"
        value = np.ascontiguousarray(array, dtype=np.float32)
        self.params[full] = value
        return mx.sym.var(full, shape=value.shape, dtype="float32")


def class_aware_nms(
    scores: mx.sym.Symbol,
    boxes: mx.sym.Symbol,
    classes: int,
    total: int,
    nms: NmsSettings,
) -> list[mx.sym.Symbol]:
    """(ids, scores, boxes) after class-aware NMS of per-class ``scores`` (B, A, C).

    Every (box, class) pair is a candidate, as in the multi-class NMS of the
    upstream detectors; only the best ``nms.candidates`` of the ``A * C``
    pairs go into the suppression, which keeps it cheap.
    """
    count = min(nms.candidates, total * classes)
    flat = mx.sym.reshape(scores, shape=(0, -1))
    best, index = mx.sym.topk(flat, axis=1, k=count, ret_typ="both", dtype="float32")
    anchor = mx.sym.floor(index / classes)
    class_id = index - anchor * classes
    # gather_nd needs (batch index, anchor index) pairs: the batch index per row.
    batch_index = mx.sym.broadcast_like(
        mx.sym.reshape(mx.sym.contrib.arange_like(best, axis=0), shape=(-1, 1)), best
    )
    picked = mx.sym.gather_nd(boxes, mx.sym.stack(batch_index, anchor, axis=0))
    candidates = mx.sym.concat(
        mx.sym.expand_dims(class_id, axis=2), mx.sym.expand_dims(best, axis=2), picked, dim=2
    )
    kept = mx.sym.contrib.box_nms(
        candidates,
        overlap_thresh=nms.iou_threshold,
        valid_thresh=nms.score_threshold,
        topk=-1,
        coord_start=2,
        score_index=1,
        id_index=0,
        force_suppress=False,
        in_format="corner",
        out_format="corner",
    )
    kept = mx.sym.slice_axis(kept, axis=1, begin=0, end=min(nms.max_detections, count))
    return [
        mx.sym.slice_axis(kept, axis=2, begin=0, end=1),
        mx.sym.slice_axis(kept, axis=2, begin=1, end=2),
        mx.sym.slice_axis(kept, axis=2, begin=2, end=6),
    ]


def stable_softmax(x: mx.sym.Symbol) -> mx.sym.Symbol:
    """Softmax over the last axis, spelled out.

    Not MXNet's ``softmax`` op: the server (`predictor.model.network_class_count`)
    reads the class count of a checkpoint from its last softmax, which must
    stay the classifier's (GluonCV SSDs), not a box-side distribution.
    """
    shifted = mx.sym.broadcast_sub(x, mx.sym.max(x, axis=-1, keepdims=True))
    exponent = mx.sym.exp(shifted)
    return mx.sym.broadcast_div(exponent, mx.sym.sum(exponent, axis=-1, keepdims=True))


def nanodet_head(
    raw: Sequence[mx.sym.Symbol],
    shapes: Sequence[tuple[int, ...]],
    input_size: tuple[int, int],
    classes: int,
    nms: NmsSettings,
) -> Head:
    """NanoDet's GFL decoding: per level, class scores (B, N, C) and side distributions.

    Each of the four sides (left, top, right, bottom) is a distribution over
    ``reg_max + 1`` bins: softmax, then the expectation, times the level's
    stride, is the distance from the cell's centre ``((x + 0.5) s, (y + 0.5) s)``.
    The level of an output is told by its cell count; scores are already
    sigmoids in the exported graph.
    """
    height, width = input_size
    constants = _Constants("nanodet_head")
    levels: dict[int, dict[str, tuple[mx.sym.Symbol, tuple[int, ...]]]] = {}
    for sym, shape in zip(raw, shapes, strict=True):
        if len(shape) != 3:
            raise ConversionError(f"NanoDet head: output of shape {list(shape)} is not (1, N, K)")
        kind = "scores" if shape[2] == classes else "boxes"
        if kind == "boxes" and shape[2] % 4:
            raise ConversionError(
                f"NanoDet head: output of shape {list(shape)} is neither {classes} class "
                "scores nor 4 box-side distributions"
            )
        levels.setdefault(shape[1], {})[kind] = (sym, shape)
    all_scores, all_boxes, total = [], [], 0
    for cells in sorted(levels, reverse=True):
        pair = levels[cells]
        if set(pair) != {"scores", "boxes"}:
            raise ConversionError(f"NanoDet head: level with {cells} cells lacks scores or boxes")
        stride = _stride_for(cells, height, width)
        grid_w = math.ceil(width / stride)
        bins = pair["boxes"][1][2] // 4
        distribution = mx.sym.reshape(pair["boxes"][0], shape=(0, 0, 4, bins))
        probabilities = stable_softmax(distribution)
        projection = constants(np.arange(bins, dtype=np.float32).reshape(1, bins), f"bins{cells}")
        expected = mx.sym.FullyConnected(
            probabilities, weight=projection, num_hidden=1, no_bias=True, flatten=False
        )
        distance = mx.sym.reshape(expected, shape=(0, 0, 4)) * float(stride)
        index = np.arange(cells)
        cx = (index % grid_w + 0.5) * stride
        cy = (index // grid_w + 0.5) * stride
        centres = np.stack([cx, cy, cx, cy], axis=1)[None]
        signs = np.array([[[-1.0, -1.0, 1.0, 1.0]]], dtype=np.float32)
        boxes = mx.sym.broadcast_add(
            constants(centres, f"centres{cells}"),
            mx.sym.broadcast_mul(distance, constants(signs, f"signs{cells}")),
        )
        all_scores.append(pair["scores"][0])
        all_boxes.append(boxes)
        total += cells
    limits = np.array([[[width, height, width, height]]], dtype=np.float32)
    boxes = mx.sym.broadcast_minimum(
        mx.sym.relu(mx.sym.concat(*all_boxes, dim=1)), constants(limits, "limits")
    )
    scores = mx.sym.concat(*all_scores, dim=1)
    return Head(class_aware_nms(scores, boxes, classes, total, nms), constants.params)


def _stride_for(cells: int, height: int, width: int) -> int:
    for stride in (4, 8, 16, 32, 64, 128):
        if math.ceil(height / stride) * math.ceil(width / stride) == cells:
            return stride
    raise ConversionError(f"no stride gives {cells} cells on a {width}x{height} input")


def centernet_head(
    raw: Sequence[mx.sym.Symbol],
    shapes: Sequence[tuple[int, ...]],
    input_size: tuple[int, int],
    classes: int,
    nms: NmsSettings,
) -> Head:
    """CenterNet decoding: heatmap peaks (3x3 max-pool) and their side distances.

    ``raw`` is the heatmap (B, H, W, C) after the sigmoid and the sizes
    (B, H, W, 4): left, top, right, bottom distances in input pixels from
    the peak at ``(x * s, y * s)``, ``s`` = input / heatmap size, as the
    TF.js graph's own tail computes its ``detections``. The graph keeps the
    top peaks without suppression; suppression here is class-aware.
    """
    if len(raw) != 2 or len(shapes[0]) != 4 or shapes[0][3] != classes or shapes[1][3] != 4:
        raise ConversionError(
            f"CenterNet head: needs heatmap (1, H, W, {classes}) and sizes (1, H, W, 4), "
            f"got {[list(s) for s in shapes]}"
        )
    height, width = input_size
    _, rows, cols, _ = shapes[0]
    stride_y, stride_x = height / rows, width / cols
    constants = _Constants("centernet_head")
    heat = mx.sym.transpose(raw[0], axes=(0, 3, 1, 2))  # (B, C, H, W)
    peak = mx.sym.Pooling(heat, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="max")
    peaks = heat * mx.sym.broadcast_equal(heat, peak)
    # (B, H*W, C): one row of class scores per cell, like NanoDet's levels.
    scores = mx.sym.transpose(mx.sym.reshape(peaks, shape=(0, 0, -1)), axes=(0, 2, 1))
    sizes = mx.sym.reshape(raw[1], shape=(0, -1, 4))
    index = np.arange(rows * cols)
    x = (index % cols) * stride_x
    y = (index // cols) * stride_y
    centres = np.stack([x, y, x, y], axis=1)[None]
    signs = np.array([[[-1.0, -1.0, 1.0, 1.0]]], dtype=np.float32)
    boxes = mx.sym.broadcast_add(
        constants(centres, "centres"), mx.sym.broadcast_mul(sizes, constants(signs, "signs"))
    )
    return Head(class_aware_nms(scores, boxes, classes, rows * cols, nms), constants.params)


HEADS = {"nanodet": nanodet_head, "centernet": centernet_head}
