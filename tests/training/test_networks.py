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
        assert feature_map_sizes(net, edge) == [19, 10, 5, 3, 2, 1]
    check_anchor_coverage(net, edge)
    centres = anchor_centres(net, edge)
    assert centres[:, 0].max() > 0.9 * edge and centres[:, 1].max() > 0.9 * edge
