"""A second look at the detector's best candidates: the crop verifier.

The SSD judges each anchor from the features around it, and on photographs it
reads things that are not drawn at all as digits and shapes: a cat's eye as a
`9`, a cup's rim as a `circle`. More photographs in its own training halved
such mistakes on photographs like them and left the rest (models/README.md).
A cascade's second stage attacks them directly: a small classifier that looks
again at each candidate's crop, trained on the detector's own mistakes.

`VerifiedDetector` joins the two in one network. After the SSD's non-maximum
suppression, its `CANDIDATES` best candidates are cut from the network input
(each box widened by `CONTEXT` of its longer side on every side, so that the
verifier sees what surrounds it) and resampled to `CROP` x `CROP` pixels by
ROIAlign; the verifier classifies each crop over background and the
detector's classes; a candidate's score becomes the geometric mean of the
detector's score and the verifier's probability for the detector's class.
Candidates after the `CANDIDATES`-th, and the ``-1`` rows of no candidate,
keep their scores. The exported symbol has the SSD's three outputs in the
same layout, so the server, int8 quantization and the load-time graph
rewrites (`predictor.runtime.graph`) see an ordinary checkpoint; the
verifier's softmax is over the same classes plus background, so the class
count read from the last softmax (`predictor.runtime.model`) stays right.

The same `cut_crops` makes the training crops (`predictor.training.train_verifier`),
so that the verifier learns on exactly the pixels it is given when serving.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import mxnet as mx

from predictor.checkpoint import Checkpoint, read_class_names
from predictor.errors import PredictorError

CANDIDATES = 8
"""Candidates per image the verifier looks at (the best by the detector's score).

The training scenes hold at most 6 objects, and a photo with nothing in it
rarely has more than two candidates above 0.3; beyond the 8th, scores are
left as the detector gave them. The verifier's cost is per candidate: with
16 the digits model's forward pass took 1.40-1.48x the detector's, with 8
1.32-1.33x (BENCHMARKS.md), for mAP@0.5 0.986 against 0.985 in distribution
and 0.970 against 0.967 on withheld styles (models/README.md).
"""
CONTEXT = 0.2
"""Margin added on every side of a candidate's box, as a share of its longer side."""
CROP = 32
"""Side in pixels of the crops the verifier classifies."""
_CROP_OP = "_contrib_ROIAlign"


def build_verifier(class_count: int) -> mx.gluon.nn.HybridSequential:
    """An uninitialised crop classifier: scores for background then ``class_count`` classes.

    Six 3x3 convolutions (16 to 128 channels) with batch norm, three 2x2
    poolings, a global average and a linear layer: about 40 MFLOP per crop.
    """
    nn = mx.gluon.nn
    net = nn.HybridSequential(prefix="verifier_")
    with net.name_scope():
        for channels, pool in ((16, False), (32, True), (32, False), (64, True), (64, False),
                               (128, True)):  # fmt: skip
            net.add(
                nn.Conv2D(channels, 3, padding=1, use_bias=False),
                nn.BatchNorm(),
                nn.Activation("relu"),
            )
            if pool:
                net.add(nn.MaxPool2D(2))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(class_count + 1))
    return net


def cut_crops(F: Any, images: Any, boxes: Any) -> Any:
    """Crops around ``boxes`` (batch, K, 4) of ``images``: (batch * K, 3, CROP, CROP).

    ``F`` is ``mx.nd`` or ``mx.sym``; boxes are in input pixels (xmin, ymin,
    xmax, ymax), as the SSD outputs them. Each box is widened by `CONTEXT`.
    """
    x1, y1, x2, y2 = F.split(boxes, num_outputs=4, axis=-1)
    margin = CONTEXT * F.maximum(x2 - x1, y2 - y1)
    first = F.slice_axis(x1, axis=-1, begin=0, end=1)
    image_index = F.broadcast_like(
        F.reshape(F.contrib.arange_like(first, axis=0), (-1, 1, 1)), first
    )
    rois = F.concat(image_index, x1 - margin, y1 - margin, x2 + margin, y2 + margin, dim=-1)
    return F.contrib.ROIAlign(
        images, F.reshape(rois, (-1, 5)), pooled_size=(CROP, CROP), spatial_scale=1.0,
        sample_ratio=2,
    )  # fmt: skip


class VerifiedDetector(mx.gluon.HybridBlock):  # type: ignore[misc]
    """An SSD whose best candidates are re-scored by a crop verifier (see the module)."""

    def __init__(self, detector: mx.gluon.HybridBlock, verifier: mx.gluon.HybridBlock) -> None:
        super().__init__()
        with self.name_scope():
            self.detector = detector
            self.verifier = verifier

    def hybrid_forward(self, F: Any, x: Any) -> tuple[Any, Any, Any]:
        """Class ids, scores and boxes, as the SSD returns them, with verified scores."""
        ids, scores, boxes = self.detector(x)

        def best(values: Any) -> Any:
            return F.slice_axis(values, axis=1, begin=0, end=CANDIDATES)

        def rest(values: Any) -> Any:
            return F.slice_axis(values, axis=1, begin=CANDIDATES, end=None)

        best_ids, best_scores, best_boxes = best(ids), best(scores), best(boxes)
        probabilities = F.softmax(self.verifier(cut_crops(F, x, best_boxes)), axis=-1)
        # Column 0 is background; the detector's class c is column c + 1 (-1 rows read 0).
        agreement = F.reshape(
            F.pick(probabilities, F.reshape(best_ids, (-1,)) + 1, axis=-1), (-1, CANDIDATES, 1)
        )
        verified = F.where(best_ids >= 0, F.sqrt(F.relu(best_scores) * agreement), best_scores)
        return ids, F.concat(verified, rest(scores), dim=1), boxes


class VerificationError(PredictorError):
    """A detector cannot be joined to a verifier; the message says why."""


def is_verified(prefix: Path, epoch: int = 0) -> bool:
    """Whether the checkpoint at ``prefix`` already holds a verifier (it cuts crops)."""
    symbol_path = Checkpoint(prefix, epoch).symbol_path
    try:
        graph = json.loads(symbol_path.read_text(encoding="utf-8"))
        return any(node.get("op") == _CROP_OP for node in graph["nodes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(f"{symbol_path} is not a readable MXNet symbol: {exc}") from None


def load_detector_block(prefix: Path, epoch: int = 0) -> mx.gluon.SymbolBlock:
    """The network of a checkpoint written by `predictor train`, as a Gluon block."""
    checkpoint = Checkpoint(prefix, epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mx.gluon.SymbolBlock.imports(
            str(checkpoint.symbol_path), ["data"], str(checkpoint.params_path)
        )


def export_verified(
    detector_prefix: Path, verifier: mx.gluon.HybridBlock, prefix: Path, edge: int
) -> Checkpoint:
    """Write the detector at ``detector_prefix`` joined with ``verifier`` as one checkpoint.

    The class names and the preprocessing declaration are the detector's own.
    """
    source = Checkpoint(detector_prefix, 0)
    declared, _ = source.preprocessing(edge)
    if is_verified(detector_prefix):
        raise VerificationError(
            f"{source.symbol_path} already has a verifier: give the detector that "
            "`predictor train` exported"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = load_detector_block(detector_prefix)
        rows = detector(mx.nd.zeros((1, *declared.input_shape)))[0].shape[1]
        if rows < CANDIDATES:
            raise VerificationError(
                f"{source.symbol_path} returns {rows} candidates per image; the verifier "
                f"needs at least {CANDIDATES}"
            )
        net = VerifiedDetector(detector, verifier)
        net.hybridize()
        net(mx.nd.zeros((1, *declared.input_shape)))
        prefix.parent.mkdir(parents=True, exist_ok=True)
        net.export(str(prefix), epoch=0)
    checkpoint = Checkpoint(prefix, 0)
    checkpoint.write_class_names(read_class_names(source.synset_path))
    checkpoint.write_preprocessing(declared)
    return checkpoint
