"""MODEL_ENGINE=openvino: the convolutional trunk on OpenVINO computes what MXNet computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import numpy.typing as npt
import pytest

from predictor.checkpoint import read_preprocessing
from predictor.config import DeviceSpec, Settings
from predictor.detections import RawDetections
from predictor.errors import CheckpointError, ConfigError
from predictor.runtime.graph import fold_anchors, merge_detection_head
from predictor.runtime.imaging import prepare
from predictor.runtime.model import load_detectors
from predictor.runtime.openvino_trunk import OpenVinoTrunk, cpu_has_bfloat16, split_trunk
from predictor.training.detection_metrics import iou_matrix

from .conftest import SMALL_EDGE, encode_jpeg, load_symbol, load_weights, scene
from .convert.photos import PHOTOS, load_photo, preprocess
from .support.server_process import ServerProcess
from .test_graph import COCO_PREFIX

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
NEEDS_BFLOAT16 = pytest.mark.skipif(
    not cpu_has_bfloat16(), reason="this CPU has no bfloat16 instructions (AMX, AVX-512 BF16)"
)


def _ops(symbol: mx.sym.Symbol) -> list[str]:
    return [node["op"] for node in json.loads(symbol.tojson())["nodes"]]


def _forward_both(
    batch: list[npt.NDArray[np.float32]],
    prefix: Path,
    edge: int | None,
    *numerics: tuple[str, str],
) -> list[list[RawDetections]]:
    """``batch`` through one replica per (dtype, engine) of ``numerics``, in that order."""
    outputs = []
    for dtype, engine in numerics:
        detector = load_detectors(prefix, 0, edge, DeviceSpec(), len(batch), dtype, engine=engine)[
            0
        ]
        assert detector.engine == engine
        try:
            outputs.append(detector.forward(batch))
        finally:
            detector.close()
    return outputs


def _assert_same_detections(
    batch: list[npt.NDArray[np.float32]], prefix: Path, edge: int | None
) -> None:
    """Both engines, one replica each, on ``batch``: the same detections to float32 rounding."""
    expected, got = _forward_both(
        batch, prefix, edge, ("float32", "mxnet"), ("float32", "openvino")
    )
    found = 0
    for want, have in zip(expected, got, strict=True):
        shown = want.scores > 0.05
        found += int((want.scores > 0.5).sum())
        assert np.array_equal(want.class_ids[shown], have.class_ids[shown])
        np.testing.assert_allclose(have.scores[shown], want.scores[shown], atol=1e-4)
        np.testing.assert_allclose(have.boxes[shown], want.boxes[shown], atol=1e-2)
    assert found, "the photos have objects the model finds"


def _assert_bfloat16_finds_the_same(
    batch: list[npt.NDArray[np.float32]], prefix: Path, edge: int | None
) -> None:
    """Every float32 detection above 0.3 again in bfloat16: same class, IoU >= 0.9, score
    within 0.05 (bfloat16 keeps 8 bits of mantissa, so not to float32 rounding)."""
    expected, got = _forward_both(
        batch, prefix, edge, ("float32", "openvino"), ("bfloat16", "openvino")
    )
    found = 0
    for want, have in zip(expected, got, strict=True):
        candidates = have.scores > 0.2
        overlaps = iou_matrix(want.boxes, have.boxes[candidates])
        for i in np.flatnonzero(want.scores > 0.3):
            found += 1
            same = (have.class_ids[candidates] == want.class_ids[i]) & (overlaps[i] >= 0.9)
            scores = have.scores[candidates][same]
            assert scores.size, f"detection {i} (class {want.class_ids[i]}) lost in bfloat16"
            assert np.abs(scores - want.scores[i]).min() <= 0.05, (want.scores[i], scores)
        assert (have.scores > 0.3).sum() <= (want.scores > 0.2).sum()
    assert found, "the photos have objects the model finds"


def _digits_batch() -> list[npt.NDArray[np.float32]]:
    photos = [prepare(p.read_bytes(), SMALL_EDGE, 2**31 - 1).tensor for p in EXAMPLES.glob("*.jpg")]
    scenes = [prepare(encode_jpeg(scene(seed)), SMALL_EDGE, 2**31 - 1).tensor for seed in (1, 2)]
    return photos + scenes


def _coco_batch() -> list[npt.NDArray[np.float32]]:
    spec = read_preprocessing(Path(f"{COCO_PREFIX}-preprocess.json"))
    return [preprocess(load_photo(name), spec)[0][0] for name in PHOTOS[:3]]


def test_the_shipped_model_detects_the_same_on_either_engine(small_model_prefix: Path) -> None:
    _assert_same_detections(_digits_batch(), small_model_prefix, SMALL_EDGE)


def test_the_coco_model_detects_the_same_on_either_engine() -> None:
    _assert_same_detections(_coco_batch(), COCO_PREFIX, None)


@NEEDS_BFLOAT16
def test_the_shipped_model_finds_the_same_objects_in_bfloat16(small_model_prefix: Path) -> None:
    _assert_bfloat16_finds_the_same(_digits_batch(), small_model_prefix, SMALL_EDGE)


@NEEDS_BFLOAT16
def test_the_coco_model_finds_the_same_objects_in_bfloat16() -> None:
    _assert_bfloat16_finds_the_same(_coco_batch(), COCO_PREFIX, None)


def test_the_verifier_stays_on_mxnet_and_reads_the_image(small_model_prefix: Path) -> None:
    """The shipped model's crop verifier crops the input image: the tail takes it too."""
    shape = (3, SMALL_EDGE, SMALL_EDGE)
    symbol, weights = fold_anchors(
        load_symbol(small_model_prefix), load_weights(small_model_prefix), shape
    )
    split = split_trunk(merge_detection_head(symbol, shape), weights)
    assert split is not None
    assert split.tail_inputs[-1] == "data" and len(split.tail_inputs) == 3
    tail_ops = _ops(split.tail)
    # The verifier's convolutions are read after the crops: MXNet runs them.
    assert 0 < tail_ops.count("Convolution") < split.convolutions
    assert "_contrib_box_nms" in tail_ops and "softmax" in tail_ops


# --- Each translated operator against MXNet, on a small graph of its own.

Layer = tuple[Any, dict[str, npt.NDArray[np.float32]]]


def _conv(data: Any, **attrs: Any) -> Layer:
    rng = np.random.default_rng(1)
    groups = attrs.get("num_group", 1)
    weight = rng.normal(0, 1, (8, 4 // groups, *attrs["kernel"])).astype(np.float32)
    params = {"w": weight}
    inputs = [data, mx.sym.var("w")]
    if not attrs.get("no_bias", False):
        params["b"] = rng.normal(0, 1, (8,)).astype(np.float32)
        inputs.append(mx.sym.var("b"))
    return mx.sym.Convolution(*inputs, num_filter=8, name="conv", **attrs), params


def _batch_norm(data: Any, **attrs: Any) -> Layer:
    rng = np.random.default_rng(2)
    names = ("gamma", "beta", "mean", "var")
    params = {name: rng.uniform(0.5, 2.0, (4,)).astype(np.float32) for name in names}
    node = mx.sym.BatchNorm(data, *(mx.sym.var(n) for n in names), name="bn", **attrs)
    return node, params


LAYERS: dict[str, Any] = {
    "convolution": lambda d: _conv(d, kernel=(3, 3), pad=(1, 1)),
    "strided dilated convolution": lambda d: _conv(
        d, kernel=(3, 3), stride=(2, 2), dilate=(2, 2), pad=(2, 2), no_bias=True
    ),
    "grouped convolution": lambda d: _conv(d, kernel=(3, 3), num_group=2, pad=(1, 1)),
    "1x1 convolution": lambda d: _conv(d, kernel=(1, 1)),
    "batch norm, gamma fixed at 1 (MXNet's default)": lambda d: _batch_norm(d),
    "batch norm with gamma": lambda d: _batch_norm(d, fix_gamma=False, eps=1e-5),
    "relu": lambda d: (mx.sym.Activation(d, act_type="relu"), {}),
    "sigmoid": lambda d: (mx.sym.Activation(d, act_type="sigmoid"), {}),
    "tanh": lambda d: (mx.sym.Activation(d, act_type="tanh"), {}),
    "leaky relu": lambda d: (mx.sym.LeakyReLU(d, act_type="leaky", slope=0.1), {}),
    "max pooling": lambda d: (
        mx.sym.Pooling(d, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max"),
        {},
    ),
    "max pooling, full convention": lambda d: (
        mx.sym.Pooling(d, kernel=(2, 2), stride=(2, 2), pool_type="max", pooling_convention="full"),
        {},
    ),
    "average pooling": lambda d: (
        mx.sym.Pooling(d, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="avg"),
        {},
    ),
    "average pooling without the padding": lambda d: (
        mx.sym.Pooling(
            d, kernel=(3, 3), stride=(1, 1), pad=(1, 1), pool_type="avg", count_include_pad=False
        ),
        {},
    ),
    "global average pooling": lambda d: (
        mx.sym.Pooling(d, kernel=(1, 1), global_pool=True, pool_type="avg"),
        {},
    ),
    "global max pooling": lambda d: (
        mx.sym.Pooling(d, kernel=(1, 1), global_pool=True, pool_type="max"),
        {},
    ),
    "residual addition": lambda d: (
        mx.sym.elemwise_add(d, mx.sym.Activation(d, act_type="relu")),
        {},
    ),
    "broadcast addition": lambda d: (
        mx.sym.broadcast_add(d, mx.sym.var("c")),
        {"c": np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1)},
    ),
    "transpose": lambda d: (mx.sym.transpose(d, axes=(0, 2, 3, 1)), {}),
    "flatten": lambda d: (mx.sym.Flatten(d), {}),
    "reshape": lambda d: (mx.sym.Reshape(d, shape=(0, -1, 4)), {}),
    "concatenation": lambda d: (
        mx.sym.Concat(d, mx.sym.Activation(d, act_type="relu"), dim=1),
        {},
    ),
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_each_translated_operator_computes_what_mxnet_does(
    layer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(5)
    # A convolution first, so that there is a trunk; then the operator; then a
    # softmax, which stays with MXNet, so that the operator's result (flattened,
    # which is translated too) is the cut.
    first = mx.sym.Convolution(
        mx.sym.var("data"), mx.sym.var("w0"), kernel=(1, 1), num_filter=4, no_bias=True
    )
    node, params = LAYERS[layer](first)
    symbol = mx.sym.softmax(mx.sym.Flatten(node))
    weights = {"w0": rng.normal(0, 1, (4, 4, 1, 1)).astype(np.float32), **params}
    shape = (4, 9, 9)
    batch = rng.normal(0, 1, (2, *shape)).astype(np.float32)
    split = split_trunk(symbol, weights)
    assert split is not None
    assert _ops(split.tail)[-1] == "softmax"
    ndweights = {name: mx.nd.array(value) for name, value in weights.items()}
    trunk = OpenVinoTrunk(split, ndweights, shape, threads=1)
    got = trunk.run(batch)[0]
    aux = set(node.list_auxiliary_states())
    # MXNet's operators one by one: its oneDNN fusion of the reference graph gets a
    # convolution read both raw and through a ReLU wrong (the raw reading sees the ReLU's).
    monkeypatch.setenv("MXNET_SUBGRAPH_BACKEND", "NONE")
    executor = node.bind(
        mx.cpu(),
        {"data": mx.nd.array(batch), **{k: v for k, v in ndweights.items() if k not in aux}},
        aux_states={k: v for k, v in ndweights.items() if k in aux},
    )
    expected = executor.forward(is_train=False)[0].asnumpy()
    trunk.close()
    np.testing.assert_allclose(
        np.asarray(got).reshape(expected.shape), expected, rtol=1e-5, atol=1e-5
    )


def test_a_graph_without_a_convolution_has_no_trunk() -> None:
    symbol = mx.sym.softmax(mx.sym.Flatten(mx.sym.relu(mx.sym.var("data"))))
    assert split_trunk(symbol, {}) is None


def test_an_operator_it_does_not_translate_ends_the_trunk() -> None:
    data = mx.sym.var("data")
    conv = mx.sym.Convolution(data, mx.sym.var("w"), kernel=(1, 1), num_filter=4, no_bias=True)
    # Reshape's -3 (merge two axes) has no OpenVINO spelling here: MXNet keeps it.
    merged = mx.sym.Reshape(conv, shape=(0, -3, 0))
    later = mx.sym.Convolution(
        mx.sym.Reshape(merged, shape=(0, 4, 4, 4)),
        mx.sym.var("w2"),
        kernel=(1, 1),
        num_filter=2,
        no_bias=True,
    )
    split = split_trunk(later, {"w", "w2"})
    assert split is not None and split.convolutions == 1
    assert _ops(split.tail).count("Convolution") == 1


def test_an_int8_server_may_not_ask_for_openvino() -> None:
    refusal = "MODEL_ENGINE=openvino: runs float32 or bfloat16 on the CPU"
    with pytest.raises(ConfigError, match=refusal):
        Settings.from_env({"MODEL_ENGINE": "openvino", "MODEL_DTYPE": "int8"})
    with pytest.raises(ConfigError, match=refusal):
        Settings.from_env({"MODEL_ENGINE": "openvino", "MODEL_CONTEXT_GPU": "true"})
    with pytest.raises(ConfigError, match="MODEL_ENGINE"):
        Settings.from_env({"MODEL_ENGINE": "tensorrt"})
    assert Settings.from_env({"MODEL_ENGINE": "OpenVINO"}).model_engine == "openvino"
    assert Settings.from_env({}).model_engine == "mxnet"


def test_bfloat16_is_asked_for_with_openvino_on_the_cpu() -> None:
    with pytest.raises(ConfigError, match="MODEL_DTYPE=bfloat16: runs with OpenVINO only; set"):
        Settings.from_env({"MODEL_DTYPE": "bfloat16"})
    with pytest.raises(ConfigError, match="MODEL_DTYPE=bfloat16: runs on the CPU only"):
        Settings.from_env(
            {"MODEL_DTYPE": "bfloat16", "MODEL_ENGINE": "openvino", "MODEL_CONTEXT_GPU": "0"}
        )
    settings = Settings.from_env({"MODEL_DTYPE": "BFloat16", "MODEL_ENGINE": "openvino"})
    assert (settings.model_dtype, settings.model_engine) == ("bfloat16", "openvino")


def test_a_detector_refuses_openvino_for_another_numeric_type(small_model_prefix: Path) -> None:
    with pytest.raises(CheckpointError, match="MODEL_ENGINE=openvino runs float32 or bfloat16"):
        load_detectors(
            small_model_prefix, 0, SMALL_EDGE, DeviceSpec(), 1, "float16", engine="openvino"
        )
    with pytest.raises(CheckpointError, match="MODEL_DTYPE=bfloat16 runs with MODEL_ENGINE=openv"):
        load_detectors(small_model_prefix, 0, SMALL_EDGE, DeviceSpec(), 1, "bfloat16")


def _served_answers(
    prefix: Path, variants: dict[str, dict[str, str]], threshold: float
) -> dict[str, list[Any]]:
    """The example photos' predictions from one server per variant (extra environment), each
    with two replicas of one thread, as the README and the ResNet-50 benchmark run them."""
    env = {
        "MODEL_PREFIX": str(prefix),
        "MODEL_EDGE": str(SMALL_EDGE),
        "MODEL_CPU_REPLICAS": "2",
        "MODEL_CPU_THREADS": "1",
        "BATCH_MAX_SIZE": "2",
    }
    photos = [path.read_bytes() for path in sorted(EXAMPLES.glob("*.jpg"))]
    answers: dict[str, list[Any]] = {}
    for name, extra in variants.items():
        with ServerProcess({**env, **extra}) as server:
            replies = [server.request(f"/predict?threshold={threshold}", p) for p in photos]
            warmed = f"({extra.get('MODEL_DTYPE', 'float32')}, {extra['MODEL_ENGINE']}) warmed up"
            assert any(warmed in line for line in server.log)
        assert all(status == 200 for status, _ in replies)
        answers[name] = [body["prediction"] for _, body in replies]
    return answers


def test_a_server_on_openvino_answers_as_one_on_mxnet(small_model_prefix: Path) -> None:
    engines = {engine: {"MODEL_ENGINE": engine} for engine in ("mxnet", "openvino")}
    answers = _served_answers(small_model_prefix, engines, 0.3)
    assert any(answers["mxnet"]), "the example photos have objects the model finds"
    for plain, trunk in zip(answers["mxnet"], answers["openvino"], strict=True):
        assert [d["objectClass"] for d in trunk] == [d["objectClass"] for d in plain]
        for want, have in zip(plain, trunk, strict=True):
            assert abs(want["probability"] - have["probability"]) < 1e-3
            for key in ("x", "y", "width", "height"):
                assert abs(want[key] - have[key]) <= 1, (key, want, have)


@NEEDS_BFLOAT16
def test_a_bfloat16_server_finds_what_a_float32_one_does(small_model_prefix: Path) -> None:
    """The README's bfloat16 setting, against the same server in float32."""
    dtypes = {d: {"MODEL_ENGINE": "openvino", "MODEL_DTYPE": d} for d in ("float32", "bfloat16")}
    answers = _served_answers(small_model_prefix, dtypes, 0.2)
    found = 0
    for exact, brief in zip(answers["float32"], answers["bfloat16"], strict=True):
        for want in (d for d in exact if d["probability"] > 0.3):
            found += 1
            twins = [
                have
                for have in brief
                if have["objectClass"] == want["objectClass"]
                and _box_iou(have, want) >= 0.9
                and abs(have["probability"] - want["probability"]) <= 0.05
            ]
            assert twins, (want, brief)
    assert found, "the example photos have objects the model finds"


def _box_iou(a: dict[str, Any], b: dict[str, Any]) -> float:
    def corners(d: dict[str, Any]) -> list[float]:
        return [d["x"], d["y"], d["x"] + d["width"], d["y"] + d["height"]]

    return float(iou_matrix([corners(a)], [corners(b)])[0, 0])


def test_evaluate_runs_the_numerics_asked_for(small_model_prefix: Path) -> None:
    """`predictor evaluate --dtype/--engine`: what a user checks before serving bfloat16."""
    base = [sys.executable, "-m", "predictor", "evaluate", "--model", str(small_model_prefix)]
    base += ["--negatives", str(EXAMPLES), "--edge", str(SMALL_EDGE)]
    refused = subprocess.run(
        [*base, "--dtype", "bfloat16"], capture_output=True, text=True, timeout=120, check=False
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "MODEL_DTYPE=bfloat16 runs with MODEL_ENGINE=openvino only" in refused.stderr
    if not cpu_has_bfloat16():
        return
    done = subprocess.run(
        [*base, "--dtype", "bfloat16", "--engine", "openvino"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    photos = len(list(EXAMPLES.glob("*.jpg")))
    assert f"{photos} photos, " in done.stdout and "false detections above 0.5" in done.stdout
