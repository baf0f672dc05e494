"""Graph rewrites at load time (`predictor.runtime.graph`): the same outputs, less work."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import numpy.typing as npt
import pytest

from predictor.checkpoint import read_preprocessing
from predictor.runtime.graph import (
    FOLDED_ANCHORS,
    fold_anchors,
    fold_into_convolutions,
    fuse_for_cpu,
    merge_detection_head,
    use_faster_operators,
)
from predictor.runtime.imaging import prepare
from predictor.training.verifier import is_verified

from .conftest import SMALL_EDGE, encode_jpeg, load_symbol, load_weights, run_symbol, scene
from .convert.photos import PHOTOS, load_photo, preprocess


def operator_counts(symbol: mx.sym.Symbol) -> Counter[str]:
    return Counter(node["op"] for node in json.loads(symbol.tojson())["nodes"])


def scenes_and_noise(count: int) -> npt.NDArray[np.float32]:
    """``count`` network inputs: real scenes (objects to find, so suppression has
    work), the last one pure noise when there are several."""
    scenes = max(1, count - 1)
    tensors = [
        prepare(encode_jpeg(scene(seed)), SMALL_EDGE, 2**31 - 1).tensor for seed in range(scenes)
    ]
    noise = np.random.default_rng(0).normal(0, 1, (3, SMALL_EDGE, SMALL_EDGE)).astype(np.float32)
    return np.stack(tensors + [noise] * (count - scenes))


def test_the_merged_head_needs_a_few_concatenations_not_one_per_class(
    small_model_prefix: Path,
) -> None:
    symbol = load_symbol(small_model_prefix)
    merged = merge_detection_head(symbol)
    before, after = operator_counts(symbol), operator_counts(merged)
    # GluonCV: 12 per-class blocks + their concatenation + the class ids + the
    # 3 (class, box, anchor) predictions; merged: the 3 predictions + 1. The crop
    # verifier after the suppression adds 2 (its crop boxes, the re-scored scores),
    # kept as they are.
    assert is_verified(small_model_prefix)
    assert before["Concat"] == 17 + 2
    assert after["Concat"] == 4 + 2
    assert after["_contrib_ROIAlign"] == before["_contrib_ROIAlign"] == 1
    assert after["Convolution"] == before["Convolution"]
    assert after["_contrib_box_nms"] == 1
    assert merged.list_outputs() == symbol.list_outputs()
    assert merged.list_arguments() == symbol.list_arguments()


IMAGE_SHAPE = (3, SMALL_EDGE, SMALL_EDGE)


def edited(prefix: Path, edit: Callable[[list[dict[str, Any]]], None]) -> mx.sym.Symbol:
    """The checkpoint's graph after ``edit`` changed its JSON nodes in place."""
    graph = json.loads(load_symbol(prefix).tojson())
    edit(graph["nodes"])
    return mx.sym.load_json(json.dumps(graph))


def assert_same_outputs(symbol: mx.sym.Symbol, rewritten: mx.sym.Symbol, prefix: Path) -> None:
    """Both graphs give equal outputs, bit for bit, on two scenes and noise."""
    batch = scenes_and_noise(2)
    plain = run_symbol(symbol, prefix, batch)
    for a, b in zip(plain, run_symbol(rewritten, prefix, batch), strict=True):
        assert np.array_equal(a, b)


def test_with_the_input_shape_only_the_suppressions_candidates_are_built(
    small_model_prefix: Path,
) -> None:
    symbol = load_symbol(small_model_prefix)
    selected = merge_detection_head(symbol, IMAGE_SHAPE)
    counts = operator_counts(selected)
    assert counts["topk"] == 1
    assert counts["Concat"] == 4 + 2  # + the verifier's 2
    # GluonCV's thresholding over every anchor and class is gone: its table of
    # class indices (0 + arange), and the comparison is made on 400 rows only.
    assert operator_counts(symbol)["broadcast_add"] == 1
    assert counts["broadcast_add"] == 0
    assert counts["_contrib_box_nms"] == 1
    (nms,) = [n for n in json.loads(selected.tojson())["nodes"] if n["op"] == "_contrib_box_nms"]
    _, (candidates_shape,), _ = selected.get_internals()[nms["inputs"][0][0]].infer_shape(
        data=(2, *IMAGE_SHAPE)
    )
    assert candidates_shape == (2, int(nms["attrs"]["topk"]), 6)
    assert selected.list_outputs() == symbol.list_outputs()
    assert selected.list_arguments() == symbol.list_arguments()


def test_a_suppression_that_keeps_every_candidate_gets_them_all(
    small_model_prefix: Path,
) -> None:
    """``topk`` over all anchors x classes would fail: the full merged list instead."""

    def keep_every_candidate(nodes: list[dict[str, Any]]) -> None:
        for node in nodes:
            if node["op"] == "_contrib_box_nms":
                node["attrs"]["topk"] = str(10**8)

    symbol = edited(small_model_prefix, keep_every_candidate)
    merged = merge_detection_head(symbol, IMAGE_SHAPE)
    assert operator_counts(merged)["topk"] == 0
    assert operator_counts(merged)["Concat"] == 4 + 2  # + the verifier's 2
    assert_same_outputs(symbol, merged, small_model_prefix)


def test_a_decoder_that_is_not_gluoncvs_keeps_its_thresholding(small_model_prefix: Path) -> None:
    """Class id -2 instead of -1 under the threshold: not GluonCV's decoder, so
    the best rows are taken from its outputs (same detections: such rows score 0)."""

    def minus_two_under_the_threshold(nodes: list[dict[str, Any]]) -> None:
        (fallback,) = [
            n for n in nodes if n["op"] == "_mul_scalar" and n["attrs"]["scalar"] == "-1"
        ]
        fallback["attrs"]["scalar"] = "-2"

    symbol = edited(small_model_prefix, minus_two_under_the_threshold)
    selected = merge_detection_head(symbol, IMAGE_SHAPE)
    assert operator_counts(selected)["topk"] == 1
    assert operator_counts(selected)["broadcast_add"] == 1
    assert_same_outputs(symbol, selected, small_model_prefix)


@pytest.mark.parametrize("input_shape", [None, IMAGE_SHAPE], ids=["every-row", "best-rows"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_the_merged_head_gives_the_same_detections_bit_for_bit(
    small_model_prefix: Path, batch_size: int, input_shape: tuple[int, ...] | None
) -> None:
    symbol = load_symbol(small_model_prefix)
    batch = scenes_and_noise(batch_size)
    plain = run_symbol(symbol, small_model_prefix, batch)
    merged = run_symbol(merge_detection_head(symbol, input_shape), small_model_prefix, batch)
    assert (plain[1] > 0.5).any(), "the scenes have objects the model finds"
    for a, b in zip(plain, merged, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


def test_a_graph_without_gluoncvs_head_is_left_as_it_is() -> None:
    data = mx.sym.var("data")
    features = mx.sym.Convolution(data, num_filter=4, kernel=(3, 3), name="conv")
    assert merge_detection_head(features) is features
    # Suppression over one concatenation that is not per class.
    rows = mx.sym.concat(mx.sym.var("a"), mx.sym.var("b"), dim=1)
    suppressed = mx.sym.contrib.box_nms(rows, overlap_thresh=0.5)
    assert merge_detection_head(suppressed) is suppressed


def test_per_class_blocks_out_of_order_are_left_as_they_are() -> None:
    """Block k must slice class k, or the merged order would differ."""
    ids, scores, boxes = mx.sym.var("ids"), mx.sym.var("scores"), mx.sym.var("boxes")
    blocks = [
        mx.sym.concat(
            mx.sym.slice_axis(ids, axis=-1, begin=k, end=k + 1),
            mx.sym.slice_axis(scores, axis=-1, begin=k, end=k + 1),
            boxes,
            dim=-1,
        )
        for k in (1, 0)
    ]
    suppressed = mx.sym.contrib.box_nms(mx.sym.concat(*blocks, dim=1), overlap_thresh=0.5)
    assert merge_detection_head(suppressed) is suppressed
    in_order = mx.sym.contrib.box_nms(mx.sym.concat(*blocks[::-1], dim=1), overlap_thresh=0.5)
    assert operator_counts(merge_detection_head(in_order))["Concat"] == 1


def test_folded_anchors_are_one_constant_instead_of_a_product_per_map(
    small_model_prefix: Path,
) -> None:
    symbol, weights = load_symbol(small_model_prefix), load_weights(small_model_prefix)
    folded, folded_weights = fold_anchors(symbol, weights, IMAGE_SHAPE)
    before, after = operator_counts(symbol), operator_counts(folded)
    maps = before["slice_like"]
    assert maps >= 6, "GluonCV cuts one anchor constant per feature map"
    assert after["slice_like"] == 0
    assert after["_mul_scalar"] == before["_mul_scalar"] - maps
    anchor_constants = {name for name in weights if "anchor" in name}
    assert len(anchor_constants) == maps
    assert anchor_constants.isdisjoint(folded_weights)
    assert FOLDED_ANCHORS in folded.list_arguments()
    assert set(folded_weights) == set(folded.list_arguments()) - {"data"} | set(
        folded.list_auxiliary_states()
    )
    assert folded_weights[FOLDED_ANCHORS].shape[0] == 1
    assert folded.list_outputs() == symbol.list_outputs()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_folded_anchors_give_the_same_detections_bit_for_bit(
    small_model_prefix: Path, batch_size: int
) -> None:
    symbol, weights = load_symbol(small_model_prefix), load_weights(small_model_prefix)
    batch = scenes_and_noise(batch_size)
    plain = run_symbol(symbol, small_model_prefix, batch)
    folded, folded_weights = fold_anchors(symbol, weights, IMAGE_SHAPE)
    served = run_symbol(
        merge_detection_head(folded, IMAGE_SHAPE), small_model_prefix, batch, folded_weights
    )
    assert (plain[1] > 0.5).any(), "the scenes have objects the model finds"
    for a, b in zip(plain, served, strict=True):
        assert a.shape == b.shape
        assert np.array_equal(a, b)


def test_anchors_computed_from_the_images_values_stay_in_the_graph() -> None:
    predictions = mx.sym.var("predictions")
    from_pixels = mx.sym.var("data").reshape((1, -1, 4)) * 2
    decoded = mx.sym.contrib.box_decode(predictions, from_pixels)
    weights = {"predictions": mx.nd.zeros((1, 4, 4))}
    assert fold_anchors(decoded, weights, (4, 2, 2)) == (decoded, weights)
    # Read for its shape only (slice_like's second input), they are folded.
    table = mx.nd.arange(64).reshape((1, 1, 4, 4, 4))
    cut = mx.sym.slice_like(mx.sym.var("table"), mx.sym.var("data") * 0, axes=(2, 3))
    shaped = mx.sym.contrib.box_decode(predictions, cut.reshape((1, -1, 4)))
    folded, folded_weights = fold_anchors(shaped, {**weights, "table": table}, (4, 2, 2))
    assert operator_counts(folded)["slice_like"] == 0
    assert "table" not in folded_weights
    expected = table.asnumpy()[:, :, :2, :2, :].reshape((1, -1, 4))
    assert np.array_equal(folded_weights[FOLDED_ANCHORS].asnumpy(), expected)


# ------------------------------------------------- padding and biases into convolutions

COCO_PREFIX = Path(__file__).resolve().parents[1] / "models" / "coco_nanodet" / "nanodet"


def test_the_converted_coco_models_pads_and_biases_go_into_its_convolutions() -> None:
    symbol, weights = load_symbol(COCO_PREFIX), load_weights(COCO_PREFIX)
    folded, folded_weights = fold_into_convolutions(symbol, weights)
    before, after = operator_counts(symbol), operator_counts(folded)
    assert (before["Pad"], before["broadcast_add"], before["Convolution"]) == (29, 41, 34)
    # The pad left is the max pooling's (zeros there are not what its own padding adds).
    assert (after["Pad"], after["Convolution"]) == (1, 34)
    assert after["broadcast_add"] == before["broadcast_add"] - 34
    biases = [name for name in folded_weights if name.endswith("_folded_bias")]
    assert len(biases) == 34 and all(folded_weights[name].ndim == 1 for name in biases)
    assert set(folded_weights) == set(folded.list_arguments()) - {"data"}
    assert folded.list_outputs() == symbol.list_outputs()
    # Fused for the CPU, every activation after a convolution now joins it.
    assert operator_counts(fuse_for_cpu(folded, mx.cpu()))["LeakyReLU"] == 0


def test_the_converted_coco_model_detects_the_same_after_the_rewrites() -> None:
    spec = read_preprocessing(Path(f"{COCO_PREFIX}-preprocess.json"))
    batch = np.concatenate([preprocess(load_photo(name), spec)[0] for name in PHOTOS[:3]])
    symbol, weights = load_symbol(COCO_PREFIX), load_weights(COCO_PREFIX)
    plain = run_symbol(symbol, COCO_PREFIX, batch, weights)
    folded_symbol, folded_weights = fold_into_convolutions(symbol, weights)
    faster = use_faster_operators(folded_symbol, batch.shape[1:])
    assert {"SwapAxis", "Pad"}.isdisjoint(operator_counts(faster))
    folded = run_symbol(faster, COCO_PREFIX, batch, folded_weights)
    ids, scores, boxes = plain
    assert (scores[:, 0] > 0.5).all(), "each photo has an object the model finds"
    assert np.array_equal(ids, folded[0])
    np.testing.assert_allclose(folded[1], scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(folded[2], boxes, rtol=1e-5, atol=1e-3)


def _conv_graph(
    pad_width: tuple[int, ...] = (0, 0, 0, 0, 1, 1, 1, 1),
    pad_value: float = 0.0,
    bias_shape: tuple[int, ...] = (1, 4, 1, 1),
    read_twice: bool = False,
) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """data -> Pad -> Convolution (no bias) -> + constant -> LeakyReLU: a converted layer."""
    rng = np.random.default_rng(3)
    padded = mx.sym.pad(
        mx.sym.var("data"), mode="constant", pad_width=pad_width, constant_value=pad_value
    )
    conv = mx.sym.Convolution(
        padded, mx.sym.var("w"), kernel=(3, 3), num_filter=4, no_bias=True, name="conv"
    )
    out = mx.sym.LeakyReLU(mx.sym.broadcast_add(conv, mx.sym.var("b")), act_type="leaky")
    if read_twice:
        out = mx.sym.Group([out, conv])
    weights = {
        "w": mx.nd.array(rng.normal(0, 1, (4, 3, 3, 3))),
        "b": mx.nd.array(rng.normal(0, 1, bias_shape)),
    }
    return out, weights


def _outputs(
    symbol: mx.sym.Symbol, weights: dict[str, mx.nd.NDArray]
) -> list[npt.NDArray[np.float32]]:
    data = mx.nd.array(np.random.default_rng(4).normal(0, 1, (2, 3, 8, 8)))
    executor = symbol.bind(mx.cpu(), {"data": data, **weights})
    return [output.asnumpy() for output in executor.forward()]


def test_symmetric_zero_padding_and_a_channel_bias_are_folded() -> None:
    symbol, weights = _conv_graph()
    folded, folded_weights = fold_into_convolutions(symbol, weights)
    counts = operator_counts(folded)
    assert counts["Pad"] == 0 and counts["broadcast_add"] == 0
    assert set(folded_weights) == {"w", "conv_folded_bias"}
    for a, b in zip(_outputs(symbol, weights), _outputs(folded, folded_weights), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("case", "kept"),
    [
        ({"pad_width": (0, 0, 0, 0, 0, 1, 0, 1)}, "Pad"),  # TF's SAME at stride 2
        ({"pad_value": 1.0}, "Pad"),
        ({"bias_shape": (1, 4, 8, 8)}, "broadcast_add"),  # per pixel, not per channel
        ({"read_twice": True}, "broadcast_add"),  # the bias-free result is an output too
    ],
)
def test_what_is_not_the_same_arithmetic_stays_as_it_is(case: dict[str, Any], kept: str) -> None:
    symbol, weights = _conv_graph(**case)
    folded, folded_weights = fold_into_convolutions(symbol, weights)
    assert operator_counts(folded)[kept] == 1
    for a, b in zip(_outputs(symbol, weights), _outputs(folded, folded_weights), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_gluoncv_ssd_has_nothing_to_fold(small_model_prefix: Path) -> None:
    symbol, weights = load_symbol(small_model_prefix), load_weights(small_model_prefix)
    folded, folded_weights = fold_into_convolutions(symbol, weights)
    assert folded is symbol and folded_weights is weights


def _evaluate(symbol: mx.sym.Symbol, data: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    output: npt.NDArray[np.float32] = (
        symbol.bind(mx.cpu(), {"data": mx.nd.array(data)}).forward()[0].asnumpy()
    )
    return output


def test_swapaxis_becomes_the_transpose_it_means() -> None:
    data = np.random.default_rng(5).normal(0, 1, (2, 3, 5, 7)).astype(np.float32)
    swapped = mx.sym.SwapAxis(mx.sym.var("data"), dim1=1, dim2=3) * 2
    faster = use_faster_operators(swapped, data.shape[1:])
    assert operator_counts(faster)["SwapAxis"] == 0 and operator_counts(faster)["transpose"] == 1
    assert np.array_equal(_evaluate(faster, data), _evaluate(swapped, data))


@pytest.mark.parametrize(
    ("value", "pool_type", "folded"),
    [(float("-inf"), "max", True), (0.0, "max", False), (float("-inf"), "avg", False)],
)
def test_a_pad_before_pooling_is_folded_only_where_pooling_pads_the_same_way(
    value: float, pool_type: str, folded: bool
) -> None:
    data = np.random.default_rng(6).normal(0, 1, (2, 3, 8, 8)).astype(np.float32) - 3
    padded = mx.sym.pad(
        mx.sym.var("data"),
        mode="constant",
        pad_width=(0, 0, 0, 0, 1, 1, 1, 1),
        constant_value=value,
    )
    pooled = mx.sym.Pooling(padded, kernel=(3, 3), stride=(2, 2), pool_type=pool_type)
    faster = use_faster_operators(pooled, data.shape[1:])
    assert (faster is pooled) is not folded
    assert operator_counts(faster)["Pad"] == (0 if folded else 1)
    assert np.array_equal(_evaluate(faster, data), _evaluate(pooled, data))
