"""Crop-classifier pretraining: where crops are cut, and that it trains the SSD's own features."""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictor.data import load_dataset, synthesize
from predictor.training.config import TrainConfig
from predictor.training.pretrain import (
    CROP_EDGE,
    background_window,
    crops_of,
    cut,
    object_window,
    pretrain_features,
)
from predictor.training.train import _build_network

boxes_in_640 = st.tuples(
    st.integers(0, 600), st.integers(0, 600), st.integers(2, 300), st.integers(2, 300)
).map(lambda b: np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], dtype=np.float64))


@settings(max_examples=200, deadline=None)
@given(box=boxes_in_640, seed=st.integers(0, 2**32 - 1))
def test_object_window_holds_the_whole_box_at_a_bounded_share(box: np.ndarray, seed: int) -> None:  # type: ignore[type-arg]
    window = object_window(box, np.random.default_rng(seed))
    assert window.left <= box[0] and window.top <= box[1]
    assert box[2] <= window.left + window.side + 1e-9 and box[3] <= window.top + window.side + 1e-9
    share = max(box[2] - box[0], box[3] - box[1]) / window.side
    assert 0.25 - 1e-9 <= share <= 0.9 + 1e-9


@settings(max_examples=200, deadline=None)
@given(boxes=st.lists(boxes_in_640, min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1))
def test_background_window_stays_inside_and_off_the_objects(
    boxes: list[np.ndarray],  # type: ignore[type-arg]
    seed: int,
) -> None:
    stacked = np.stack(boxes)
    window = background_window(stacked, 900, 900, np.random.default_rng(seed))
    if window is None:
        return  # crowded image: no background crop, which is allowed
    assert window.left >= 0 and window.top >= 0
    assert window.left + window.side <= 900 and window.top + window.side <= 900
    for x1, y1, x2, y2 in stacked:
        overlap_w = max(0.0, min(x2, window.left + window.side) - max(x1, window.left))
        overlap_h = max(0.0, min(y2, window.top + window.side) - max(y1, window.top))
        assert overlap_w * overlap_h <= 0.1 * max(1.0, (x2 - x1) * (y2 - y1)) + 1e-6


def test_cut_past_the_edge_replicates_border_pixels() -> None:
    pixels = np.zeros((10, 10, 3), dtype=np.uint8)
    pixels[:, 0] = 200  # left column
    from predictor.training.pretrain import Window

    crop = cut(pixels, Window(-4, 2, 6))
    assert crop.shape == (6, 6, 3)
    assert (crop[:, :5] == 200).all() and (crop[:, 5] == 0).all()


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("crops") / "set"
    synthesize(root, 12, seed=21, fmt="voc", progress=False)
    return root


def test_crops_are_labelled_class_plus_one_and_background_zero(tiny_set: Path) -> None:
    dataset = load_dataset(tiny_set)
    for index, record in enumerate(dataset.images):
        crops, labels = crops_of(dataset, record, index)
        targets = dataset.targets(record)
        assert list(labels[: len(targets)]) == [float(c) + 1 for c in targets[:, 4]]
        assert set(labels[len(targets) :].tolist()) <= {0.0}
        assert all(crop.shape == (3, CROP_EDGE, CROP_EDGE) for crop in crops)


def test_pretraining_updates_the_detectors_own_features(tiny_set: Path) -> None:
    dataset = load_dataset(tiny_set)
    net = _build_network(TrainConfig(), dataset.classes)
    first_conv = next(p for n, p in net.features.collect_params().items() if n.endswith("weight"))
    before = first_conv.data().asnumpy().copy()
    result = pretrain_features(
        net.features, dataset, dataset, epochs=1, learning_rate=1e-3, seed=0, workers=2,
        batch_size=8, progress=False,
    )  # fmt: skip
    assert result.epochs == 1 and 0.0 <= result.train_accuracy <= 1.0
    assert result.val_accuracy is not None and 0.0 <= result.val_accuracy <= 1.0
    assert not np.allclose(before, first_conv.data().asnumpy())
    # The detector still runs with the updated features.
    with mx.autograd.predict_mode():
        _ids, scores, _boxes = net(mx.nd.zeros((1, 3, 300, 300)))
    assert np.isfinite(scores.asnumpy()).all()
