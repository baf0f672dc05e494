"""Anchors must cover the whole input, or objects outside them can never be learned."""

from __future__ import annotations

import warnings

import mxnet as mx
import numpy as np
import pytest

from predictor.training.networks import (
    COMPACT_NETWORK,
    AnchorError,
    build_ssd,
    check_anchor_coverage,
    feature_map_sizes,
)

CLASSES = ["a", "b", "c"]


def anchor_centres(net: mx.gluon.HybridBlock, edge: int) -> np.ndarray:  # type: ignore[type-arg]
    with mx.autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, edge, edge)))
    centres: np.ndarray = anchors.asnumpy().reshape(-1, 4)[:, :2]  # type: ignore[type-arg]
    return centres


def test_gluoncv_mobilenet_preset_leaves_half_the_image_without_anchors() -> None:
    from gluoncv import model_zoo

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preset = model_zoo.get_model(
            "ssd_300_mobilenet0.25_custom", classes=CLASSES, pretrained_base=False
        )
    preset.initialize()
    assert feature_map_sizes(preset, 300) == [19, 10, 5, 3, 2, 1]
    with pytest.raises(AnchorError, match="reach only"):
        check_anchor_coverage(preset, 300)


def test_rebuilt_mobilenet_anchors_span_the_image_evenly() -> None:
    net = build_ssd("ssd_300_mobilenet0.25_custom", CLASSES, 300)
    net.initialize()
    check_anchor_coverage(net, 300)
    centres = anchor_centres(net, 300)
    first_map = centres[: 19 * 19 * 4]
    # 19 cells of 300/19 px: centres from half a cell to 300 minus half a cell.
    assert first_map[:, 0].min() == pytest.approx(300 / 19 / 2, abs=0.01)
    assert first_map[:, 0].max() == pytest.approx(300 - 300 / 19 / 2, abs=0.01)
    assert first_map[:, 1].max() == pytest.approx(300 - 300 / 19 / 2, abs=0.01)
    assert len(centres) == 2268  # same anchors per cell as the preset: same heads


@pytest.mark.parametrize("edge", [300, 512])
def test_compact_network_anchors_span_the_image(edge: int) -> None:
    net = build_ssd(COMPACT_NETWORK, CLASSES, edge)
    net.initialize()
    if edge == 300:
        assert feature_map_sizes(net, edge) == [38, 19, 10, 5, 3, 2, 1]
    check_anchor_coverage(net, edge)
    centres = anchor_centres(net, edge)
    assert centres[:, 0].max() > 0.9 * edge and centres[:, 1].max() > 0.9 * edge


def best_anchor_iou(anchors: np.ndarray, box: np.ndarray) -> float:  # type: ignore[type-arg]
    """The highest IoU of ``box`` (x0, y0, x1, y1) with any anchor (centre x, y, w, h)."""
    corners = np.concatenate(
        [anchors[:, :2] - anchors[:, 2:] / 2, anchors[:, :2] + anchors[:, 2:] / 2], 1
    )
    low, high = np.maximum(corners[:, :2], box[:2]), np.minimum(corners[:, 2:], box[2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=1)
    union = np.prod(anchors[:, 2:], axis=1) + np.prod(box[2:] - box[:2]) - inter
    return float(np.max(inter / union))


@pytest.mark.parametrize(
    ("aspect", "floor"),
    [(1.0, 0.5), (0.6, 0.45), (0.3, 0.35)],
    ids=["square", "digit", "thin one"],
)
def test_compact_network_has_an_anchor_for_an_object_wherever_it_sits(
    aspect: float, floor: float
) -> None:
    """No blind spots between anchor centres: for every object size the generator draws
    (24-250 px at 300 px) and every placement across a stride-60 cell, some anchor
    overlaps the object enough to be trained on it. The first compact network fell to
    IoU 0.30 (squares) and 0.15 (a thin "1"), and missed objects centred in the image."""
    net = build_ssd(COMPACT_NETWORK, CLASSES, 300)
    net.initialize()
    with mx.autograd.train_mode():
        _, _, anchors = net(mx.nd.zeros((1, 3, 300, 300)))
    anchors = anchors.asnumpy().reshape(-1, 4)
    worst = 1.0
    for height in (24, 30, 36, 44, 52, 62, 74, 88, 104, 124, 148, 176, 210, 250):
        width = height * aspect
        for x in np.arange(120, 181, 2.0):
            for y in (150.0, 158.0):
                box = np.array([x - width / 2, y - height / 2, x + width / 2, y + height / 2])
                worst = min(worst, best_anchor_iou(anchors, box))
    assert worst >= floor
