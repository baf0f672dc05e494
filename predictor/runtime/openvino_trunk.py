"""A CPU detection graph's convolutional trunk, run by OpenVINO (``MODEL_ENGINE=openvino``).

Why: MXNet 1.9.1, the last release, carries oneDNN 2.4; OpenVINO's CPU
plugin carries a newer oneDNN with faster float32 convolutions on the same
cores. On the ResNet-50 SSD 512 (2-core Xeon with AVX-512), where the
convolutions are 97 % of the work, its trunk ran 1.0-1.3x as fast as MXNet's
fused graph, float32 both (BENCHMARKS.md, "OpenVINO trunk").

What: `split_trunk` divides a loaded graph where the tail first reads the
trunk. The trunk is every node reachable from the input through operators
this module can build (convolutions, batch norms, activations, poolings,
additions, and the transposes, flattenings and concatenations that gather
the heads' outputs); the tail is everything else (softmax, box decoding,
suppression, a verifier's crops and re-scoring) and stays an MXNet graph
whose inputs are the image batch, where it reads it, and the trunk's
outputs. `OpenVinoTrunk` builds the trunk node by node with OpenVINO's
operator set (no file, no ONNX), compiles it once per batch size and runs
it. Arithmetic is float32 unless bfloat16 is asked for (``MODEL_DTYPE=bfloat16``):
the precision hint is always set, since OpenVINO would otherwise pick
bfloat16 by itself on CPUs that have it. In bfloat16 the trunk's
convolutions run on the CPU's bfloat16 units (AMX or AVX-512 BF16), about
3.4x as fast on the ResNet-50 SSD 512's trunk on one Sapphire Rapids core;
the trunk's outputs come back as float32, and the tail computes in float32.

An operator or attribute this module does not translate ends the trunk
there, so a graph it cannot help is served by MXNet whole.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np

from predictor.detections import FloatArray
from predictor.runtime.graph import Node, reordered_symbol
from predictor.runtime.graph import attribute_flag as flag
from predictor.runtime.graph import attribute_ints as ints

log = logging.getLogger(__name__)

DATA = "data"
TRUNK_OUTPUT = "predictor_trunk_output"

# OpenVINO's node type is opaque to mypy (the package ships no stubs it reads).
OvNode = Any


@dataclass(frozen=True)
class TrunkSplit:
    """A graph cut in two: the trunk's nodes and the MXNet tail that reads them."""

    nodes: list[Node]  # the whole graph's JSON nodes
    members: frozenset[int]  # indices of the nodes the trunk computes or reads
    outputs: list[int]  # indices of the nodes whose first output the tail reads
    tail: mx.sym.Symbol  # inputs: `tail_inputs`
    tail_inputs: list[str]  # DATA (when the tail reads the image) and TRUNK_OUTPUT{k}

    @property
    def convolutions(self) -> int:
        """Convolutions the trunk runs."""
        return sum(1 for index in self.members if self.nodes[index]["op"] == "Convolution")

    @property
    def parameters(self) -> set[str]:
        """Names of the weights the trunk reads."""
        return {
            self.nodes[i]["name"]
            for i in self.members
            if self.nodes[i]["op"] == "null" and self.nodes[i]["name"] != DATA
        }


def split_trunk(symbol: mx.sym.Symbol, weights: Collection[str]) -> TrunkSplit | None:
    """``symbol`` cut where the tail first reads the trunk; None if the trunk has no convolution.

    ``weights`` names the graph's parameters: the trunk reads those and the image only.
    """
    graph = json.loads(symbol.tojson())
    nodes: list[Node] = graph["nodes"]
    in_trunk: set[int] = set()
    for index, node in enumerate(nodes):
        if (node["op"] == "null" and (node["name"] == DATA or node["name"] in weights)) or (
            _translatable(node)
            and all(source in in_trunk and output == 0 for source, output, _ in node["inputs"])
        ):
            in_trunk.add(index)
    data = [i for i, node in enumerate(nodes) if node["op"] == "null" and node["name"] == DATA]
    if len(data) != 1:
        return None
    # Entries of the trunk that the tail or the graph's outputs read: the cut.
    readers: dict[int, set[int]] = {}
    for index, node in enumerate(nodes):
        for source, output, _ in node["inputs"]:
            readers.setdefault(source, set()).add(index if output == 0 else -2)
    for source, output, _ in graph["heads"]:
        readers.setdefault(source, set()).add(-1 if output == 0 else -2)
    outputs = [
        index
        for index in sorted(in_trunk)
        if nodes[index]["op"] != "null"
        and any(reader < 0 or reader not in in_trunk for reader in readers.get(index, ()))
    ]
    if any(-2 in readers.get(index, ()) for index in outputs):
        return None  # a second output of a trunk node is read: not a graph this module builds
    members = frozenset(_ancestors(nodes, outputs))
    if not any(nodes[i]["op"] == "Convolution" for i in members):
        return None
    tail_nodes = [dict(node) for node in nodes]
    for position, index in enumerate(outputs):
        tail_nodes[index] = {"op": "null", "name": f"{TRUNK_OUTPUT}{position}", "inputs": []}
    tail = reordered_symbol({**graph, "nodes": tail_nodes})
    tail_inputs = [name for name in tail.list_arguments() if _is_input(name)]
    return TrunkSplit(nodes, members, outputs, tail, tail_inputs)


# MODEL_DTYPE -> OpenVINO's inference precision hint.
_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}


class OpenVinoTrunk:
    """The trunk of a `TrunkSplit`, compiled by OpenVINO for each batch size it is asked for.

    Not thread-safe: one caller at a time (the `Detector` that owns it holds a lock).
    """

    def __init__(
        self,
        split: TrunkSplit,
        weights: dict[str, mx.nd.NDArray],
        input_shape: tuple[int, ...],
        threads: int | None,
        dtype: str = "float32",
    ) -> None:
        """Prepare the trunk of ``split`` for ``input_shape`` images, on ``threads`` CPU threads.

        ``threads`` None leaves OpenVINO's own choice (every core). ``dtype`` is
        ``"float32"`` or ``"bfloat16"``; `ValueError` if this CPU has no
        bfloat16 instructions.
        """
        import openvino as ov  # imported here: the MXNet engine never needs it

        self._ov = ov
        self._core = ov.Core()
        precision = _PRECISIONS.get(dtype)
        if precision is None:
            raise ValueError(f"OpenVINO runs the trunk in {', '.join(_PRECISIONS)}, not {dtype}")
        if dtype == "bfloat16" and not cpu_has_bfloat16(self._core):
            raise ValueError(
                "this CPU has no bfloat16 instructions (AMX or AVX-512 BF16); use float32"
            )
        self._split = split
        self._input_shape = input_shape
        # The trunk's weights, converted once and shared by every batch size's model.
        self._constants = {
            name: np.ascontiguousarray(weights[name].asnumpy(), dtype=np.float32)
            for name in split.parameters
        }
        self._config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
            # The decoding pool and other replicas share the cores: no pinning.
            "ENABLE_CPU_PINNING": False,
        }
        if threads is not None:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._compiled: dict[int, Any] = {}
        self._requests: dict[int, Any] = {}

    def run(self, batch: FloatArray) -> list[FloatArray]:
        """The trunk's outputs for ``batch`` (N x input shape, float32), in the tail's order.

        The arrays are OpenVINO's own output buffers: valid until the next call.
        """
        count = batch.shape[0]
        request = self._requests.get(count)
        if request is None:
            compiled = self._core.compile_model(self._model(count), "CPU", self._config)
            request = compiled.create_infer_request()
            self._compiled[count] = compiled
            self._requests[count] = request
        request.infer({0: batch}, share_inputs=True, share_outputs=True)
        return [request.get_output_tensor(i).data for i in range(len(self._split.outputs))]

    def close(self) -> None:
        """Drop every compiled model and the weights now rather than at garbage collection."""
        self._requests.clear()
        self._compiled.clear()
        self._constants.clear()

    def _model(self, count: int) -> Any:
        ops = _opset()
        nodes = self._split.nodes
        built: dict[int, OvNode] = {}
        parameter = ops.parameter([count, *self._input_shape], np.float32, name=DATA)
        for index in sorted(self._split.members):
            node = nodes[index]
            if node["op"] == "null":
                name = node["name"]
                built[index] = parameter if name == DATA else self._constant(ops, name)
                continue
            inputs = [built[source] for source, _, _ in node["inputs"]]
            built[index] = _TRANSLATIONS[node["op"]](ops, inputs, node.get("attrs", {}))
        results = [ops.result(built[index]) for index in self._split.outputs]
        return self._ov.Model(results, [parameter], "predictor_trunk")

    def _constant(self, ops: Any, name: str) -> OvNode:
        return ops.constant(self._constants[name], shared_memory=True)


def cpu_has_bfloat16(core: Any = None) -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 on this machine."""
    if core is None:
        import openvino as ov

        core = ov.Core()
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def trunk_output_position(name: str) -> int:
    """Which of the trunk's outputs the tail's input ``name`` is."""
    return int(name.removeprefix(TRUNK_OUTPUT))


def _opset() -> Any:
    import openvino.opset13 as ops

    return ops


def _is_input(name: str) -> bool:
    return name == DATA or name.startswith(TRUNK_OUTPUT)


def _ancestors(nodes: list[Node], outputs: Sequence[int]) -> set[int]:
    """``outputs`` and every node they are computed from."""
    seen: set[int] = set()
    pending = list(outputs)
    while pending:
        index = pending.pop()
        if index in seen:
            continue
        seen.add(index)
        pending.extend(source for source, _, _ in nodes[index]["inputs"])
    return seen


# --- Translations: one MXNet operator (with its attributes) to OpenVINO's operator set.


def _attribute(attrs: dict[str, str], name: str, default: tuple[int, ...]) -> list[int]:
    return list(ints(attrs[name])) if name in attrs else list(default)


def _convolution(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    kernel = ints(attrs["kernel"])
    rank = len(kernel)
    strides = _attribute(attrs, "stride", (1,) * rank)
    dilations = _attribute(attrs, "dilate", (1,) * rank)
    pads = _attribute(attrs, "pad", (0,) * rank)
    groups = int(attrs.get("num_group", "1"))
    data, weight = inputs[0], inputs[1]
    if groups == 1:
        out = ops.convolution(data, weight, strides, pads, pads, dilations)
    else:
        filters, *rest = list(weight.get_output_shape(0))
        shape = ops.constant(np.array([groups, filters // groups, *rest], dtype=np.int64))
        grouped = ops.reshape(weight, shape, special_zero=False)
        out = ops.group_convolution(data, grouped, strides, pads, pads, dilations)
    if not flag(attrs.get("no_bias")) and len(inputs) > 2:
        channels = ops.constant(np.array([1, -1] + [1] * rank, dtype=np.int64))
        out = ops.add(out, ops.reshape(inputs[2], channels, special_zero=False))
    return out


def _batch_norm(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    data, gamma, beta, mean, variance = inputs
    # MXNet's symbol default: gamma is fixed at 1 unless fix_gamma is false.
    if flag(attrs.get("fix_gamma", "True")):
        gamma = ops.constant(np.ones(list(gamma.get_output_shape(0)), dtype=np.float32))
    epsilon = float(attrs.get("eps", "0.001"))
    return ops.batch_norm_inference(data, gamma, beta, mean, variance, epsilon)


def _activation(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    kind = attrs["act_type"]
    return {"relu": ops.relu, "sigmoid": ops.sigmoid, "tanh": ops.tanh}[kind](inputs[0])


def _leaky_relu(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    slope = np.array([float(attrs.get("slope", "0.25"))], dtype=np.float32)
    return ops.prelu(inputs[0], ops.constant(slope))


def _pooling(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    kind = attrs.get("pool_type", "max")
    if flag(attrs.get("global_pool")):
        axes = ops.constant(np.array([2, 3], dtype=np.int64))
        reduce = ops.reduce_max if kind == "max" else ops.reduce_mean
        return reduce(inputs[0], axes, keep_dims=True)
    kernel = list(ints(attrs["kernel"]))
    rank = len(kernel)
    strides = _attribute(attrs, "stride", (1,) * rank)
    pads = _attribute(attrs, "pad", (0,) * rank)
    rounding = "ceil" if attrs.get("pooling_convention", "valid") == "full" else "floor"
    if kind == "max":
        return ops.max_pool(inputs[0], strides, [1] * rank, pads, pads, kernel, rounding).output(0)
    exclude_pad = not flag(attrs.get("count_include_pad", "True"))
    return ops.avg_pool(inputs[0], strides, pads, pads, kernel, exclude_pad, rounding)


def _add(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    return ops.add(inputs[0], inputs[1])


def _transpose(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    axes = ops.constant(np.array(ints(attrs["axes"]), dtype=np.int64))
    return ops.transpose(inputs[0], axes)


def _flatten(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    shape = ops.constant(np.array([0, -1], dtype=np.int64))
    return ops.reshape(inputs[0], shape, special_zero=True)


def _concat(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    return ops.concat(inputs, int(attrs.get("dim", "1")))


def _reshape(ops: Any, inputs: list[OvNode], attrs: dict[str, str]) -> OvNode:
    shape = ops.constant(np.array(ints(attrs["shape"]), dtype=np.int64))
    return ops.reshape(inputs[0], shape, special_zero=True)


Translation = Callable[[Any, list[OvNode], dict[str, str]], OvNode]

_TRANSLATIONS: dict[str, Translation] = {
    "Convolution": _convolution,
    "BatchNorm": _batch_norm,
    "Activation": _activation,
    "LeakyReLU": _leaky_relu,
    "Pooling": _pooling,
    "elemwise_add": _add,
    "broadcast_add": _add,
    "transpose": _transpose,
    "Flatten": _flatten,
    "Concat": _concat,
    "Reshape": _reshape,
}


def _translatable(node: Node) -> bool:
    """Whether `_TRANSLATIONS` computes what MXNet does for this node's attributes."""
    op, attrs = node["op"], node.get("attrs", {})
    if op not in _TRANSLATIONS:
        return False
    if attrs.get("layout") not in (None, "NCHW", "None"):
        return False
    checks: dict[str, Callable[[], bool]] = {
        "Convolution": lambda: len(ints(attrs.get("kernel", ""))) == 2,
        "BatchNorm": lambda: int(attrs.get("axis", "1")) == 1,
        "Activation": lambda: attrs.get("act_type") in ("relu", "sigmoid", "tanh"),
        "LeakyReLU": lambda: attrs.get("act_type", "leaky") == "leaky",
        "Pooling": lambda: (
            attrs.get("pool_type", "max") in ("max", "avg")
            and attrs.get("pooling_convention", "valid") in ("valid", "full")
            and (flag(attrs.get("global_pool")) or len(ints(attrs.get("kernel", ""))) == 2)
        ),
        "transpose": lambda: bool(ints(attrs.get("axes", ""))),
        # 0 (copy) and -1 (infer) mean the same to OpenVINO with special_zero; not -2..-4.
        "Reshape": lambda: (
            not flag(attrs.get("reverse"))
            and bool(ints(attrs.get("shape", "")))
            and all(d >= -1 for d in ints(attrs.get("shape", "")))
        ),
    }
    check = checks.get(op)
    return check() if check is not None else True


__all__ = ["DATA", "OpenVinoTrunk", "TrunkSplit", "split_trunk", "trunk_output_position"]
