"""Model loading and inference: an exported MXNet SSD checkpoint on one device.

A checkpoint is what `HybridBlock.export` writes: ``PREFIX-symbol.json``,
``PREFIX-EPOCH.params`` (four-digit epoch) and, beside them, ``synset.txt``
with one class name per line. GluonCV SSD networks take a normalised
``(batch, 3, edge, edge)`` tensor and return class ids, scores and corner
boxes in input pixels, already filtered by non-maximum suppression.

MXNet keeps NDArray memory in its own allocator, invisible to Python's memory
accounting, so this module never lets an NDArray outlive the call that made
it: inputs live in buffers allocated once per batch size, and outputs are
copied to numpy and dropped before `forward` returns.

Numeric types (``MODEL_DTYPE``): ``float32`` runs the checkpoint as exported;
``int8`` runs a checkpoint quantized by `predictor.quantize` (oneDNN kernels,
CPU only), found at the prefix itself or at ``PREFIX-int8`` beside it;
``float16`` converts the float32 network with MXNet's automatic mixed
precision on a GPU (inputs and outputs stay float32).
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
import numpy.typing as npt

from predictor.config import DeviceSpec
from predictor.graph import fuse_for_cpu, merge_detection_head

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]

# Where `predictor quantize` writes the int8 version of PREFIX by default.
INT8_SUFFIX = "-int8"


class CheckpointError(RuntimeError):
    """The checkpoint is missing, unreadable or inconsistent; the message names the file."""


class InferenceError(RuntimeError):
    """A forward pass failed on the device (e.g. out of memory)."""


@dataclass(frozen=True)
class Checkpoint:
    """The three files of an exported model."""

    symbol_path: Path
    params_path: Path
    synset_path: Path

    @classmethod
    def from_prefix(cls, prefix: Path | str, epoch: int = 0) -> Checkpoint:
        """The checkpoint at ``prefix`` for ``epoch``; raises if a file is missing."""
        prefix = Path(prefix)
        checkpoint = cls(
            symbol_path=Path(f"{prefix}-symbol.json"),
            params_path=Path(f"{prefix}-{epoch:04d}.params"),
            synset_path=prefix.parent / "synset.txt",
        )
        for path in (checkpoint.symbol_path, checkpoint.params_path, checkpoint.synset_path):
            if not path.is_file():
                raise CheckpointError(f"model file not found: {path}")
        return checkpoint


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
    if not Path(f"{quantized_prefix}-symbol.json").is_file():
        raise CheckpointError(
            f"MODEL_DTYPE=int8: {checkpoint.symbol_path} is a float32 checkpoint and "
            f"{quantized_prefix}-symbol.json does not exist; write it with "
            f"`predictor quantize --model {prefix} --calib DIR` "
            "(DIR: a few hundred images like the training images)"
        )
    quantized = Checkpoint.from_prefix(quantized_prefix, epoch)
    if checkpoint_dtype(quantized.symbol_path) != "int8":
        raise CheckpointError(f"{quantized.symbol_path} is not a quantized checkpoint")
    return quantized


def read_class_names(path: Path) -> list[str]:
    """Class names from ``synset.txt``: one per line, blank lines ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read class names from {path}: {exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise CheckpointError(f"{path} lists no class names")
    if len(set(names)) != len(names):
        raise CheckpointError(f"{path} lists a class name twice")
    return names


def contexts_for(devices: DeviceSpec) -> list[mx.Context]:
    """One MXNet context per model replica."""
    if devices.gpus:
        return [mx.gpu(index) for index in devices.gpus]
    return [mx.cpu(index) for index in range(devices.cpu_replicas)]


@dataclass(frozen=True)
class RawDetections:
    """One image's network output, in network-input pixels, unfiltered."""

    class_ids: FloatArray  # (N,)
    scores: FloatArray  # (N,)
    boxes: FloatArray  # (N, 4) xmin, ymin, xmax, ymax


@dataclass(frozen=True)
class Detection:
    """One object found in an image, in pixels of the original image."""

    object_class: str
    probability: float
    x: int
    y: int
    width: int
    height: int

    def to_json(self) -> dict[str, Any]:
        """The contract's field names."""
        return {
            "objectClass": self.object_class,
            "probability": self.probability,
            "x": self.x,
            "y": self.y,
            "width": self.width,
            "height": self.height,
        }


class Detector:
    """One replica of the network on one device, for batches up to ``max_batch``.

    Not thread-safe: call `forward` from one thread at a time (the batcher
    gives every replica its own thread).
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        context: mx.Context,
        edge: int,
        max_batch: int,
        dtype: str = "float32",
    ) -> None:
        self.checkpoint = checkpoint
        self.context = context
        self.edge = edge
        self.max_batch = max_batch
        self.dtype = dtype
        self.classes = read_class_names(checkpoint.synset_path)
        self._check_class_count()
        self._net = _load_symbol_block(checkpoint, context, edge)
        if dtype == "float16":
            self._net = _mixed_precision(self._net, context)
        # static_alloc/static_shape: MXNet plans memory once per input shape and
        # reuses it, instead of allocating on every call.
        self._net.hybridize(static_alloc=True, static_shape=True)
        self._staging = np.zeros((max_batch, 3, edge, edge), dtype=np.float32)
        self._inputs: dict[int, mx.nd.NDArray] = {}
        self._lock = threading.Lock()
        self.batches_run = 0  # forward passes so far, warm-up included

    def _check_class_count(self) -> None:
        expected = network_class_count(self.checkpoint.symbol_path, self.edge)
        if expected is not None and expected != len(self.classes):
            raise CheckpointError(
                f"{self.checkpoint.synset_path} lists {len(self.classes)} classes but "
                f"{self.checkpoint.symbol_path} predicts {expected}"
            )

    def warm_up(self) -> None:
        """Run every batch size once so that no request pays for graph set-up."""
        zeros = np.zeros((3, self.edge, self.edge), dtype=np.float32)
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
                batch = self._input_buffer(count)
                batch[:] = staging
                class_ids, scores, boxes = self._net(batch)
                # asnumpy() waits for the device; after it no NDArray of this call survives.
                # float32 whatever the network computed in (float16 outputs under AMP).
                ids_np = class_ids.asnumpy().astype(np.float32, copy=False)
                scores_np = scores.asnumpy().astype(np.float32, copy=False)
                boxes_np = boxes.asnumpy().astype(np.float32, copy=False)
                del class_ids, scores, boxes
                self.batches_run += 1
            except mx.base.MXNetError as exc:
                raise InferenceError(_first_line(str(exc))) from exc
        return [
            RawDetections(ids_np[i, :, 0], scores_np[i, :, 0], boxes_np[i]) for i in range(count)
        ]

    def _input_buffer(self, count: int) -> mx.nd.NDArray:
        buffer = self._inputs.get(count)
        if buffer is None:
            buffer = mx.nd.zeros((count, 3, self.edge, self.edge), ctx=self.context)
            self._inputs[count] = buffer
        return buffer

    def close(self) -> None:
        """Release the network and its buffers now rather than at garbage collection."""
        with self._lock:
            self._inputs.clear()
            del self._net
            mx.nd.waitall()


def load_detectors(
    prefix: Path,
    epoch: int,
    edge: int,
    devices: DeviceSpec,
    max_batch: int,
    dtype: str | None = None,
) -> list[Detector]:
    """Load and warm one replica per device; raise `CheckpointError` naming a bad file.

    ``dtype`` is ``MODEL_DTYPE`` (see `resolve_checkpoint`); None runs the
    checkpoint at ``prefix`` in the type it was written in.
    """
    checkpoint = resolve_checkpoint(prefix, epoch, dtype)
    dtype = dtype or checkpoint_dtype(checkpoint.symbol_path)
    detectors = []
    for context in contexts_for(devices):
        detector = Detector(checkpoint, context, edge, max_batch, dtype)
        try:
            detector.warm_up()
        except InferenceError as exc:
            raise CheckpointError(
                f"{checkpoint.symbol_path} does not run on {edge}x{edge} inputs on {context}: {exc}"
            ) from None
        detectors.append(detector)
        log.info(
            "model %s (%s) warmed up on %s (batches 1..%d)",
            checkpoint.symbol_path,
            dtype,
            context,
            max_batch,
        )
    return detectors


def to_detections(
    raw: RawDetections,
    width: int,
    height: int,
    edge: int,
    classes: Sequence[str],
    threshold: float,
) -> list[Detection]:
    """Keep confident, finite detections and map them to the original image's pixels.

    Boxes are clipped to the image; ``x``, ``y`` is the top-left corner. An
    untrained or broken network emits NaN or infinite values: those rows are
    dropped here so that they never reach a client.
    """
    ids, scores, boxes = raw.class_ids, raw.scores, raw.boxes
    with np.errstate(invalid="ignore"):
        keep = (
            np.isfinite(scores)
            & (scores > threshold)
            & np.isfinite(ids)
            & (ids >= 0)
            & (ids < len(classes))
            & np.isfinite(boxes).all(axis=1)
        )
    order = [int(i) for i in np.flatnonzero(keep)]
    order.sort(key=lambda i: -float(scores[i]))
    scale_x = width / edge
    scale_y = height / edge
    detections = []
    for i in order:
        xmin, ymin, xmax, ymax = (float(v) for v in boxes[i])
        left = _clip(round(xmin * scale_x), width)
        top = _clip(round(ymin * scale_y), height)
        right = _clip(round(xmax * scale_x), width)
        bottom = _clip(round(ymax * scale_y), height)
        if right <= left or bottom <= top:
            continue
        detections.append(
            Detection(
                object_class=classes[int(ids[i])],
                # float32's shortest repr, e.g. 0.9959417 rather than 0.995941698551178.
                probability=float(str(scores[i])),
                x=left,
                y=top,
                width=right - left,
                height=bottom - top,
            )
        )
    return detections


def network_class_count(symbol_path: Path, edge: int) -> int | None:
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
        _, out_shapes, _ = internal.infer_shape(data=(1, 3, edge, edge))
    except (mx.base.MXNetError, ValueError, KeyError):
        return None
    if not out_shapes or not out_shapes[0]:
        return None
    return int(out_shapes[0][-1]) - 1


def _load_symbol_block(
    checkpoint: Checkpoint, context: mx.Context, edge: int
) -> mx.gluon.SymbolBlock:
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
    _check_parameter_shapes(symbol, weights, checkpoint, edge)
    symbol = fuse_for_cpu(merge_detection_head(symbol), context)
    try:
        with warnings.catch_warnings():
            # Gluon warns that the "data" input has no type annotation; it is float32.
            warnings.simplefilter("ignore")
            net = mx.gluon.SymbolBlock(symbol, mx.sym.var("data"))
            net.collect_params().load_dict(
                weights,
                ctx=context,
                allow_missing=False,
                ignore_extra=False,
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
    edge: int,
) -> None:
    """Compare the weights with the shapes the symbol needs for this input edge."""
    try:
        arg_shapes, _, aux_shapes = symbol.infer_shape_partial(data=(1, 3, edge, edge))
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


def _clip(value: int, limit: int) -> int:
    return max(0, min(limit, value))


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
    "Checkpoint",
    "CheckpointError",
    "Detection",
    "Detector",
    "InferenceError",
    "RawDetections",
    "checkpoint_dtype",
    "contexts_for",
    "load_detectors",
    "network_class_count",
    "read_class_names",
    "resolve_checkpoint",
    "to_detections",
]
