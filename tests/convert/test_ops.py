"""Each supported TF op, in small graph models with random weights, against TF.js itself.

Every graph is written as a TF.js graph model by the test, run by
@tensorflow/tfjs in node and by the converted MXNet graph on the same random
input; outputs must agree to 1e-5 of their magnitude.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import numpy.typing as npt
import pytest

from predictor.convert.graphmodel import load_graph_model
from predictor.convert.reference import run_tfjs
from predictor.convert.tfjs import Translation, translate
from tests.convert.tfjs_builder import GraphBuilder, b, f, i, ints, s, strings

FloatArray = npt.NDArray[np.float32]
TOLERANCE = 1e-5


def run_mxnet(translation: Translation, data: FloatArray) -> list[FloatArray]:
    """The converted graph on ``data`` (NCHW)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mx.gluon.SymbolBlock(mx.sym.Group(translation.outputs), mx.sym.var("data"))
    net.collect_params().load_dict({k: mx.nd.array(v) for k, v in translation.params.items()})
    outputs = net(mx.nd.array(data))
    if not isinstance(outputs, list):
        outputs = [outputs]
    return [o.asnumpy() for o in outputs]


def check_against_tfjs(
    builder: GraphBuilder, outputs: list[str], folder: Path, node_modules: Path, seed: int = 0
) -> dict[str, float]:
    """Max abs difference per output, relative to the output's magnitude (asserted)."""
    path = builder.write(folder, outputs)
    ((name, shape),) = builder.inputs.items()
    rng = np.random.default_rng(seed)
    source = rng.standard_normal(shape).astype(np.float32)
    model = load_graph_model(path)
    translation = translate(model, outputs)
    data = source.transpose(0, 3, 1, 2) if translation.source_layout == "NHWC" else source
    got = run_mxnet(translation, np.ascontiguousarray(data))
    reference = run_tfjs(path, [{name: source}], outputs, node_modules)[0].outputs
    report = {}
    for output, value in zip(outputs, got, strict=True):
        expected = reference[output]
        assert value.shape == expected.shape, output
        scale = max(1.0, float(np.abs(expected).max()))
        report[output] = float(np.abs(value - expected).max()) / scale
    worst = {k: v for k, v in report.items() if not v < TOLERANCE}
    assert not worst, f"outputs differ from TF.js: {worst}"
    return report


def _conv_attrs(stride: int = 1, padding: str = "SAME", dilation: int = 1) -> dict[str, object]:
    return {
        "strides": ints(1, stride, stride, 1),
        "padding": s(padding),
        "data_format": s("NHWC"),
        "dilations": ints(1, dilation, dilation, 1),
    }


def test_convolutions(tmp_path: Path, tfjs_reference: Path) -> None:
    """Conv2D (TF SAME stride 2 on even sizes is asymmetric), depthwise, fused bias+activation."""
    rng = np.random.default_rng(1)
    g = GraphBuilder()
    x = g.placeholder("x", [1, 10, 12, 4])
    outputs = []
    for kernel, stride, padding, dilation in [
        (3, 2, "SAME", 1),
        (5, 2, "SAME", 1),
        (3, 1, "VALID", 1),
        (3, 1, "SAME", 2),
        (1, 1, "SAME", 1),
    ]:
        w = g.const(
            f"w{kernel}{stride}{padding}{dilation}", rng.standard_normal((kernel, kernel, 4, 6))
        )
        outputs.append(
            g.op(
                f"conv{kernel}{stride}{padding}{dilation}",
                "Conv2D",
                [x, w],
                **_conv_attrs(stride, padding, dilation),
            )
        )
    bias = g.const("bias", rng.standard_normal(6))
    w = g.const("wf", rng.standard_normal((3, 3, 4, 6)))
    for activation in ("Relu", "Relu6"):
        outputs.append(
            g.op(
                f"fused_{activation}",
                "_FusedConv2D",
                [x, w, bias],
                fused_ops=strings("BiasAdd", activation),
                num_args=i(1),
                **_conv_attrs(2),
            )
        )
    dw = g.const("dw", rng.standard_normal((3, 3, 4, 2)))
    outputs.append(g.op("depthwise", "DepthwiseConv2dNative", [x, dw], **_conv_attrs(2)))
    dbias = g.const("dbias", rng.standard_normal(8))
    outputs.append(
        g.op(
            "fused_depthwise",
            "FusedDepthwiseConv2dNative",
            [x, dw, dbias],
            fused_ops=strings("BiasAdd", "Relu"),
            num_args=i(1),
            **_conv_attrs(1),
        )
    )
    check_against_tfjs(g, outputs, tmp_path, tfjs_reference)


def test_pooling_and_resizing(tmp_path: Path, tfjs_reference: Path) -> None:
    """MaxPool/AvgPool with TF padding; ResizeBilinear in legacy, half-pixel and corner modes."""
    g = GraphBuilder()
    x = g.placeholder("x", [1, 8, 10, 3])
    outputs = [
        g.op(
            "max_same_s2",
            "MaxPool",
            [x],
            ksize=ints(1, 3, 3, 1),
            strides=ints(1, 2, 2, 1),
            padding=s("SAME"),
        ),
        g.op(
            "max_same_s1",
            "MaxPool",
            [x],
            ksize=ints(1, 3, 3, 1),
            strides=ints(1, 1, 1, 1),
            padding=s("SAME"),
        ),
        g.op(
            "avg_valid",
            "AvgPool",
            [x],
            ksize=ints(1, 2, 2, 1),
            strides=ints(1, 2, 2, 1),
            padding=s("VALID"),
        ),
    ]
    for size, mode in [
        ((16, 20), "legacy"),
        ((16, 20), "half"),
        ((16, 20), "corners"),
        ((11, 7), "legacy"),
        ((5, 13), "half"),
    ]:
        target = g.const(f"size_{mode}_{size[0]}", np.array(size, dtype=np.int32))
        outputs.append(
            g.op(
                f"resize_{mode}_{size[0]}x{size[1]}",
                "ResizeBilinear",
                [x, target],
                align_corners=b(mode == "corners"),
                half_pixel_centers=b(mode == "half"),
            )
        )
    check_against_tfjs(g, outputs, tmp_path, tfjs_reference)


def test_layout_elementwise_and_reshapes(tmp_path: Path, tfjs_reference: Path) -> None:
    """An onnx-tf style NCHW graph: transposes around NHWC ops, pads, concat, split, reshape."""
    rng = np.random.default_rng(2)
    g = GraphBuilder()
    x = g.placeholder("x", [1, 3, 6, 8])
    to_nhwc = g.const("to_nhwc", np.array([0, 2, 3, 1], dtype=np.int32))
    to_nchw = g.const("to_nchw", np.array([0, 3, 1, 2], dtype=np.int32))
    pads = g.const("pads", np.array([[0, 0], [0, 0], [1, 2], [2, 1]], dtype=np.int32))
    padded = g.op("pad", "Pad", [x, pads])
    nhwc = g.op("t1", "Transpose", [padded, to_nhwc])
    w = g.const("w", rng.standard_normal((3, 3, 3, 8)))
    conv = g.op("conv", "Conv2D", [nhwc, w], **_conv_attrs(1, "VALID"))
    bias = g.const("bias", rng.standard_normal(8))
    added = g.op("add", "Add", [conv, bias])
    nchw = g.op("t2", "Transpose", [added, to_nchw])
    leaky = g.op("leaky", "LeakyRelu", [nchw], alpha=f(0.1))
    v2pads = g.const("v2pads", np.array([[0, 0], [0, 0], [1, 1], [0, 1]], dtype=np.int32))
    v2value = g.const("v2value", np.array(-1.5, dtype=np.float32))
    pad_v2 = g.op("padv2", "PadV2", [leaky, v2pads, v2value])
    # Hard swish as MobileNetV3 writes it: x * relu6(x + 3) / 6.
    three = g.const("three", np.array(3.0, dtype=np.float32))
    sixth = g.const("sixth", np.array(1 / 6, dtype=np.float32))
    shifted = g.op("hs_add", "AddV2", [pad_v2, three])
    relu6 = g.op("hs_relu6", "Relu6", [shifted])
    scaled = g.op("hs_mul", "Mul", [sixth, pad_v2])
    hswish = g.op("hswish", "Mul", [scaled, relu6])
    # Squeeze-excite: mean over H, W kept, sigmoid, multiply back.
    axes = g.const("axes", np.array([2, 3], dtype=np.int32))
    mean = g.op("mean", "Mean", [hswish, axes], keep_dims=b(True))
    gate = g.op("gate", "Sigmoid", [mean])
    excited = g.op("excite", "Mul", [hswish, gate])
    concat_axis = g.const("concat_axis", np.array(1, dtype=np.int32))
    joined = g.op("concat", "ConcatV2", [excited, pad_v2, concat_axis], N=i(2))
    sizes = g.const("sizes", np.array([10, -1], dtype=np.int32))
    split_dim = g.const("split_dim", np.array(1, dtype=np.int32))
    g.op("split", "SplitV", [joined, sizes, split_dim], num_split=i(2))
    # A reshape whose target is folded from constants (SparseToDense), as onnx-tf writes them.
    where = g.const("where", np.zeros((0, 1), dtype=np.int32))
    dense_shape = g.const("dense_shape", np.array([3], dtype=np.int32))
    values = g.const("values", np.zeros((0,), dtype=np.int32))
    default = g.const("default", np.array(0, dtype=np.int32))
    base = g.const("base", np.array([1, 10, -1], dtype=np.int32))
    sparse = g.op(
        "sparse", "SparseToDense", [where, dense_shape, values, default], validate_indices=b(True)
    )
    target = g.op("target", "AddV2", [base, sparse])
    reshaped = g.op("reshape", "Reshape", ["split", target])
    perm = g.const("perm", np.array([0, 2, 1], dtype=np.int32))
    flipped = g.op("flip", "Transpose", [reshaped, perm])
    soft = g.op("softmax", "Softmax", [flipped])
    sub = g.op("sub", "Sub", [soft, g.const("half", np.array(0.5, dtype=np.float32))])
    div = g.op("div", "RealDiv", [sub, g.const("two", np.array([2.0] * 10, dtype=np.float32))])
    top = g.op("max", "Maximum", [div, g.const("floor", np.array(-0.2, dtype=np.float32))])
    check_against_tfjs(g, [top, "split:1", excited], tmp_path, tfjs_reference)


def test_quantized_weights(tmp_path: Path, tfjs_reference: Path) -> None:
    """float16, uint8 and uint16 weights are expanded as TF.js expands them."""
    rng = np.random.default_rng(3)
    g = GraphBuilder()
    x = g.placeholder("x", [1, 6, 6, 3])
    outputs = []
    for quantize in ("float16", "uint8", "uint16"):
        w = g.const(f"w_{quantize}", rng.standard_normal((3, 3, 3, 4)), quantize=quantize)
        bias = g.const(f"b_{quantize}", rng.standard_normal(4), quantize=quantize)
        outputs.append(
            g.op(
                f"conv_{quantize}",
                "_FusedConv2D",
                [x, w, bias],
                fused_ops=strings("BiasAdd"),
                num_args=i(1),
                **_conv_attrs(1),
            )
        )
    check_against_tfjs(g, outputs, tmp_path, tfjs_reference)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_batch_is_free(tmp_path: Path, batch: int) -> None:
    """Reshapes written with batch 1 in the source work for any batch, image by image."""
    rng = np.random.default_rng(4)
    g = GraphBuilder()
    x = g.placeholder("x", [1, 6, 6, 3])
    w = g.const("w", rng.standard_normal((1, 1, 3, 6)))
    conv = g.op("conv", "Conv2D", [x, w], **_conv_attrs())
    shape = g.const("shape", np.array([1, -1, 3], dtype=np.int32))
    out = g.op("reshape", "Reshape", [conv, shape])
    translation = translate(load_graph_model(g.write(tmp_path, [out])), [out])
    images = rng.standard_normal((batch, 3, 6, 6)).astype(np.float32)
    together = run_mxnet(translation, images)[0]
    assert together.shape == (batch, 72, 3)
    for index in range(batch):
        alone = run_mxnet(translation, images[index : index + 1])[0]
        np.testing.assert_allclose(together[index], alone[0], rtol=0, atol=1e-6)
