"""Translate a TensorFlow.js graph model into an MXNet symbol and its parameters.

The translation walks the TensorFlow graph from the requested outputs back to
the input and emits, for every node, MXNet operators that compute the same
values. Three things make that exact rather than approximately right:

- Layout. TensorFlow graphs are mostly NHWC; MXNet's CPU convolutions are
  NCHW. Every translated tensor therefore carries a permutation saying which
  TensorFlow ("logical") axis each MXNet ("physical") axis holds. A TF
  ``Transpose`` only changes that permutation; a transpose is emitted only
  where an operator needs a particular physical order (a reshape flattens
  in TensorFlow's order, so its input is put back in logical order first).
  A graph that is NHWC from input to output thus runs NCHW without a single
  transpose, and an onnx-tf export that transposes around every convolution
  loses all of them.
- Padding. TensorFlow's ``SAME`` puts the odd pixel after, not before; where
  before and after differ an explicit ``pad`` is emitted.
- Resizing. ``ResizeBilinear`` (legacy or half-pixel sampling) becomes two
  matrix products with interpolation matrices computed here exactly as
  TensorFlow.js computes its sampling positions.

The batch dimension stays free: a reshape that keeps the batch axis is
written with MXNet's ``0`` (copy this dimension) instead of the graph's
literal 1, and anything that would mix images of a batch is an error.

Constants (weights, shapes) are folded with numpy; whatever the translator
does not know raises `ConversionError` naming the node and its op.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np

from predictor.convert.errors import ConversionError
from predictor.convert.graphmodel import Array, GraphModel, Node, split_ref


@dataclass(frozen=True)
class Value:
    """A translated tensor: MXNet symbol, layout permutation and batch axis.

    Physical axis ``i`` of ``sym`` holds logical (TensorFlow) axis ``perm[i]``.
    ``batch`` is the logical axis that carries the batch, None for tensors
    that do not depend on it.
    """

    sym: mx.sym.Symbol
    perm: tuple[int, ...]
    batch: int | None

    @property
    def rank(self) -> int:
        """Number of axes."""
        return len(self.perm)


Operand = Value | Array
Handler = Callable[["Translator", Node, list[Operand]], list[Operand]]

NHWC_AS_NCHW = (0, 3, 1, 2)
_HANDLERS: dict[str, Handler] = {}


def _handles(*ops: str) -> Callable[[Handler], Handler]:
    def register(function: Handler) -> Handler:
        for op in ops:
            _HANDLERS[op] = function
        return function

    return register


def supported_ops() -> list[str]:
    """TensorFlow ops the translator knows (constant folding aside)."""
    return sorted(_HANDLERS)


@dataclass(frozen=True)
class Translation:
    """The translated outputs (in logical order, batch axis 0) and the weights they use."""

    outputs: list[mx.sym.Symbol]
    output_shapes: list[tuple[int, ...]]  # with batch 1
    params: dict[str, Array]
    input_shape: tuple[int, ...]  # of `data`, batch 1, as the MXNet graph takes it
    input_layout: str  # "NCHW" or "NHWC": the layout of `data`
    source_layout: str  # the layout the TF.js graph's own input has


class Translator:
    """Translates one graph model; use `translate`."""

    def __init__(self, model: GraphModel, input_layout: str = "auto") -> None:
        self.model = model
        if len(model.inputs) != 1:
            raise ConversionError(
                f"{model.path}: the graph has {len(model.inputs)} inputs "
                f"({', '.join(model.inputs) or 'none'}); exactly one image input is supported"
            )
        ((self.input_name, shape),) = model.inputs.items()
        if len(shape) != 4:
            raise ConversionError(
                f"{model.path}: input {self.input_name} has shape {list(shape)}; "
                "a 4-D image batch is needed"
            )
        self.source_layout = _guess_layout(shape) if input_layout == "auto" else input_layout
        if self.source_layout not in ("NCHW", "NHWC"):
            raise ConversionError(f"input layout must be NCHW or NHWC, not {input_layout!r}")
        if -1 in shape[1:]:
            raise ConversionError(
                f"{model.path}: input {self.input_name} has unknown size {list(shape)}"
            )
        if self.source_layout == "NHWC":
            _, height, width, channels = shape
        else:
            _, channels, height, width = shape
        # The MXNet graph always takes NCHW; an NHWC source gets the permutation.
        self.probe_shape = (1, channels, height, width)
        self.params: dict[str, Array] = {}
        self.values: dict[tuple[str, int], Operand] = {}
        self._shapes: dict[int, tuple[int, ...]] = {}
        self._names: set[str] = set()

    # --- helpers used by the op handlers -------------------------------------------------

    def shape(self, value: Value) -> tuple[int, ...]:
        """Logical shape of ``value`` for a batch of one."""
        key = value.sym.handle.value
        physical = self._shapes.get(key)
        if physical is None:
            try:
                _, out_shapes, _ = value.sym.infer_shape(data=self.probe_shape)
            except mx.base.MXNetError as exc:
                raise ConversionError(f"shape inference failed: {_first_line(exc)}") from None
            if not out_shapes:
                raise ConversionError("shape inference failed")
            physical = tuple(int(d) for d in out_shapes[0])
            self._shapes[key] = physical
        logical = [0] * len(physical)
        for axis, size in zip(value.perm, physical, strict=True):
            logical[axis] = size
        return tuple(logical)

    def name(self, base: str) -> str:
        """A unique MXNet name derived from a TF node name."""
        clean = re.sub(r"[^A-Za-z0-9_]", "_", base).strip("_") or "node"
        candidate, index = clean, 1
        while candidate in self._names or candidate == "data":
            index += 1
            candidate = f"{clean}_{index}"
        self._names.add(candidate)
        return candidate

    def constant(self, array: Array, base: str) -> mx.sym.Symbol:
        """A float32 parameter holding ``array`` (stored in the params file)."""
        name = self.name(base)
        value = np.ascontiguousarray(array, dtype=np.float32)
        self.params[name] = value
        return mx.sym.var(name, shape=value.shape, dtype="float32")

    def materialize(self, value: Value, perm: Sequence[int]) -> mx.sym.Symbol:
        """``value``'s symbol with physical axis ``i`` holding logical axis ``perm[i]``."""
        perm = tuple(perm)
        if value.perm == perm:
            return value.sym
        axes = tuple(value.perm.index(axis) for axis in perm)
        return mx.sym.transpose(value.sym, axes=axes)

    def logical(self, value: Value) -> mx.sym.Symbol:
        """``value`` in TensorFlow's own axis order."""
        return self.materialize(value, tuple(range(value.rank)))

    def const_like(self, array: Array, value: Value, base: str) -> mx.sym.Symbol | float:
        """A constant operand laid out to broadcast against ``value``."""
        if array.size == 1:
            return float(array.reshape(()))
        if array.ndim > value.rank:
            raise ConversionError(f"constant {base} has more axes than the tensor it meets")
        full = array.reshape((1,) * (value.rank - array.ndim) + array.shape)
        if value.batch is not None and full.shape[value.batch] != 1:
            raise ConversionError(f"constant {base} differs along the batch axis")
        return self.constant(np.transpose(full, value.perm), base)

    # --- the walk -------------------------------------------------------------------------

    def translate(self, output_refs: Sequence[str]) -> Translation:
        """Translate the subgraph that computes ``output_refs``."""
        for node in self._topological(output_refs):
            inputs = [self.values[_key(ref)] for ref in node.inputs]
            results = self._translate_node(node, inputs)
            for index, result in enumerate(results):
                self.values[(node.name, index)] = result
        outputs, shapes = [], []
        for ref in output_refs:
            value = self.values[_key(ref)]
            if not isinstance(value, Value):
                raise ConversionError(f"output {ref} is a constant; nothing to convert")
            if value.batch != 0:
                raise ConversionError(
                    f"output {ref} does not keep the batch as its first axis "
                    "(the graph mixes the images of a batch)"
                )
            outputs.append(self.logical(value))
            shapes.append(self.shape(value))
        return Translation(
            outputs=outputs,
            output_shapes=shapes,
            params=self.params,
            input_shape=self.probe_shape,
            input_layout="NCHW",
            source_layout=self.source_layout,
        )

    def _topological(self, output_refs: Sequence[str]) -> list[Node]:
        order: list[Node] = []
        state: dict[str, int] = {}  # 1: on the stack, 2: done
        for ref in output_refs:
            root = self.model.node(ref).name
            stack: list[tuple[str, int]] = [(root, 0)]
            while stack:
                name, child = stack.pop()
                if state.get(name) == 2:
                    continue
                node = self.model.node(name)
                state[name] = 1
                if child < len(node.inputs):
                    stack.append((name, child + 1))
                    dep = self.model.node(node.inputs[child]).name
                    if state.get(dep) == 1:
                        raise ConversionError(f"node {name} ({node.op}) is part of a cycle")
                    if state.get(dep) != 2:
                        stack.append((dep, 0))
                else:
                    state[name] = 2
                    order.append(node)
        return order

    def _translate_node(self, node: Node, inputs: list[Operand]) -> list[Operand]:
        try:
            if node.op == "Const":
                return [self._const(node)]
            if node.op == "Placeholder":
                return [self._placeholder(node)]
            if all(isinstance(i, np.ndarray) for i in inputs) and node.op in _FOLDERS:
                arrays = [i for i in inputs if isinstance(i, np.ndarray)]
                return _FOLDERS[node.op](node, arrays)
            handler = _HANDLERS.get(node.op)
            if handler is None:
                raise ConversionError(f"op {node.op} is not supported")
            return handler(self, node, inputs)
        except ConversionError as exc:
            message = str(exc)
            if message.startswith("node "):
                raise
            raise ConversionError(f"node {node.name} ({node.op}): {message}") from None
        except mx.base.MXNetError as exc:
            raise ConversionError(
                f"node {node.name} ({node.op}): MXNet rejected the translation: {_first_line(exc)}"
            ) from None

    def _const(self, node: Node) -> Array:
        if node.name in self.model.weights:
            return self.model.weights[node.name]
        # A constant whose value is not in the manifest is the proto default
        # (zeros); TF.js also falls back to it (seen for PadV2's constant_values).
        tensor = node.attr("value") or {}
        if any(key.endswith("Val") or key == "tensorContent" for key in tensor):
            raise ConversionError("inline constant values are not supported")
        shape = [int(d.get("size", 0)) for d in tensor.get("tensorShape", {}).get("dim", [])]
        dtypes: dict[str, type[np.generic]] = {"DT_INT32": np.int32, "DT_BOOL": np.bool_}
        return np.zeros(shape, dtype=dtypes.get(str(tensor.get("dtype")), np.float32))

    def _placeholder(self, node: Node) -> Value:
        if node.name != self.input_name:
            raise ConversionError("a second input is not supported")
        perm = NHWC_AS_NCHW if self.source_layout == "NHWC" else (0, 1, 2, 3)
        return Value(mx.sym.var("data"), perm, 0)


def translate(
    model: GraphModel, output_refs: Sequence[str], input_layout: str = "auto"
) -> Translation:
    """Translate the part of ``model`` that computes ``output_refs``."""
    return Translator(model, input_layout).translate(output_refs)


def _guess_layout(shape: Sequence[int]) -> str:
    # Images have 1, 3 or 4 channels and are larger than that on both sides.
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    return "NCHW"


def _key(ref: str) -> tuple[str, int]:
    return split_ref(ref)


def _first_line(exc: BaseException) -> str:
    for line in str(exc).splitlines():
        if line.strip().startswith("MXNetError:"):
            return line.strip().removeprefix("MXNetError:").strip()
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__


def _tensor(node: Node, operand: Operand, what: str = "input") -> Value:
    if not isinstance(operand, Value):
        raise ConversionError(f"{what} is a constant where a tensor is expected")
    return operand


def _array(node: Node, operand: Operand, what: str) -> Array:
    if not isinstance(operand, np.ndarray):
        raise ConversionError(f"{what} must be a constant (computed values are not supported)")
    return operand


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ConversionError(f"axis {axis} out of range for rank {rank}")
    return axis % rank


# --- constant folding ------------------------------------------------------------------------

Folder = Callable[[Node, list[Array]], list[Operand]]


def _fold_sparse_to_dense(node: Node, args: list[Array]) -> list[Operand]:
    indices, shape, values, default = args
    out = np.full(tuple(int(s) for s in shape.reshape(-1)), default.reshape(()), values.dtype)
    # Indices are a scalar (one element), a vector (1-D output) or (count, rank).
    if indices.ndim == 0:
        idx = indices.reshape(1, 1)
    elif indices.ndim == 1:
        idx = indices.reshape(-1, 1)
    else:
        idx = indices.reshape(indices.shape[0], indices.shape[1])
    for row, value in zip(idx, np.broadcast_to(values, (len(idx),)), strict=True):
        out[tuple(int(i) for i in row)] = value
    return [out]


def _fold_binary(function: Callable[[Array, Array], Array]) -> Folder:
    def fold(node: Node, args: list[Array]) -> list[Operand]:
        return [np.asarray(function(args[0], args[1]))]

    return fold


def _fold_concat(node: Node, args: list[Array]) -> list[Operand]:
    return [np.concatenate(args[:-1], axis=int(args[-1]))]


def _fold_reshape(node: Node, args: list[Array]) -> list[Operand]:
    return [args[0].reshape(tuple(int(s) for s in args[1].reshape(-1)))]


def _fold_cast(node: Node, args: list[Array]) -> list[Operand]:
    target = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}.get(node.attr("DstT"))
    if target is None:
        raise ConversionError(f"cast to {node.attr('DstT')} is not supported")
    return [args[0].astype(target)]


_FOLDERS: dict[str, Folder] = {
    "SparseToDense": _fold_sparse_to_dense,
    "Add": _fold_binary(np.add),
    "AddV2": _fold_binary(np.add),
    "Sub": _fold_binary(np.subtract),
    "Mul": _fold_binary(np.multiply),
    "FloorDiv": _fold_binary(np.floor_divide),
    "FloorMod": _fold_binary(np.mod),
    "Maximum": _fold_binary(np.maximum),
    "Minimum": _fold_binary(np.minimum),
    "Identity": lambda node, args: [args[0]],
    "Cast": _fold_cast,
    "ConcatV2": _fold_concat,
    "Reshape": _fold_reshape,
    "Transpose": lambda node, args: [np.transpose(args[0], args[1].reshape(-1))],
    "Pack": lambda node, args: [np.stack(args, axis=int(node.attr("axis", 0)))],
}


# --- element-wise ops ------------------------------------------------------------------------


@_handles("Identity", "Snapshot", "StopGradient")
def _identity(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    return [inputs[0]]


_UNARY: dict[str, Callable[[mx.sym.Symbol], mx.sym.Symbol]] = {
    "Relu": lambda x: mx.sym.relu(x),
    "Relu6": lambda x: mx.sym.clip(x, 0.0, 6.0),
    "Sigmoid": lambda x: mx.sym.sigmoid(x),
    "Tanh": lambda x: mx.sym.tanh(x),
    "Exp": lambda x: mx.sym.exp(x),
    "Log": lambda x: mx.sym.log(x),
    "Sqrt": lambda x: mx.sym.sqrt(x),
    "Rsqrt": lambda x: mx.sym.rsqrt(x),
    "Square": lambda x: mx.sym.square(x),
    "Neg": lambda x: mx.sym.negative(x),
    "Abs": lambda x: mx.sym.abs(x),
    "Floor": lambda x: mx.sym.floor(x),
    "Elu": lambda x: mx.sym.LeakyReLU(x, act_type="elu", slope=1.0),
}


@_handles(*_UNARY)
def _unary(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    return [Value(_UNARY[node.op](x.sym), x.perm, x.batch)]


@_handles("LeakyRelu")
def _leaky_relu(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    alpha = float(node.attr("alpha", 0.2))
    return [Value(mx.sym.LeakyReLU(x.sym, act_type="leaky", slope=alpha), x.perm, x.batch)]


@_handles("Softmax")
def _softmax(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    if x.batch == x.rank - 1:
        raise ConversionError("softmax over the batch axis")
    axis = x.perm.index(x.rank - 1)
    # Spelled out rather than MXNet's softmax op, which the server reads as the classifier.
    shifted = mx.sym.broadcast_sub(x.sym, mx.sym.max(x.sym, axis=axis, keepdims=True))
    exponent = mx.sym.exp(shifted)
    out = mx.sym.broadcast_div(exponent, mx.sym.sum(exponent, axis=axis, keepdims=True))
    return [Value(out, x.perm, x.batch)]


# name -> (broadcast op, scalar op with the tensor on the left, scalar op with it on the right)
_BINARY: dict[str, tuple[Callable[..., mx.sym.Symbol], Callable[..., mx.sym.Symbol] | None]] = {
    "Add": (mx.sym.broadcast_add, None),
    "AddV2": (mx.sym.broadcast_add, None),
    "Sub": (mx.sym.broadcast_sub, None),
    "Mul": (mx.sym.broadcast_mul, None),
    "RealDiv": (mx.sym.broadcast_div, None),
    "Div": (mx.sym.broadcast_div, None),
    "Maximum": (mx.sym.broadcast_maximum, None),
    "Minimum": (mx.sym.broadcast_minimum, None),
    "Pow": (mx.sym.broadcast_power, None),
    "Equal": (mx.sym.broadcast_equal, None),
    "Greater": (mx.sym.broadcast_greater, None),
    "Less": (mx.sym.broadcast_lesser, None),
    "SquaredDifference": (
        lambda a, b: mx.sym.square(mx.sym.broadcast_sub(a, b)),
        None,
    ),
    "FloorDiv": (lambda a, b: mx.sym.floor(mx.sym.broadcast_div(a, b)), None),
    "FloorMod": (
        lambda a, b: mx.sym.broadcast_sub(
            a, mx.sym.broadcast_mul(mx.sym.floor(mx.sym.broadcast_div(a, b)), b)
        ),
        None,
    ),
}


def _scalar_op(op: str, x: mx.sym.Symbol, scalar: float, tensor_first: bool) -> mx.sym.Symbol:
    # Python operators on symbols emit MXNet's *_scalar ops (no broadcast, no parameter).
    if op in ("Add", "AddV2"):
        return x + scalar
    if op == "Mul":
        return x * scalar
    if op == "Sub":
        return x - scalar if tensor_first else scalar - x
    if op in ("RealDiv", "Div"):
        return x / scalar if tensor_first else scalar / x
    if op == "Maximum":
        return mx.sym.maximum(x, scalar)
    if op == "Minimum":
        return mx.sym.minimum(x, scalar)
    constant = mx.sym.ones_like(x) * scalar
    broadcast = _BINARY[op][0]
    return broadcast(x, constant) if tensor_first else broadcast(constant, x)


@_handles(*_BINARY, "BiasAdd")
def _binary(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    a, b = inputs[0], inputs[1]
    op = "Add" if node.op == "BiasAdd" else node.op
    if node.op == "BiasAdd" and node.attr("data_format", "NHWC") != "NHWC":
        raise ConversionError("BiasAdd with data_format NCHW is not supported")
    broadcast = _BINARY[op][0]
    if isinstance(a, Value) and isinstance(b, Value):
        if a.rank != b.rank:
            raise ConversionError("operands of different ranks are not supported")
        out = broadcast(a.sym, t.materialize(b, a.perm))
        batch = a.batch if a.batch is not None else b.batch
        return [Value(out, a.perm, batch)]
    tensor, array, tensor_first = (a, b, True) if isinstance(a, Value) else (b, a, False)
    assert isinstance(tensor, Value) and isinstance(array, np.ndarray)
    other = t.const_like(array, tensor, f"{node.name}_const")
    if isinstance(other, float):
        out = _scalar_op(op, tensor.sym, other, tensor_first)
    else:
        out = broadcast(tensor.sym, other) if tensor_first else broadcast(other, tensor.sym)
    return [Value(out, tensor.perm, tensor.batch)]


@_handles("Cast")
def _cast(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    target = node.attr("DstT")
    # Everything is float32 in the MXNet graph: booleans are 0/1 and small integers are
    # exact, so only a cast from float to integer changes values (truncation).
    if target == "int32" and node.attr("SrcT") == "float32":
        return [Value(mx.sym.fix(x.sym), x.perm, x.batch)]
    if target in ("float32", "int32", "bool"):
        if target == "bool":
            return [Value(x.sym != 0, x.perm, x.batch)]
        return [x]
    raise ConversionError(f"cast to {target} is not supported")


# --- layout ops ------------------------------------------------------------------------------


@_handles("Transpose")
def _transpose(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    order = [int(p) for p in _array(node, inputs[1], "perm").reshape(-1)]
    if sorted(order) != list(range(x.rank)):
        raise ConversionError(f"perm {order} is not a permutation of {x.rank} axes")
    inverse = [order.index(axis) for axis in range(x.rank)]
    perm = tuple(inverse[axis] for axis in x.perm)
    batch = None if x.batch is None else inverse[x.batch]
    return [Value(x.sym, perm, batch)]


@_handles("Reshape")
def _reshape(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    target = [int(s) for s in _array(node, inputs[1], "shape").reshape(-1)]
    source = t.shape(x)
    rest = int(np.prod(source[1:], dtype=np.int64))
    batch: int | None = None
    if x.batch is None:
        shape = target
    elif x.batch == 0 and target and target[0] in (-1, source[0]) and _fits(target[1:], rest):
        # The batch stays the first axis: let MXNet copy it instead of the literal 1.
        shape, batch = [0, *target[1:]], 0
        if target[0] == -1 and -1 in target[1:]:
            raise ConversionError(f"shape {target} has two unknown sizes")
    else:
        raise ConversionError(
            f"reshape of {list(source)} to {target} mixes the batch with other axes"
        )
    out = mx.sym.reshape(t.logical(x), shape=tuple(shape))
    return [Value(out, tuple(range(len(target))), batch)]


def _fits(dims: Sequence[int], size: int) -> bool:
    known = int(np.prod([d for d in dims if d != -1], dtype=np.int64))
    if -1 in dims:
        return known > 0 and size % known == 0
    return known == size


@_handles("ExpandDims")
def _expand_dims(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    axis = int(_array(node, inputs[1], "axis").reshape(()))
    axis = axis % (x.rank + 1)
    # The new axis goes last physically; logical axes at or after it shift by one.
    perm = (*(p + 1 if p >= axis else p for p in x.perm), axis)
    batch = None if x.batch is None else (x.batch + 1 if x.batch >= axis else x.batch)
    return [Value(mx.sym.expand_dims(x.sym, axis=x.rank), perm, batch)]


@_handles("Squeeze")
def _squeeze(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    shape = t.shape(x)
    axes = node.attr("squeeze_dims") or [i for i, s in enumerate(shape) if s == 1]
    axes = sorted(_axis(a, x.rank) for a in axes)
    if x.batch in axes:
        raise ConversionError("squeezing the batch axis is not supported")
    physical = tuple(x.perm.index(a) for a in axes)
    kept = [p for p in x.perm if p not in axes]
    renumber = {old: new for new, old in enumerate(sorted(kept))}
    batch = None if x.batch is None else renumber[x.batch]
    out = mx.sym.squeeze(x.sym, axis=physical)
    return [Value(out, tuple(renumber[p] for p in kept), batch)]


@_handles("ConcatV2")
def _concat(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    parts = inputs[:-1]
    axis_value = _array(node, inputs[-1], "axis")
    tensors = [p for p in parts if isinstance(p, Value)]
    reference = tensors[0]
    axis = _axis(int(axis_value.reshape(())), reference.rank)
    if axis == reference.batch:
        raise ConversionError("concatenation along the batch axis is not supported")
    symbols = []
    for index, part in enumerate(parts):
        if isinstance(part, Value):
            symbols.append(t.materialize(part, reference.perm))
        else:
            if reference.batch is not None:
                raise ConversionError(f"input {index} is a constant beside batched tensors")
            symbols.append(t.constant(np.transpose(part, reference.perm), f"{node.name}_{index}"))
    out = mx.sym.concat(*symbols, dim=reference.perm.index(axis))
    return [Value(out, reference.perm, reference.batch)]


def _split(t: Translator, x: Value, axis: int, sizes: list[int]) -> list[Operand]:
    if axis == x.batch:
        raise ConversionError("splitting the batch axis is not supported")
    total = t.shape(x)[axis]
    if sizes.count(-1) > 1:
        raise ConversionError(f"split sizes {sizes} have two unknowns")
    if -1 in sizes:
        sizes[sizes.index(-1)] = total - sum(s for s in sizes if s != -1)
    if sum(sizes) != total:
        raise ConversionError(f"split sizes {sizes} do not add up to {total}")
    physical = x.perm.index(axis)
    outputs: list[Operand] = []
    begin = 0
    for size in sizes:
        piece = mx.sym.slice_axis(x.sym, axis=physical, begin=begin, end=begin + size)
        outputs.append(Value(piece, x.perm, x.batch))
        begin += size
    return outputs


@_handles("SplitV")
def _split_v(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    sizes = [int(s) for s in _array(node, inputs[1], "size_splits").reshape(-1)]
    axis = _axis(int(_array(node, inputs[2], "split_dim").reshape(())), x.rank)
    return _split(t, x, axis, sizes)


@_handles("Split")
def _split_even(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[1])
    axis = _axis(int(_array(node, inputs[0], "split_dim").reshape(())), x.rank)
    count = int(node.attr("num_split", 1))
    total = t.shape(x)[axis]
    if total % count:
        raise ConversionError(f"{total} does not split into {count} equal parts")
    return _split(t, x, axis, [total // count] * count)


@_handles("Pad", "PadV2", "MirrorPad")
def _pad(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    pads = _array(node, inputs[1], "paddings").reshape(-1, 2).astype(int)
    value = 0.0
    mode = "constant"
    if node.op == "PadV2":
        value = float(_array(node, inputs[2], "constant_values").reshape(()))
    if node.op == "MirrorPad":
        if node.attr("mode") != "REFLECT":
            raise ConversionError(f"MirrorPad mode {node.attr('mode')} is not supported")
        mode = "reflect"
    if x.rank != 4 or len(pads) != 4:
        raise ConversionError("only 4-D padding is supported")
    physical = [pads[axis] for axis in x.perm]
    if any(physical[0]) or any(physical[1]):
        raise ConversionError("padding of the batch or channel axis is not supported")
    if not any(any(p) for p in physical):
        return [x]
    width = tuple(int(v) for pair in physical for v in pair)
    out = mx.sym.pad(x.sym, mode=mode, pad_width=width, constant_value=value)
    return [Value(out, x.perm, x.batch)]


# --- reductions ------------------------------------------------------------------------------

_REDUCE = {"Mean": mx.sym.mean, "Sum": mx.sym.sum, "Max": mx.sym.max, "Min": mx.sym.min}


@_handles(*_REDUCE)
def _reduce(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    axes = sorted({_axis(int(a), x.rank) for a in _array(node, inputs[1], "axes").reshape(-1)})
    if x.batch in axes:
        raise ConversionError("reducing over the batch axis is not supported")
    keep = bool(node.attr("keep_dims", False))
    physical = tuple(x.perm.index(a) for a in axes)
    out = _REDUCE[node.op](x.sym, axis=physical, keepdims=keep)
    if keep:
        return [Value(out, x.perm, x.batch)]
    kept = [p for p in x.perm if p not in axes]
    renumber = {old: new for new, old in enumerate(sorted(kept))}
    batch = None if x.batch is None else renumber[x.batch]
    return [Value(out, tuple(renumber[p] for p in kept), batch)]


# --- convolution and pooling -----------------------------------------------------------------


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TensorFlow's SAME padding: the odd pixel goes after."""
    effective = (kernel - 1) * dilation + 1
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _spatial(node: Node, key: str, layout: str, default: int) -> tuple[int, int]:
    values = node.attr(key) or [default] * 4
    if len(values) != 4:
        raise ConversionError(f"attribute {key}={values} is not 4 values")
    if layout == "NHWC":
        return int(values[1]), int(values[2])
    return int(values[2]), int(values[3])


def _padding(
    node: Node,
    layout: str,
    size: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of the op's padding attribute."""
    padding = node.attr("padding")
    if padding == "VALID":
        return (0, 0), (0, 0)
    if padding == "SAME":
        return (
            _same_padding(size[0], kernel[0], stride[0], dilation[0]),
            _same_padding(size[1], kernel[1], stride[1], dilation[1]),
        )
    if padding == "EXPLICIT":
        explicit = node.attr("explicit_paddings") or []
        if len(explicit) != 8:
            raise ConversionError(f"explicit_paddings {explicit} is not 8 values")
        h, w = (2, 4) if layout == "NHWC" else (4, 6)
        return (explicit[h], explicit[h + 1]), (explicit[w], explicit[w + 1])
    raise ConversionError(f"padding {padding!r} is not supported")


_ACTIVATIONS: dict[str, Callable[[mx.sym.Symbol, Node], mx.sym.Symbol]] = {
    "Relu": lambda x, node: mx.sym.relu(x),
    "Relu6": lambda x, node: mx.sym.clip(x, 0.0, 6.0),
    "Elu": lambda x, node: mx.sym.LeakyReLU(x, act_type="elu", slope=1.0),
    "Sigmoid": lambda x, node: mx.sym.sigmoid(x),
    "Tanh": lambda x, node: mx.sym.tanh(x),
    "LeakyRelu": lambda x, node: mx.sym.LeakyReLU(
        x, act_type="leaky", slope=float(node.attr("leakyrelu_alpha", 0.2))
    ),
}


@_handles(
    "Conv2D",
    "DepthwiseConv2dNative",
    "_FusedConv2D",
    "FusedDepthwiseConv2dNative",
)
def _conv(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    if x.rank != 4 or x.batch != 0:
        raise ConversionError("the input is not a 4-D image batch")
    layout = node.attr("data_format", "NHWC")
    if layout not in ("NHWC", "NCHW"):
        raise ConversionError(f"data_format {layout} is not supported")
    in_perm = NHWC_AS_NCHW if layout == "NHWC" else (0, 1, 2, 3)
    filters = _array(node, inputs[1], "filter").astype(np.float32)
    if filters.ndim != 4:
        raise ConversionError(f"filter of shape {filters.shape} is not 4-D")
    kernel = (int(filters.shape[0]), int(filters.shape[1]))
    stride = _spatial(node, "strides", layout, 1)
    dilation = _spatial(node, "dilations", layout, 1)
    logical = t.shape(x)
    size = (logical[1], logical[2]) if layout == "NHWC" else (logical[2], logical[3])
    channels = logical[3] if layout == "NHWC" else logical[1]
    (top, bottom), (left, right) = _padding(node, layout, size, kernel, stride, dilation)
    data = t.materialize(x, in_perm)
    if (top, left) != (bottom, right):
        # Asymmetric (TF SAME with stride 2 on even sizes): pad explicitly, convolve unpadded.
        data = mx.sym.pad(data, mode="constant", pad_width=(0, 0, 0, 0, top, bottom, left, right))
        conv_pad = (0, 0)
    else:
        conv_pad = (top, left)
    depthwise = "Depthwise" in node.op
    if depthwise:
        multiplier = int(filters.shape[3])
        if int(filters.shape[2]) != channels:
            raise ConversionError(f"filter {filters.shape} does not fit {channels} channels")
        # TF's output channel c * multiplier + m uses filter[:, :, c, m].
        weight = filters.reshape(kernel[0], kernel[1], channels * multiplier).transpose(2, 0, 1)
        weight = weight[:, None, :, :]
        groups, num_filter = channels, channels * multiplier
    else:
        if int(filters.shape[2]) != channels:
            raise ConversionError(f"filter {filters.shape} does not fit {channels} channels")
        weight = filters.transpose(3, 2, 0, 1)
        groups, num_filter = 1, int(filters.shape[3])
    fused = list(node.attr("fused_ops") or []) if node.op.startswith(("_Fused", "Fused")) else []
    bias = None
    if fused and fused[0] == "BiasAdd":
        if int(node.attr("num_args", 1)) != 1:
            raise ConversionError("fused ops with more than one extra argument are not supported")
        bias = _array(node, inputs[2], "bias").astype(np.float32).reshape(-1)
        fused = fused[1:]
    elif fused:
        raise ConversionError(f"fused ops {fused} are not supported")
    if len(fused) > 1 or (fused and fused[0] not in _ACTIVATIONS):
        raise ConversionError(f"fused activation {fused} is not supported")
    name = t.name(node.name)
    args: dict[str, Any] = {
        "data": data,
        "weight": t.constant(weight, f"{name}_weight"),
        "kernel": kernel,
        "stride": stride,
        "dilate": dilation,
        "pad": conv_pad,
        "num_filter": num_filter,
        "num_group": groups,
        "no_bias": bias is None,
        "name": name,
    }
    if bias is not None:
        args["bias"] = t.constant(bias, f"{name}_bias")
    out = mx.sym.Convolution(**args)
    if fused:
        out = _ACTIVATIONS[fused[0]](out, node)
    return [Value(out, in_perm, 0)]


@_handles("MaxPool", "AvgPool")
def _pool(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    if x.rank != 4 or x.batch != 0:
        raise ConversionError("the input is not a 4-D image batch")
    layout = node.attr("data_format", "NHWC")
    in_perm = NHWC_AS_NCHW if layout == "NHWC" else (0, 1, 2, 3)
    kernel = _spatial(node, "ksize", layout, 1)
    stride = _spatial(node, "strides", layout, 1)
    logical = t.shape(x)
    size = (logical[1], logical[2]) if layout == "NHWC" else (logical[2], logical[3])
    (top, bottom), (left, right) = _padding(node, layout, size, kernel, stride, (1, 1))
    data = t.materialize(x, in_perm)
    pool_type = "max" if node.op == "MaxPool" else "avg"
    if (top, left) != (bottom, right):
        if pool_type == "avg":
            raise ConversionError("average pooling with asymmetric padding is not supported")
        # Padding that can never win a maximum.
        data = mx.sym.pad(
            data,
            mode="constant",
            pad_width=(0, 0, 0, 0, top, bottom, left, right),
            constant_value=-3.0e38,
        )
        pad = (0, 0)
    else:
        pad = (top, left)
    out = mx.sym.Pooling(
        data,
        kernel=kernel,
        stride=stride,
        pad=pad,
        pool_type=pool_type,
        pooling_convention="valid",
        # TF averages over the pixels inside the image only.
        count_include_pad=False,
        name=t.name(node.name),
    )
    return [Value(out, in_perm, 0)]


# --- resizing --------------------------------------------------------------------------------


def bilinear_matrix(
    in_size: int, out_size: int, align_corners: bool, half_pixel_centers: bool
) -> Array:
    """(out, in) matrix M with ``resized = M @ row`` as TF.js's ResizeBilinear samples."""
    corners = align_corners and out_size > 1
    ratio = (in_size - 1) / (out_size - 1) if corners else in_size / out_size
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    for row in range(out_size):
        source = ratio * (row + 0.5) - 0.5 if half_pixel_centers else ratio * row
        floor = math.floor(source)
        low = min(max(floor, 0), in_size - 1)
        high = min(max(math.ceil(source), 0), in_size - 1)
        fraction = source - floor
        matrix[row, low] += 1.0 - fraction
        matrix[row, high] += fraction
    return matrix


@_handles("ResizeBilinear")
def _resize_bilinear(t: Translator, node: Node, inputs: list[Operand]) -> list[Operand]:
    x = _tensor(node, inputs[0])
    if x.rank != 4 or x.batch != 0:
        raise ConversionError("the input is not a 4-D NHWC image batch")
    height, width = (int(v) for v in _array(node, inputs[1], "size").reshape(-1))
    align = bool(node.attr("align_corners", False))
    half = bool(node.attr("half_pixel_centers", False))
    _, in_h, in_w, _ = t.shape(x)
    name = t.name(node.name)
    rows = t.constant(bilinear_matrix(in_h, height, align, half), f"{name}_rows")
    cols = t.constant(bilinear_matrix(in_w, width, align, half), f"{name}_cols")
    data = t.materialize(x, NHWC_AS_NCHW)  # (B, C, H, W)
    # A fully connected layer over the last axis is a product with the matrix's transpose.
    wide = mx.sym.FullyConnected(data, weight=cols, num_hidden=width, no_bias=True, flatten=False)
    tall = mx.sym.FullyConnected(
        mx.sym.swapaxes(wide, dim1=2, dim2=3),
        weight=rows,
        num_hidden=height,
        no_bias=True,
        flatten=False,
    )
    return [Value(mx.sym.swapaxes(tall, dim1=2, dim2=3), NHWC_AS_NCHW, 0)]
