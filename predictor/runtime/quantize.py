"""int8 quantization of a checkpoint for the CPU (`predictor quantize`).

MXNet's oneDNN backend runs convolutions, pooling and concatenations on
8-bit integers. Turning a float32 checkpoint into one that does needs each
quantized layer's output range, measured on images like those the model
will see: calibration. That is done once, here, and written as a checkpoint
of its own (``PREFIX-int8`` by default) which the server loads with
``MODEL_DTYPE=int8``; a server has no calibration images, and calibrating at
start-up would delay readiness by seconds to minutes.

What stays float32: the SSD head's reshaping (``Flatten``, ``Concat``), the
softmax, box decoding and NMS. Quantized flatten/concat of the class and
box predictions turn every detection into padding on our networks, and they
cost almost nothing in float32. So does everything computed from the
suppression's output, a crop verifier included
(`predictor.runtime.graph.after_suppression`): MXNet would quantize its
re-scoring arithmetic too, and its quantized last layer keeps int8 weights
that Gluon then cannot load.

Calibration is "naive" by default (min/max of each layer's output over the
calibration images); "entropy" (KL-optimal thresholds) is available.
"""

from __future__ import annotations

import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization

from predictor.checkpoint import INT8_SUFFIX, Checkpoint, Preprocessing
from predictor.errors import CheckpointError, ImageError, PredictorError
from predictor.runtime.graph import after_suppression
from predictor.runtime.imaging import find_images, prepare
from predictor.runtime.model import checkpoint_dtype, checkpoint_preprocessing

log = logging.getLogger(__name__)

CALIBRATION_MODES = ("naive", "entropy")
# Operators left in float32: the detection head's reshaping (see the module docstring).
FLOAT_OPERATORS = ("Flatten", "Concat")
CALIBRATION_BATCH = 8


class QuantizeError(PredictorError):
    """The checkpoint cannot be quantized as asked; the message says why."""


@dataclass(frozen=True)
class QuantizeResult:
    """What was written, and from how much data."""

    prefix: Path
    symbol_path: Path
    params_path: Path
    calibration_images: int
    seconds: float


def default_output(prefix: Path) -> Path:
    """``PREFIX-int8``: where the server looks when ``MODEL_DTYPE=int8``."""
    return Path(f"{prefix}{INT8_SUFFIX}")


class _CalibrationImages(mx.io.DataIter):  # type: ignore[misc]
    """Decodes calibration files batch by batch, as the server would, to bound memory."""

    def __init__(
        self, files: Sequence[Path], preprocessing: Preprocessing, batch_size: int
    ) -> None:
        super().__init__(batch_size)
        self._files = list(files)
        self._preprocessing = preprocessing
        self._next = 0
        self.provide_data = [mx.io.DataDesc("data", (batch_size, *preprocessing.input_shape))]
        self.provide_label: list[mx.io.DataDesc] = []

    def reset(self) -> None:
        self._next = 0

    def next(self) -> mx.io.DataBatch:
        if self._next >= len(self._files):
            raise StopIteration
        chunk = self._files[self._next : self._next + self.batch_size]
        self._next += self.batch_size
        batch = np.stack(
            [
                prepare(p.read_bytes(), self._preprocessing, 2**31 - 1, require_jpeg=False).tensor
                for p in chunk
            ]
        )
        return mx.io.DataBatch(data=[mx.nd.array(batch)])


def calibration_files(folder: Path, count: int) -> list[Path]:
    """Up to ``count`` readable images found under ``folder``, spread over its sorted list."""
    files = [path for path in find_images([folder]) if path.is_file()]
    if not files:
        raise QuantizeError(f"no image files found under {folder}")
    if len(files) > count:
        picks = np.linspace(0, len(files) - 1, count).round().astype(int)
        files = [files[int(i)] for i in picks]
    for path in files:
        try:
            prepare(path.read_bytes(), 32, 2**31 - 1, require_jpeg=False)
        except (OSError, ImageError) as exc:
            raise QuantizeError(f"{path}: cannot be used for calibration: {exc}") from None
    return files


def quantize_checkpoint(
    prefix: Path,
    calib_dir: Path,
    out_prefix: Path | None = None,
    *,
    edge: int | None = None,
    epoch: int = 0,
    images: int = 300,
    mode: str = "naive",
) -> QuantizeResult:
    """Write an int8 version of the checkpoint at ``prefix``, calibrated on ``calib_dir``.

    Calibration images are preprocessed as the checkpoint declares (at
    ``edge`` when given). The output has the same epoch, class names and
    preprocessing declaration; ``synset.txt`` is copied beside it when it goes
    to another folder.
    """
    if mode not in CALIBRATION_MODES:
        raise QuantizeError(f"calibration mode {mode!r}: expected one of {CALIBRATION_MODES}")
    if images < 1:
        raise QuantizeError("at least one calibration image is needed")
    checkpoint = Checkpoint.from_prefix(prefix, epoch)
    preprocessing = checkpoint_preprocessing(checkpoint, edge)
    if checkpoint_dtype(checkpoint.symbol_path) == "int8":
        raise QuantizeError(f"{checkpoint.symbol_path} is already quantized")
    out_prefix = out_prefix or default_output(prefix)
    # Refuse a clashing synset.txt before minutes of calibration, not after.
    _copy_synset(checkpoint.synset_path, Checkpoint(out_prefix).synset_path, dry_run=True)
    files = calibration_files(calib_dir, images)
    # Whole batches only: a padded batch would add made-up activations to the ranges.
    batch_size = min(CALIBRATION_BATCH, len(files))
    files = files[: len(files) - len(files) % batch_size]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        symbol, args, auxs = mx.model.load_checkpoint(str(prefix), epoch)
        # Fuse convolution + batch norm + activation first, so that each fused
        # block is quantized as one (oneDNN's recipe).
        fused = symbol.get_backend_symbol("MKLDNN_QUANTIZE")
        float_layers = [
            node.name for node in fused.get_internals() if node.attr("op_name") in FLOAT_OPERATORS
        ] + after_suppression(fused)
        qsym, qargs, qauxs, collector = quantization.quantize_graph(
            sym=fused,
            arg_params=args,
            aux_params=auxs,
            ctx=mx.cpu(),
            excluded_sym_names=float_layers,
            excluded_op_names=list(FLOAT_OPERATORS),
            calib_mode=mode,
            quantized_dtype="auto",
            quantize_mode="full",
            quantize_granularity="tensor-wise",
            logger=None,
        )
        data = _CalibrationImages(files, preprocessing, batch_size)
        module = mx.mod.Module(
            symbol=fused, context=mx.cpu(), data_names=["data"], label_names=None
        )
        module.bind(for_training=False, data_shapes=data.provide_data)
        module.set_params(args, auxs, allow_missing=False, force_init=True)
        quantization._collect_layer_statistics(module, data, collector, len(files), None)
        qsym, qargs, qauxs = quantization.calib_graph(
            qsym=qsym,
            arg_params=args,
            aux_params=auxs,
            collector=collector,
            calib_mode=mode,
            quantized_dtype="auto",
            logger=None,
        )
        qsym = qsym.get_backend_symbol("MKLDNN_QUANTIZE")
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        mx.model.save_checkpoint(str(out_prefix), epoch, qsym, qargs, qauxs)
    _copy_synset(checkpoint.synset_path, Checkpoint(out_prefix).synset_path)
    written = Checkpoint.from_prefix(out_prefix, epoch)
    if checkpoint.preprocess_path.is_file() or edge is not None:
        written.write_preprocessing(preprocessing)
    seconds = time.perf_counter() - started
    log.info("quantized %s on %d images in %.1f s -> %s", prefix, len(files), seconds, out_prefix)
    return QuantizeResult(out_prefix, written.symbol_path, written.params_path, len(files), seconds)


def _copy_synset(source: Path, target: Path, *, dry_run: bool = False) -> None:
    """Class names beside the output; refuse to overwrite different ones."""
    if target.resolve() == source.resolve():
        return
    if target.exists():
        if target.read_bytes() != source.read_bytes():
            raise CheckpointError(f"{target} exists with other class names than {source}")
        return
    if not dry_run:
        shutil.copyfile(source, target)
