"""Model loading and inference: an exported MXNet SSD checkpoint on one device.

A checkpoint (`predictor.checkpoint`) is what `HybridBlock.export` writes,
class names and the preprocessing it declares. The network takes a batch of
preprocessed images in the declared layout (GluonCV's SSDs: normalised
``(batch, 3, height, width)``) and returns class ids, scores and corner boxes
in input pixels, already filtered by non-maximum suppression.

MXNet keeps NDArray memory in its own allocator, invisible to Python's memory
accounting, so this module never lets an NDArray outlive the call that made
it: inputs live in buffers allocated once per batch size, and outputs are
copied to numpy and dropped before `forward` returns.

Each batch size gets a graph of its own (``MODEL_GRAPH_PER_BATCH_SIZE``, on
by default): MXNet plans a hybridized graph for one input shape, and a call
with another shape re-plans it and rebuilds its oneDNN operators' state,
which for int8 includes re-quantizing the weights. A server's batch sizes
change from one forward pass to the next, so a single graph pays that on
most calls: on the int8 digits model, batch sizes 1-8 in random order cost
10-12 ms per image against 6.4 with a graph per size (float32: 16-18 against
13-16). The graphs share the weights; each keeps its own activation memory
(measured after warm-up: the digits SSD at batches up to 8, 412 -> 598 MiB;
the ResNet-50 SSD 512 at up to 4, 1.6 -> 2.2 GiB), which is the price.

Numeric types (``MODEL_DTYPE``): ``float32`` runs the checkpoint as exported;
``int8`` runs a checkpoint quantized by `predictor.runtime.quantize` (oneDNN kernels,
CPU only), found at the prefix itself or at ``PREFIX-int8`` beside it;
``float16`` converts the float32 network with MXNet's automatic mixed
precision on a GPU (inputs and outputs stay float32).

Engines (``MODEL_ENGINE``): ``mxnet`` runs the whole graph; ``openvino``
(float32, CPU) runs its convolutional trunk with OpenVINO and the rest with
MXNet (`predictor.runtime.openvino_trunk`). The trunk's outputs are copied
into the tail's input buffers, allocated once per batch size like the image's.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import mxnet as mx
import numpy as np

from predictor.checkpoint import (
    DEFAULT_EDGE,
    INT8_SUFFIX,
    Checkpoint,
    Preprocessing,
    read_class_names,
)
from predictor.config import OPENVINO_DTYPES, Device, DeviceSpec
from predictor.detections import FloatArray, RawDetections
from predictor.errors import CheckpointError, InferenceError
from predictor.runtime.graph import (
    fold_anchors,
    fold_into_convolutions,
    fuse_for_cpu,
    merge_detection_head,
    use_faster_operators,
)
from predictor.runtime.openvino_trunk import (
    DATA,
    OpenVinoTrunk,
    split_trunk,
    trunk_output_position,
)

log = logging.getLogger(__name__)


def checkpoint_dtype(symbol_path: Path) -> str:
    """``"int8"`` for a graph with quantized operators, else ``"float32"``."""
    try:
        graph = json.loads(symbol_path.read_text(encoding="utf-8"))
        ops = [str(node.get("op", "")) for node in graph["nodes"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{symbol_path} is not a valid MXNet symbol file: {exc}") from None
    quantized = any(op.startswith(("_contrib_quantize", "_contrib_quantized_")) for op in ops)
    return "int8" if quantized else "float32"


def resolve_checkpoint(prefix: Path | str, epoch: int, dtype: str | None) -> Checkpoint:
    """The checkpoint to load for ``dtype``; `CheckpointError` saying what to do if there is none.

    ``dtype=None`` takes the checkpoint at ``prefix`` as it is, int8 or float32
    (for tools such as ``predictor evaluate``).

    An int8 model is a separate checkpoint (calibration needs images of the
    training distribution, which a server does not have): ``prefix`` itself
    when it is quantized, otherwise ``PREFIX-int8`` as `predictor quantize`
    writes it by default. A float model may not be given an int8 checkpoint.
    """
    checkpoint = Checkpoint.from_prefix(prefix, epoch)
    found = checkpoint_dtype(checkpoint.symbol_path)
    if dtype is None:
        return checkpoint
    if dtype != "int8":
        if found == "int8":
            raise CheckpointError(
                f"{checkpoint.symbol_path} is an int8 (quantized) checkpoint: "
                "serve it with MODEL_DTYPE=int8"
            )
        return checkpoint
    if found == "int8":
        return checkpoint
    quantized_prefix = Path(f"{prefix}{INT8_SUFFIX}")
    quantized = Checkpoint(quantized_prefix, epoch, fallback_preprocess=checkpoint.preprocess_path)
    if not quantized.symbol_path.is_file():
        raise CheckpointError(
            f"MODEL_DTYPE=int8: {checkpoint.symbol_path} is a float32 checkpoint and "
            f"{quantized.symbol_path} does not exist; write it with "
            f"`predictor quantize --model {prefix} --calib DIR` "
            "(DIR: a few hundred images like the training images)"
        )
    quantized.require()
    if checkpoint_dtype(quantized.symbol_path) != "int8":
        raise CheckpointError(f"{quantized.symbol_path} is not a quantized checkpoint")
    return quantized


def contexts_for(devices: DeviceSpec) -> list[mx.Context]:
    """One MXNet context per model replica."""
    if devices.gpus:
        return [mx.gpu(index) for index in devices.gpus]
    return [mx.cpu(index) for index in range(devices.cpu_replicas)]


class Detector:
    """One replica of the network on one device, for batches up to ``max_batch``.

    Not thread-safe: call `forward` from one thread at a time (the batcher
    gives every replica its own thread).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        context: mx.Context,
        preprocessing: Preprocessing | int,
        max_batch: int,
        dtype: str = "float32",
        graph_per_batch_size: bool = True,
        *,
        engine: str = "mxnet",
        engine_threads: int | None = None,
    ) -> None:
        """Load ``checkpoint`` on ``context``.

        ``preprocessing`` is how its inputs are made; a bare edge means the
        checkpoint's own declaration (GluonCV's transform when it has none)
        at that square size. ``graph_per_batch_size`` false keeps one graph
        for every batch size (less memory, slower when sizes alternate).
        ``engine`` ``"openvino"`` (float32 or bfloat16 on the CPU) runs the
        graph's convolutional trunk with OpenVINO on ``engine_threads`` threads
        (None: every core) and the rest with MXNet in float32
        (`predictor.runtime.openvino_trunk`); ``dtype`` ``"bfloat16"`` needs it.
        """
        if isinstance(preprocessing, int):
            declared, _ = checkpoint.preprocessing(preprocessing)
            preprocessing = declared.with_edge(preprocessing)
        self.checkpoint = checkpoint
        self.context = context
        self.preprocessing = preprocessing
        self.input_shape = preprocessing.input_shape
        # The square input edge (the larger side of a rectangular input).
        self.edge = max(preprocessing.width, preprocessing.height)
        self.max_batch = max_batch
        self.dtype = dtype
        self.classes = read_class_names(checkpoint.synset_path)
        self._check_class_count()
        symbol, weights = _rewritten_graph(checkpoint, self.input_shape)
        self._trunk: OpenVinoTrunk | None = None
        self._inputs_of_graph = [DATA]
        if engine == "openvino":
            self._trunk, symbol = self._openvino_trunk(symbol, weights, engine_threads)
        elif dtype == "bfloat16":
            raise CheckpointError("MODEL_DTYPE=bfloat16 runs with MODEL_ENGINE=openvino only")
        self._net = _symbol_block(
            symbol,
            self._inputs_of_graph,
            weights,
            context,
            checkpoint,
            partial=self._trunk is not None,
        )
        self.engine = "openvino" if self._trunk is not None else "mxnet"
        if dtype == "float16":
            self._net = _mixed_precision(self._net, context)
        self.graph_per_batch_size = graph_per_batch_size
        self._graphs: dict[int, mx.gluon.HybridBlock] = {}
        self._staging = np.zeros((max_batch, *self.input_shape), dtype=np.float32)
        self._inputs: dict[tuple[str, int], mx.nd.NDArray] = {}
        self._lock = threading.Lock()
        self.batches_run = 0  # forward passes so far, warm-up included

    def _openvino_trunk(
        self, symbol: mx.sym.Symbol, weights: dict[str, mx.nd.NDArray], threads: int | None
    ) -> tuple[OpenVinoTrunk | None, mx.sym.Symbol]:
        """The trunk OpenVINO runs and the tail left to MXNet; (None, ``symbol``) if none."""
        if self.context.device_type != "cpu" or self.dtype not in OPENVINO_DTYPES:
            raise CheckpointError(
                "MODEL_ENGINE=openvino runs float32 or bfloat16 on the CPU, "
                f"not {self.dtype} on {self.context}"
            )
        split = split_trunk(symbol, weights)
        if split is None and self.dtype == "bfloat16":
            raise CheckpointError(
                f"MODEL_DTYPE=bfloat16: {self.checkpoint.symbol_path} has no convolutional "
                "trunk OpenVINO can run (see predictor/runtime/openvino_trunk.py)"
            )
        if split is None:
            log.warning(
                "MODEL_ENGINE=openvino: %s has no convolutional trunk OpenVINO can run; "
                "MXNet runs the whole graph",
                self.checkpoint.symbol_path,
            )
            return None, symbol
        self._inputs_of_graph = split.tail_inputs
        log.info(
            "model %s: OpenVINO runs the trunk (%d convolutions), MXNet the rest",
            self.checkpoint.symbol_path,
            split.convolutions,
        )
        try:
            trunk = OpenVinoTrunk(split, weights, self.input_shape, threads, self.dtype)
        except ValueError as exc:
            raise CheckpointError(f"MODEL_DTYPE={self.dtype}: {exc}") from None
        return trunk, split.tail

    def _check_class_count(self) -> None:
        expected = network_class_count(self.checkpoint.symbol_path, self.input_shape)
        if expected is not None and expected != len(self.classes):
            raise CheckpointError(
                f"{self.checkpoint.synset_path} lists {len(self.classes)} classes but "
                f"{self.checkpoint.symbol_path} predicts {expected}"
            )

    @property
    def device(self) -> Device:
        """The device the replica runs on (its MXNet context)."""
        return Device("gpu" if self.context.device_type == "gpu" else "cpu", self.context.device_id)

    def warm_up(self) -> None:
        """Run every batch size once so that no request pays for graph set-up."""
        zeros = np.zeros(self.input_shape, dtype=np.float32)
        for size in range(1, self.max_batch + 1):
            self.forward([zeros] * size)

    def forward(self, tensors: Sequence[FloatArray]) -> list[RawDetections]:
        """Detect objects in up to ``max_batch`` preprocessed images at once."""
        count = len(tensors)
        if not 1 <= count <= self.max_batch:
            raise ValueError(f"batch of {count} images; this detector takes 1..{self.max_batch}")
        with self._lock:
            staging = self._staging[:count]
            for slot, tensor in zip(staging, tensors, strict=True):
                np.copyto(slot, tensor)
            try:
                class_ids, scores, boxes = self._graph(count)(*self._graph_inputs(staging))
                # asnumpy() waits for the device; after it no NDArray of this call survives.
                # float32 whatever the network computed in (float16 outputs under AMP).
                ids_np = class_ids.asnumpy().astype(np.float32, copy=False)
                scores_np = scores.asnumpy().astype(np.float32, copy=False)
                boxes_np = boxes.asnumpy().astype(np.float32, copy=False)
                del class_ids, scores, boxes
                self.batches_run += 1
            except mx.base.MXNetError as exc:
                raise InferenceError(_first_line(str(exc))) from exc
            except RuntimeError as exc:  # OpenVINO's errors
                raise InferenceError(_first_line(str(exc))) from exc
        return [
            RawDetections(ids_np[i, :, 0], scores_np[i, :, 0], boxes_np[i]) for i in range(count)
        ]

    @property
    def graph_count(self) -> int:
        """Graphs planned so far: one per batch size run, or one in all."""
        return len(self._graphs)

    def _graph(self, count: int) -> mx.gluon.HybridBlock:
        """The hybridized graph that runs batches of ``count`` (see the module's docstring)."""
        key = count if self.graph_per_batch_size else 0
        graph = self._graphs.get(key)
        if graph is None:
            graph = _sharing_weights(self._net, self._inputs_of_graph)
            # static_alloc/static_shape: MXNet plans memory once for the input shape
            # and reuses it, instead of allocating on every call.
            graph.hybridize(static_alloc=True, static_shape=True)
            self._graphs[key] = graph
        return graph

    def _graph_inputs(self, staging: FloatArray) -> list[mx.nd.NDArray]:
        """The graph's inputs for the images in ``staging``: the batch itself, or what the
        OpenVINO trunk made of it (and the batch, where the tail reads it too)."""
        count = len(staging)
        trunk_outputs = self._trunk.run(staging) if self._trunk is not None else []
        inputs = []
        for name in self._inputs_of_graph:
            value = staging if name == DATA else trunk_outputs[trunk_output_position(name)]
            buffer = self._input_buffer(name, count, value.shape[1:])
            buffer[:] = value
            inputs.append(buffer)
        return inputs

    def _input_buffer(self, name: str, count: int, shape: tuple[int, ...]) -> mx.nd.NDArray:
        buffer = self._inputs.get((name, count))
        if buffer is None:
            buffer = mx.nd.zeros((count, *shape), ctx=self.context)
            self._inputs[(name, count)] = buffer
        return buffer

    def close(self) -> None:
        """Release the network and its buffers now rather than at garbage collection."""
        with self._lock:
            self._inputs.clear()
            self._graphs.clear()
            if self._trunk is not None:
                self._trunk.close()
            del self._net
            mx.nd.waitall()


def load_detectors(
    prefix: Path,
    epoch: int,
    edge: int | None,
    devices: DeviceSpec,
    max_batch: int,
    dtype: str | None = None,
    *,
    graph_per_batch_size: bool = True,
    engine: str = "mxnet",
    engine_threads: int | None = None,
) -> list[Detector]:
    """Load and warm one replica per device; raise `CheckpointError` naming a bad file.

    The preprocessing is what the checkpoint declares (GluonCV's transform
    when it declares none); ``edge``, when given, overrides its input size
    with that square. ``dtype`` is ``MODEL_DTYPE`` (see `resolve_checkpoint`);
    None runs the checkpoint at ``prefix`` in the type it was written in.
    ``graph_per_batch_size`` is ``MODEL_GRAPH_PER_BATCH_SIZE``, ``engine``
    ``MODEL_ENGINE`` and ``engine_threads`` ``MODEL_CPU_THREADS`` (see `Detector`).
    """
    checkpoint = resolve_checkpoint(prefix, epoch, dtype)
    dtype = dtype or checkpoint_dtype(checkpoint.symbol_path)
    preprocessing = checkpoint_preprocessing(checkpoint, edge)
    detectors = []
    for context in contexts_for(devices):
        detector = Detector(
            checkpoint,
            context,
            preprocessing,
            max_batch,
            dtype,
            graph_per_batch_size,
            engine=engine,
            engine_threads=engine_threads,
        )
        try:
            detector.warm_up()
        except InferenceError as exc:
            size = f"{preprocessing.width}x{preprocessing.height}"
            raise CheckpointError(
                f"{checkpoint.symbol_path} does not run on {size} inputs on {context}: {exc}"
            ) from None
        detectors.append(detector)
        log.info(
            "model %s (%s, %s) warmed up on %s (batches 1..%d)",
            checkpoint.symbol_path,
            dtype,
            detector.engine,
            context,
            max_batch,
        )
    return detectors


def checkpoint_preprocessing(checkpoint: Checkpoint, edge: int | None) -> Preprocessing:
    """The checkpoint's declared preprocessing (GluonCV's if none), at ``edge`` when given."""
    default_edge = edge if edge is not None else DEFAULT_EDGE
    preprocessing, declared = checkpoint.preprocessing(default_edge)
    if edge is not None and (preprocessing.width, preprocessing.height) != (edge, edge):
        preprocessing = preprocessing.with_edge(edge)
    log.info(
        "model %s preprocessing (%s): %s",
        checkpoint.prefix,
        f"declared in {checkpoint.preprocess_path.name}"
        if declared
        else "none declared: GluonCV's SSD transform",
        preprocessing.describe(),
    )
    return preprocessing


def network_class_count(symbol_path: Path, input_shape: tuple[int, ...]) -> int | None:
    """Number of object classes the network predicts, or None if it cannot be told.

    GluonCV SSDs end in a softmax over ``classes + 1`` (background first);
    its output shape, inferred from the symbol alone, gives the count.
    """
    try:
        graph = json.loads(symbol_path.read_text(encoding="utf-8"))
        softmax_names = [
            node["name"]
            for node in graph["nodes"]
            if node.get("op") in ("softmax", "SoftmaxActivation")
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{symbol_path} is not a valid MXNet symbol file: {exc}") from None
    if not softmax_names:
        return None
    try:
        symbol = mx.sym.load(str(symbol_path))
        internal = symbol.get_internals()[softmax_names[-1] + "_output"]
        _, out_shapes, _ = internal.infer_shape(data=(1, *input_shape))
    except (mx.base.MXNetError, ValueError, KeyError):
        return None
    if not out_shapes or not out_shapes[0]:
        return None
    return int(out_shapes[0][-1]) - 1


def _rewritten_graph(
    checkpoint: Checkpoint, input_shape: tuple[int, ...]
) -> tuple[mx.sym.Symbol, dict[str, mx.nd.NDArray]]:
    """The checkpoint's graph and weights, with `predictor.runtime.graph`'s rewrites but the
    CPU fusion (which comes after any split: `_symbol_block`)."""
    try:
        with warnings.catch_warnings():
            # Gluon warns that the "data" input has no type annotation; it is float32.
            warnings.simplefilter("ignore")
            symbol = mx.sym.load(str(checkpoint.symbol_path))
    except mx.base.MXNetError as exc:
        raise CheckpointError(
            f"{checkpoint.symbol_path} is not a valid MXNet symbol file: {_first_line(str(exc))}"
        ) from None
    try:
        loaded = mx.nd.load(str(checkpoint.params_path))
    except mx.base.MXNetError as exc:
        raise CheckpointError(
            f"{checkpoint.params_path} is not a readable MXNet params file: {_first_line(str(exc))}"
        ) from None
    if not isinstance(loaded, dict):
        raise CheckpointError(f"{checkpoint.params_path} holds no named parameters")
    # Files written by `export` prefix names with "arg:" / "aux:"; Gluon's do not.
    weights = {name.split(":", 1)[-1]: value for name, value in loaded.items()}
    _check_parameter_shapes(symbol, weights, checkpoint, input_shape)
    symbol, weights = fold_into_convolutions(symbol, weights)
    symbol = use_faster_operators(symbol, input_shape)
    symbol, weights = fold_anchors(symbol, weights, input_shape)
    return merge_detection_head(symbol, input_shape), weights


def _symbol_block(
    symbol: mx.sym.Symbol,
    inputs: Sequence[str],
    weights: dict[str, mx.nd.NDArray],
    context: mx.Context,
    checkpoint: Checkpoint,
    *,
    partial: bool = False,
) -> mx.gluon.SymbolBlock:
    """``symbol`` (fused for the CPU where it runs there) as a block on ``context``.

    ``partial``: the graph is part of the checkpoint's (a tail after
    `split_trunk`), so weights it does not read are expected.
    """
    symbol = fuse_for_cpu(symbol, context)
    try:
        with warnings.catch_warnings():
            # Gluon warns that the inputs have no type annotation; they are float32.
            warnings.simplefilter("ignore")
            net = mx.gluon.SymbolBlock(symbol, [mx.sym.var(name) for name in inputs])
            net.collect_params().load_dict(
                weights,
                ctx=context,
                allow_missing=False,
                ignore_extra=partial,
                # A quantized checkpoint stores int8 weights: keep the file's types.
                cast_dtype=True,
                dtype_source="saved",
            )
    except (mx.base.MXNetError, AssertionError, ValueError) as exc:
        raise CheckpointError(
            f"{checkpoint.params_path} does not match {checkpoint.symbol_path}: "
            f"{_first_line(str(exc))}"
        ) from None
    return net


def _sharing_weights(net: mx.gluon.SymbolBlock, inputs: Sequence[str]) -> mx.gluon.SymbolBlock:
    """Another block computing ``net``'s graph on the very same parameters.

    Hybridized, it is a graph of its own (MXNet's CachedOp) with its own
    plan and operator state, but no copy of the weights.
    """
    with warnings.catch_warnings():
        # Gluon warns that the inputs have no type annotation; they are float32.
        warnings.simplefilter("ignore")
        variables = [mx.sym.var(name) for name in inputs]
        return mx.gluon.SymbolBlock(net(*variables), variables, params=net.collect_params())


def _mixed_precision(net: mx.gluon.SymbolBlock, context: mx.Context) -> mx.gluon.SymbolBlock:
    """The network converted by MXNet's AMP: float16 where it is safe, float32 elsewhere."""
    from mxnet.contrib import amp

    try:
        converted = amp.convert_hybrid_block(net, target_dtype="float16", ctx=context)
    except (mx.base.MXNetError, ValueError, TypeError) as exc:
        raise CheckpointError(f"cannot convert the network to float16: {exc}") from None
    return converted


def _check_parameter_shapes(
    symbol: mx.sym.Symbol,
    weights: dict[str, mx.nd.NDArray],
    checkpoint: Checkpoint,
    input_shape: tuple[int, ...],
) -> None:
    """Compare the weights with the shapes the symbol needs for this input size."""
    try:
        arg_shapes, _, aux_shapes = symbol.infer_shape_partial(data=(1, *input_shape))
    except mx.base.MXNetError:
        return  # the warm-up forward reports what is wrong
    expected = dict(zip(symbol.list_arguments(), arg_shapes or [], strict=False))
    expected.update(zip(symbol.list_auxiliary_states(), aux_shapes or [], strict=False))
    for name, value in weights.items():
        needed = expected.get(name)
        if not needed or 0 in needed:
            continue
        if tuple(value.shape) != tuple(needed):
            raise CheckpointError(
                f"{checkpoint.params_path} does not match {checkpoint.symbol_path}: "
                f"parameter {name} has shape {tuple(value.shape)}, "
                f"the network needs {tuple(needed)}"
            )


def _first_line(message: str) -> str:
    """The line of an MXNet error message that says what went wrong.

    MXNet's messages start with a C++ traceback ("Traceback (most recent call
    last):", file names); the reason is on the line that starts "MXNetError:".
    """
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown MXNet error"
    for line in lines:
        if line.startswith("MXNetError:"):
            return line.removeprefix("MXNetError:").strip()
    return lines[0]


__all__ = [
    "Detector",
    "checkpoint_dtype",
    "checkpoint_preprocessing",
    "contexts_for",
    "load_detectors",
    "network_class_count",
    "resolve_checkpoint",
]
