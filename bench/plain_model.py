"""The checkpoint run as MXNet's documentation shows: the baselines of `make bench-compare`.

MXNet Model Server users and a hand-written server load an exported
checkpoint with ``SymbolBlock.imports`` and hybridize it; that is what the
MMS handler and the naive server run. We hybridize with static memory
(``static_alloc``/``static_shape``), which MXNet's performance guide
recommends, so the baselines are not handicapped by a setting.

What `predictor` does beyond that at load time (`predictor.runtime.graph`: oneDNN
fusion of convolution + batch norm + activation, and the SSD head's
candidates built with one concatenation instead of one per class) is part of
what the comparison measures. Decoding, preprocessing and the mapping to the
contract's detections are predictor's own in every contender.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import mxnet as mx
import numpy as np
import numpy.typing as npt

from predictor.checkpoint import Checkpoint, Preprocessing, read_class_names
from predictor.detections import RawDetections
from predictor.runtime.model import Detector, checkpoint_preprocessing

MODEL_CODES = ("plain", "predictor")


class PlainDetector:
    """``SymbolBlock.imports`` + ``hybridize``: one forward per call, CPU, float32."""

    def __init__(self, prefix: Path, edge: int, max_batch: int) -> None:
        checkpoint = Checkpoint.from_prefix(prefix)
        # The checkpoint's declared preprocessing, as predictor decodes for every contender.
        self.preprocessing = checkpoint_preprocessing(checkpoint, edge)
        self.edge = edge
        self.max_batch = max_batch
        self.classes = read_class_names(checkpoint.synset_path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._net = mx.gluon.SymbolBlock.imports(
                str(checkpoint.symbol_path), ["data"], str(checkpoint.params_path), ctx=mx.cpu()
            )
        self._net.hybridize(static_alloc=True, static_shape=True)

    def warm_up(self) -> None:
        """One forward per batch size, as a service would before taking traffic."""
        zeros = np.zeros(self.preprocessing.input_shape, dtype=np.float32)
        for size in range(1, self.max_batch + 1):
            self.forward([zeros] * size)

    def forward(self, tensors: Sequence[npt.NDArray[np.float32]]) -> list[RawDetections]:
        """Detections of each preprocessed image, batched into one forward pass."""
        ids, scores, boxes = (out.asnumpy() for out in self._net(mx.nd.array(np.stack(tensors))))
        return [RawDetections(ids[i, :, 0], scores[i, :, 0], boxes[i]) for i in range(len(tensors))]


class BaselineModel(Protocol):
    """What the baselines need of a model: `PlainDetector` and predictor's `Detector` both."""

    edge: int
    classes: list[str]
    preprocessing: Preprocessing

    def warm_up(self) -> None: ...

    def forward(self, tensors: Sequence[npt.NDArray[np.float32]]) -> list[RawDetections]: ...


def load_baseline_model(code: str, prefix: Path, edge: int, max_batch: int) -> BaselineModel:
    """The baselines' model, warmed: ``plain`` (MXNet's documented way) or ``predictor``'s own."""
    detector: BaselineModel
    if code == "plain":
        detector = PlainDetector(prefix, edge, max_batch)
    elif code == "predictor":
        detector = Detector(Checkpoint.from_prefix(prefix), mx.cpu(), edge, max_batch)
    else:
        raise ValueError(f"model code {code!r}: expected one of {MODEL_CODES}")
    detector.warm_up()
    return detector
