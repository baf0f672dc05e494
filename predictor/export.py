"""Export GluonCV model-zoo detectors to the checkpoint format the server loads.

This is the only serving-side module that needs GluonCV, and it imports it
lazily: the runtime image does not install it.

An untrained network straight from its initialiser is useless even for
tests: activations vanish or explode through dozens of layers, so every image
gets the same saturated scores and NaN or infinite boxes. `--random-init`
therefore sets each batch-norm layer's moving statistics to those of its
actual input on drawn scenes, in graph order; the result behaves like
a network at the start of training, with finite outputs that depend on the
input, which is what batching and contract tests need.

Pretrained weights are never downloaded here (production and CI machines
have no internet). They are read from GluonCV's cache folder, and when the
file is absent the error says exactly which file to put where.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import cv2
import mxnet as mx
import numpy as np
import numpy.typing as npt

from predictor.checkpoint import Checkpoint, Preprocessing
from predictor.errors import PredictorError

DEFAULT_WEIGHTS_DIR = Path("~/.mxnet/models")

_UNTRAINED_BANNER = """\
******************************************************************************
* WARNING: {name} exported with RANDOM weights (--random-init).
* It has the right architecture and compute cost, but it detects nothing
* meaningful. Use it for tests and benchmarks only, never to answer users.
******************************************************************************
"""


class ExportError(PredictorError):
    """The network cannot be exported; the message says why and what to do."""


@dataclass(frozen=True)
class ExportResult:
    """What was written."""

    symbol_path: Path
    params_path: Path
    synset_path: Path
    classes: tuple[str, ...]
    edge: int
    random_init: bool


def zoo_input_edge(name: str) -> int | None:
    """Input edge encoded in a GluonCV SSD name, e.g. 512 for ``ssd_512_resnet50_v1_coco``."""
    match = re.match(r"ssd_(\d+)_", name)
    return int(match.group(1)) if match else None


def pretrained_weights_path(name: str, weights_dir: Path) -> Path:
    """Where GluonCV keeps the published weights of ``name`` (no download)."""
    from gluoncv.model_zoo import model_store

    try:
        file_stem = f"{name}-{model_store.short_hash(name)}"
    except ValueError:
        raise ExportError(
            f"GluonCV publishes no pretrained weights for {name!r}; "
            "use --random-init for an untrained network of that architecture"
        ) from None
    return weights_dir.expanduser() / f"{file_stem}.params"


def export_zoo(
    name: str,
    out_prefix: Path,
    *,
    random_init: bool = False,
    classes: Sequence[str] | None = None,
    edge: int | None = None,
    seed: int = 0,
    weights_dir: Path = DEFAULT_WEIGHTS_DIR,
    stream: TextIO = sys.stderr,
) -> ExportResult:
    """Write the checkpoint of a zoo network at ``out_prefix`` (`predictor.checkpoint`).

    Its preprocessing declaration is GluonCV's own evaluation transform
    (``SSDDefaultValTransform`` at the input edge), so that the server
    computes what GluonCV computes.
    """
    from gluoncv import model_zoo

    input_edge = edge or zoo_input_edge(name)
    if input_edge is None:
        raise ExportError(f"cannot tell the input size of {name!r}; pass --edge")
    if name not in model_zoo.get_model_list():
        raise ExportError(f"{name!r} is not a GluonCV model-zoo network")
    options: dict[str, object] = {"pretrained": False, "pretrained_base": False}
    if classes:
        if not name.endswith("_custom"):
            raise ExportError("--classes applies to '*_custom' networks only")
        options["classes"] = list(classes)
    elif name.endswith("_custom"):
        raise ExportError(f"{name} needs --classes")

    weights = None if random_init else pretrained_weights_path(name, weights_dir)
    if weights is not None and not weights.is_file():
        raise ExportError(
            f"pretrained weights for {name} are not on this machine: expected {weights}. "
            f"Copy {weights.name} from the GluonCV model zoo (a machine with internet gets "
            f"it with `gluoncv.model_zoo.get_model({name!r}, pretrained=True)`) into "
            f"{weights.parent}, or pass --weights-dir; or use --random-init for an "
            "untrained network"
        )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = model_zoo.get_model(name, **options)
        if weights is None:
            mx.random.seed(seed)
            np.random.seed(seed)
            net.initialize()
        else:
            try:
                net.load_parameters(str(weights))
            except (mx.base.MXNetError, AssertionError) as exc:
                raise ExportError(f"{weights} does not fit {name}: {exc}") from None
        net.hybridize()
        net(mx.nd.zeros((1, 3, input_edge, input_edge)))
        out_prefix.parent.mkdir(parents=True, exist_ok=True)
        net.export(str(out_prefix), epoch=0)

    if weights is None:
        calibrate_batch_norm(out_prefix, input_edge, np.random.default_rng(seed))
    class_names = tuple(str(c) for c in net.classes)
    checkpoint = Checkpoint(out_prefix, 0)
    checkpoint.write_class_names(class_names)
    checkpoint.write_preprocessing(Preprocessing.gluoncv(input_edge))
    if weights is None:
        stream.write(_UNTRAINED_BANNER.format(name=name))
    return ExportResult(
        symbol_path=checkpoint.symbol_path,
        params_path=checkpoint.params_path,
        synset_path=checkpoint.synset_path,
        classes=class_names,
        edge=input_edge,
        random_init=weights is None,
    )


def calibrate_batch_norm(
    prefix: Path, edge: int, rng: np.random.Generator, images: int = 8, logit_std: float = 1.5
) -> int:
    """Make an untrained checkpoint's activations well scaled, layer by layer.

    Every BatchNorm's moving mean/variance becomes its input's statistics on
    drawn scenes, in graph order; then the convolutions that feed the
    class softmax are scaled so that the logits have ``logit_std``, giving
    scores spread over (0, 1) instead of all 1.0. Works on the exported
    checkpoint at ``prefix`` (epoch 0) and rewrites its params file; returns
    the number of BatchNorm layers calibrated.
    """
    symbol, args, auxs = mx.model.load_checkpoint(str(prefix), 0)
    graph = _Graph(symbol, args, auxs, mx.nd.array(_calibration_images(rng, images, edge)))
    calibrated = 0
    for node in graph.nodes:
        if node["op"] != "BatchNorm":
            continue
        activations = graph.evaluate(node["inputs"][0])
        mean = activations.mean(axis=(0, 2, 3))
        variance = ((activations - mean.reshape((1, -1, 1, 1))) ** 2).mean(axis=(0, 2, 3))
        auxs[graph.nodes[node["inputs"][3][0]]["name"]] = mean
        auxs[graph.nodes[node["inputs"][4][0]]["name"]] = variance
        calibrated += 1
    for node in graph.nodes:
        if node["op"] in ("softmax", "SoftmaxActivation"):
            logits = graph.evaluate(node["inputs"][0])
            scale = logit_std / max(float(logits.asnumpy().std()), 1e-6)
            for conv in graph.convolutions_feeding(node["inputs"][0][0]):
                for input_ref in graph.nodes[conv]["inputs"][1:]:
                    name = graph.nodes[input_ref[0]]["name"]
                    args[name] = args[name] * scale
    mx.model.save_checkpoint(str(prefix), 0, symbol, args, auxs)
    return calibrated


class _Graph:
    """An exported symbol whose internal outputs can be evaluated on fixed data."""

    def __init__(
        self,
        symbol: mx.sym.Symbol,
        args: dict[str, mx.nd.NDArray],
        auxs: dict[str, mx.nd.NDArray],
        data: mx.nd.NDArray,
    ) -> None:
        self.nodes: list[dict[str, Any]] = json.loads(symbol.tojson())["nodes"]
        self._internals = symbol.get_internals()
        self._output_names: list[str] = self._internals.list_outputs()
        self._params = (args, auxs)
        self._data = data

    def evaluate(self, input_ref: list[int]) -> mx.nd.NDArray:
        """The value of one node output (``[node_index, output_index, ...]``)."""
        source = self.nodes[input_ref[0]]
        outputs = [n for n in self._output_names if n.startswith(source["name"] + "_output")]
        part = self._internals[outputs[input_ref[1]] if len(outputs) > 1 else outputs[0]]
        args, auxs = self._params
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            block = mx.gluon.SymbolBlock(part, mx.sym.var("data"))
            block.collect_params().load_dict(
                {**args, **auxs}, ctx=mx.cpu(), allow_missing=False, ignore_extra=True
            )
        return block(self._data)

    def convolutions_feeding(self, index: int) -> list[int]:
        """Convolution nodes reached walking back from ``index`` through non-convolutions."""
        found: list[int] = []
        stack, seen = [index], set()
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            node = self.nodes[current]
            if node["op"] == "Convolution":
                found.append(current)
            elif node["op"] != "null":
                stack.extend(ref[0] for ref in node["inputs"])
        return found


def _calibration_images(rng: np.random.Generator, count: int, edge: int) -> npt.NDArray[np.float32]:
    """Preprocessed photo-like scenes: gradients, noise and filled shapes."""
    from predictor.runtime.imaging import to_tensor

    tensors = []
    for _ in range(count):
        ys, xs = np.mgrid[0:edge, 0:edge].astype(np.float32)
        base, slope = rng.uniform(30, 220, 3), rng.uniform(-0.3, 0.3, (3, 2))
        planes = [base[c] + slope[c, 0] * xs + slope[c, 1] * ys for c in range(3)]
        image = np.clip(np.stack(planes, axis=-1) + rng.normal(0, 8, (edge, edge, 3)), 0, 255)
        image = image.astype(np.uint8)
        for _ in range(int(rng.integers(2, 7))):
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            centre = (int(rng.integers(0, edge)), int(rng.integers(0, edge)))
            size = int(rng.integers(edge // 16, edge // 3))
            if rng.random() < 0.5:
                cv2.circle(image, centre, size, colour, -1)
            else:
                corner = (centre[0] + size, centre[1] + size)
                cv2.rectangle(image, centre, corner, colour, -1)
        tensors.append(to_tensor(image, edge))
    return np.stack(tensors)
