"""Convert a TF.js graph-model detector into the checkpoint the server loads.

Writes ``PREFIX-symbol.json``, ``PREFIX-0000.params``, ``synset.txt`` beside
the prefix and ``PREFIX-preprocess.json``. The graph takes one float32
input ``data`` (NCHW, any batch size) and ends in class ids, scores and boxes
after NMS; with ``raw=True`` it ends in the source graph's own outputs
instead, which is what the equivalence tests compare with TF.js.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx

from predictor.checkpoint import Checkpoint, Preprocessing
from predictor.convert.errors import ConversionError
from predictor.convert.graphmodel import Array, GraphModel, load_graph_model
from predictor.convert.heads import HEADS, NmsSettings
from predictor.convert.spec import coco_classes, default_preprocess
from predictor.convert.tfjs import translate


@dataclass(frozen=True)
class ConversionResult:
    """What was written and how long it took."""

    symbol_path: Path
    params_path: Path
    synset_path: Path
    preprocess_path: Path
    outputs: tuple[str, ...]  # the source graph's outputs the graph starts from
    input_shape: tuple[int, ...]
    parameters: int  # float32 values in the params file
    seconds: float


def default_outputs(model: GraphModel, head: str | None) -> list[str]:
    """The source outputs a head decodes: NanoDet's six, CenterNet's heatmap and sizes."""
    signature = _signature_shapes(model)
    if not signature:
        raise ConversionError(f"{model.path} has no signature outputs; name them with --outputs")
    if head == "centernet":
        # The TF.js graph's own `detections` tail (TopKV2, gathers) is replaced by the head.
        four_d = [name for name, shape in signature.items() if len(shape) == 4]
        four_d.sort(key=lambda name: signature[name][-1] == 4)
        return four_d
    return sorted(signature)


def _signature_shapes(model: GraphModel) -> dict[str, tuple[int, ...]]:
    document = json.loads(model.path.read_text(encoding="utf-8"))
    outputs = (document.get("signature") or {}).get("outputs") or {}
    shapes = {}
    for key, spec in outputs.items():
        name = str(spec.get("name", key)).split(":")[0]
        dims = (spec.get("tensorShape") or {}).get("dim", [])
        shapes[name] = tuple(int(d.get("size", -1)) for d in dims)
    return shapes


def convert_tfjs(
    model_json: Path,
    out_prefix: Path,
    head: str | None,
    classes: Sequence[str] | None = None,
    preprocess: Preprocessing | None = None,
    outputs: Sequence[str] | None = None,
    nms: NmsSettings | None = None,
    input_layout: str = "auto",
    raw: bool = False,
) -> ConversionResult:
    """Convert ``model_json``; ``head`` is ``"nanodet"``, ``"centernet"`` or None with ``raw``."""
    started = time.perf_counter()
    if head is None and not raw:
        raise ConversionError("a detection head is needed unless the raw outputs are exported")
    if head is not None and head not in HEADS:
        raise ConversionError(f"unknown head {head!r}; known: {', '.join(sorted(HEADS))}")
    model = load_graph_model(model_json)
    names = list(classes) if classes is not None else coco_classes()
    refs = list(outputs) if outputs else default_outputs(model, head)
    # A fresh name manager: MXNet numbers unnamed operators per process, and the same
    # conversion must write the same symbol file whatever ran before it.
    with mx.name.NameManager():
        translation = translate(model, refs, input_layout)
        _, _, height, width = translation.input_shape
        params = dict(translation.params)
        if raw:
            symbols = translation.outputs
        else:
            assert head is not None
            decoded = HEADS[head](
                translation.outputs,
                translation.output_shapes,
                (height, width),
                len(names),
                nms or default_nms(head),
            )
            symbols = decoded.outputs
            params.update(decoded.params)
        symbol = mx.sym.Group(symbols)
    _check_batches(symbol, params, translation.input_shape)
    declared = preprocess or default_preprocess(head or "nanodet", width, height)
    if (declared.width, declared.height) != (width, height):
        raise ConversionError(
            f"preprocess declares {declared.width}x{declared.height} but the graph takes "
            f"{width}x{height}"
        )
    if declared.layout != translation.input_layout:
        raise ConversionError(
            f"preprocess declares layout {declared.layout}; the converted graph takes "
            f"{translation.input_layout}"
        )
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(out_prefix)
    checkpoint.write_class_names(names)
    symbol.save(str(checkpoint.symbol_path))
    mx.nd.save(
        str(checkpoint.params_path),
        {f"arg:{k}": mx.nd.array(v) for k, v in sorted(params.items())},
    )
    checkpoint.write_preprocessing(declared)
    return ConversionResult(
        symbol_path=checkpoint.symbol_path,
        params_path=checkpoint.params_path,
        synset_path=checkpoint.synset_path,
        preprocess_path=checkpoint.preprocess_path,
        outputs=tuple(refs),
        input_shape=translation.input_shape,
        parameters=int(sum(v.size for v in params.values())),
        seconds=time.perf_counter() - started,
    )


def default_nms(head: str) -> NmsSettings:
    """Upstream NanoDet's test settings; CenterNet keeps its 100 peaks, lightly suppressed."""
    if head == "centernet":
        return NmsSettings(score_threshold=0.05, iou_threshold=0.5, max_detections=100)
    return NmsSettings(score_threshold=0.05, iou_threshold=0.6, max_detections=100)


def _check_batches(
    symbol: mx.sym.Symbol, params: dict[str, Array], input_shape: tuple[int, ...]
) -> None:
    """Shape inference at batch 1 and 8: a batch-1 assumption fails here, not in the server."""
    for batch in (1, 8):
        shape = (batch, *input_shape[1:])
        try:
            arg_shapes, out_shapes, _ = symbol.infer_shape(data=shape)
        except mx.base.MXNetError as exc:
            raise ConversionError(
                f"the converted graph does not take a batch of {batch}: {exc}"
            ) from None
        for name, inferred in zip(symbol.list_arguments(), arg_shapes or [], strict=False):
            if name != "data" and tuple(inferred) != params[name].shape:
                raise ConversionError(f"parameter {name} changes shape with the batch size")
        if any(out[0] != batch for out in out_shapes or []):
            raise ConversionError(f"an output of the converted graph is not batched ({out_shapes})")


__all__ = ["ConversionResult", "convert_tfjs", "default_nms", "default_outputs"]
