"""Model loading (with its failure modes) and the mapping to contract detections."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from predictor.checkpoint import Checkpoint
from predictor.config import Device, DeviceSpec
from predictor.data import FixtureObject, render_fixture
from predictor.detections import Detection, Placement, RawDetections, to_detections
from predictor.errors import CheckpointError
from predictor.runtime.imaging import decode, to_tensor
from predictor.runtime.model import Detector, contexts_for, load_detectors, network_class_count
from predictor.training.detection_metrics import iou_matrix

from .conftest import SMALL_CLASSES, SMALL_EDGE, encode_jpeg

CLASSES = ["cat", "dog"]


def raw(rows: Sequence[tuple[float, ...]]) -> RawDetections:
    array = np.array(rows, dtype=np.float32).reshape(-1, 6)
    return RawDetections(array[:, 0], array[:, 1], array[:, 2:])


def test_detections_are_scaled_to_the_original_image_and_sorted() -> None:
    detections = to_detections(
        raw([(1, 0.8, 10, 20, 110, 220), (0, 0.99, 0, 0, 150, 300)]),
        placement=Placement.stretched(600, 900, 300, 300),
        classes=CLASSES,
        threshold=0.5,
    )
    assert [d.to_json() for d in detections] == [
        {"objectClass": "cat", "probability": 0.99, "x": 0, "y": 0, "width": 300, "height": 900},
        {"objectClass": "dog", "probability": 0.8, "x": 20, "y": 60, "width": 200, "height": 600},
    ]


def test_boxes_are_clipped_and_degenerate_boxes_dropped() -> None:
    detections = to_detections(
        raw([(0, 0.9, -50, -10, 400, 500), (1, 0.9, 310, 10, 350, 20), (0, 0.9, 5, 5, 5, 50)]),
        placement=Placement.stretched(300, 300, 300, 300),
        classes=CLASSES,
        threshold=0.5,
    )
    assert [(d.x, d.y, d.width, d.height) for d in detections] == [(0, 0, 300, 300)]


def test_threshold_is_strict_and_non_finite_or_unknown_rows_never_pass() -> None:
    nan, inf = float("nan"), float("inf")
    rows = [
        (0, 0.5, 1, 1, 50, 50),  # equal to the threshold: not above it
        (0, nan, 1, 1, 50, 50),
        (0, inf, 1, 1, 50, 50),
        (0, 0.9, nan, 1, 50, 50),
        (1, 0.9, 1, 1, inf, 50),
        (-1, 0.9, 1, 1, 50, 50),  # padding row
        (2, 0.9, 1, 1, 50, 50),  # class id beyond synset
        (nan, 0.9, 1, 1, 50, 50),
        (1, 0.51, 1, 1, 50, 50),
    ]
    detections = to_detections(raw(rows), Placement.stretched(100, 100, 100, 100), CLASSES, 0.5)
    assert [(d.object_class, d.probability) for d in detections] == [("dog", 0.51)]


def test_probability_is_the_float32_value_in_its_shortest_form() -> None:
    (detection,) = to_detections(
        raw([(0, 0.9959417, 0, 0, 9, 9)]), Placement.stretched(10, 10, 10, 10), CLASSES, 0.5
    )
    assert detection.probability == 0.9959417


def test_contexts_for_devices() -> None:
    assert contexts_for(DeviceSpec()) == [mx.cpu(0)]
    assert contexts_for(DeviceSpec(cpu_replicas=2)) == [mx.cpu(0), mx.cpu(1)]
    assert contexts_for(DeviceSpec(gpus=(0, 2))) == [mx.gpu(0), mx.gpu(2)]
    # The typed device says what MXNet's context says (the v2 model configuration uses it).
    assert [str(Device("gpu", i)) for i in (0, 2)] == [str(mx.gpu(0)), str(mx.gpu(2))]


def test_class_count_is_read_from_the_symbol(small_model_prefix: Path) -> None:
    symbol = Path(f"{small_model_prefix}-symbol.json")
    assert network_class_count(symbol, (3, SMALL_EDGE, SMALL_EDGE)) == len(SMALL_CLASSES)


def copy_checkpoint(prefix: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(f"{prefix}{suffix}", f"{target / 'm'}{suffix}")
    shutil.copy(prefix.parent / "synset.txt", target / "synset.txt")
    return target / "m"


@pytest.mark.parametrize("missing", ["-symbol.json", "-0000.params", "synset.txt"])
def test_missing_file_is_named(small_model_prefix: Path, tmp_path: Path, missing: str) -> None:
    prefix = copy_checkpoint(small_model_prefix, tmp_path)
    victim = tmp_path / "synset.txt" if missing == "synset.txt" else Path(f"{prefix}{missing}")
    victim.unlink()
    with pytest.raises(CheckpointError, match=f"not found: {victim}"):
        Checkpoint.from_prefix(prefix, 0)


def load(prefix: Path) -> list[Detector]:
    return load_detectors(prefix, 0, SMALL_EDGE, DeviceSpec(), 1)


def test_truncated_params_are_named(small_model_prefix: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_model_prefix, tmp_path)
    params = Path(f"{prefix}-0000.params")
    params.write_bytes(params.read_bytes()[: params.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=str(params)):
        load(prefix)


def test_corrupt_symbol_is_named(small_model_prefix: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_model_prefix, tmp_path)
    symbol = Path(f"{prefix}-symbol.json")
    symbol.write_text('{"nodes": [')
    with pytest.raises(CheckpointError, match=str(symbol)):
        load(prefix)


def test_params_of_another_network_are_refused(small_model_prefix: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_model_prefix, tmp_path)
    params = Path(f"{prefix}-0000.params")
    weights = mx.nd.load(str(params))
    name = next(k for k in weights if k.endswith("_weight"))
    weights[name] = mx.nd.zeros((3, 3))
    mx.nd.save(str(params), weights)
    with pytest.raises(CheckpointError, match="does not match"):
        load(prefix)


def test_wrong_class_count_in_synset_is_named(small_model_prefix: Path, tmp_path: Path) -> None:
    prefix = copy_checkpoint(small_model_prefix, tmp_path)
    (tmp_path / "synset.txt").write_text("cat\ndog\n")
    with pytest.raises(CheckpointError, match=r"synset\.txt lists 2 classes but .* predicts 13"):
        load(prefix)


def test_forward_is_deterministic_and_batch_independent(detectors: list[Detector]) -> None:
    detector = detectors[0]
    rng = np.random.default_rng(0)
    tensors = [rng.normal(0, 1, (3, SMALL_EDGE, SMALL_EDGE)).astype(np.float32) for _ in range(5)]
    together = detector.forward(tensors)
    for tensor, batched in zip(tensors, together, strict=True):
        (alone,) = detector.forward([tensor])
        assert np.allclose(alone.scores, batched.scores, atol=1e-5)
        assert np.allclose(alone.boxes, batched.boxes, atol=1e-2)
    assert not np.allclose(together[0].scores, together[1].scores)
    with pytest.raises(ValueError):
        detector.forward([])


def test_each_batch_size_has_a_graph_of_its_own_on_the_same_weights(
    small_model_prefix: Path, detectors: list[Detector]
) -> None:
    """Per-size graphs (the default) and one shared graph answer alike, in any order of sizes."""
    per_size = detectors[0]
    assert per_size.graph_count == per_size.max_batch, "warm-up planned every size"
    graphs = list(per_size._graphs.values())
    weights = [{name: p.data() for name, p in g.collect_params().items()} for g in graphs]
    for other in weights[1:]:
        assert other.keys() == weights[0].keys()
        assert all(other[name] is weights[0][name] for name in other), "no copy of the weights"
    (shared,) = load_detectors(
        small_model_prefix,
        0,
        SMALL_EDGE,
        DeviceSpec(),
        per_size.max_batch,
        graph_per_batch_size=False,
    )
    try:
        assert shared.graph_count == 1
        rng = np.random.default_rng(2)
        for size in (3, 1, per_size.max_batch, 2, 3):
            tensors = [
                rng.normal(0, 1, (3, SMALL_EDGE, SMALL_EDGE)).astype(np.float32)
                for _ in range(size)
            ]
            for a, b in zip(per_size.forward(tensors), shared.forward(tensors), strict=True):
                assert np.array_equal(a.class_ids, b.class_ids)
                assert np.allclose(a.scores, b.scores, atol=1e-6)
                assert np.allclose(a.boxes, b.boxes, atol=1e-3)
        assert shared.graph_count == 1
    finally:
        shared.close()


def test_large_photo_boxes_match_full_resolution_decoding(detectors: list[Detector]) -> None:
    """Reduced (1/8 in the DCT) and full decoding of a 4000x3000 photo give the same boxes."""
    detector = detectors[0]
    fixture = render_fixture(
        [
            FixtureObject("3", (180, 200), 170, color=(20, 20, 20), style="font"),
            FixtureObject("circle", (420, 180), 160, color=(30, 60, 200), style="filled"),
            FixtureObject("7", (640, 240), 180, color=(120, 40, 10), style="hand"),
            FixtureObject("square", (300, 440), 150, color=(40, 120, 40), style="filled"),
        ],
        size=(800, 600),
        seed=5,
        background=(235, 235, 225),
    )
    photo = cv2.resize(fixture.image, (4000, 3000), interpolation=cv2.INTER_CUBIC)
    data = encode_jpeg(np.asarray(photo, dtype=np.uint8), quality=90)
    reduced = decode(data, SMALL_EDGE, 10**9)
    assert reduced.pixels.shape[:2] == (375, 500), "decoded at 1/8 scale"
    full = np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), np.uint8)
    tensors = [to_tensor(reduced.pixels, SMALL_EDGE), to_tensor(full, SMALL_EDGE)]
    found = [
        sorted(
            to_detections(
                raw, Placement.stretched(4000, 3000, SMALL_EDGE, SMALL_EDGE), detector.classes, 0.5
            ),
            key=lambda d: (d.object_class, d.x),
        )
        for raw in detector.forward(tensors)
    ]
    assert found[0], "the model finds the objects"
    assert [d.object_class for d in found[0]] == [d.object_class for d in found[1]]
    # The same objects in the same places: one network-input pixel is 13.3 x 10 pixels of
    # this photo, and where two anchors score alike the slightly different input may pick
    # the other one. Measured: the first digits network's boxes at most 4 px apart; issue
    # 16's network (11,636 anchors) moves the 3's box by 52 px of 4000 (IoU 0.86).
    for a, b in zip(*found, strict=True):
        assert _box_iou(a, b) >= 0.8, (a, b)
        assert abs(a.probability - b.probability) <= 0.02, (a, b)


def _box_iou(a: Detection, b: Detection) -> float:
    """Intersection over union of two detections' pixel boxes."""
    corners = [(d.x, d.y, d.x + d.width, d.y + d.height) for d in (a, b)]
    return float(iou_matrix(corners[:1], corners[1:])[0, 0])


def test_fused_cpu_graph_computes_what_the_checkpoint_says(
    small_model_prefix: Path, detectors: list[Detector]
) -> None:
    """The server's oneDNN-fused graph gives the outputs of the plain exported graph."""
    plain = mx.gluon.SymbolBlock.imports(
        f"{small_model_prefix}-symbol.json", ["data"], f"{small_model_prefix}-0000.params"
    )
    rng = np.random.default_rng(1)
    tensor = rng.normal(0, 1, (3, SMALL_EDGE, SMALL_EDGE)).astype(np.float32)
    ids, scores, boxes = (out.asnumpy() for out in plain(mx.nd.array(tensor[None])))
    (fused,) = detectors[0].forward([tensor])
    assert np.array_equal(ids[0, :, 0], fused.class_ids)
    assert np.allclose(scores[0, :, 0], fused.scores, atol=1e-5)
    assert np.allclose(boxes[0], fused.boxes, atol=1e-2)
