"""int8 quantization (`predictor quantize`, MODEL_DTYPE=int8) on the shipped model.

Calibration uses a handful of synthetic scenes of the training distribution
(seed 1, as the training set) so that it takes seconds. What is checked is
WHAT the quantized model finds, against float32, on real JPEG scenes; its
speed is measured by `make bench-int8`, never here.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from predictor.cli import main
from predictor.config import DeviceSpec
from predictor.data import FixtureObject, render_fixture, synthesize
from predictor.detections import Detection, to_detections
from predictor.errors import CheckpointError
from predictor.runtime.imaging import prepare
from predictor.runtime.model import Detector, checkpoint_dtype, load_detectors, resolve_checkpoint
from predictor.runtime.quantize import QuantizeError, quantize_checkpoint
from tests.support.server_process import ServerProcess

from .conftest import SMALL_CLASSES, SMALL_EDGE, encode_jpeg, load_symbol, run_symbol, scene

CALIBRATION_IMAGES = 16
# A detection of one model must be matched by the other's above this lower
# threshold, so that a score of 0.51 against 0.49 is not a disagreement.
SURE, LENIENT = 0.6, 0.3


@pytest.fixture(scope="module")
def float_prefix(small_model_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the shipped checkpoint in a folder of its own."""
    folder = tmp_path_factory.mktemp("float")
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copyfile(f"{small_model_prefix}{suffix}", folder / f"m{suffix}")
    shutil.copyfile(small_model_prefix.parent / "synset.txt", folder / "synset.txt")
    return folder / "m"


@pytest.fixture(scope="module")
def int8_prefix(float_prefix: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The copy quantized to the default place, PREFIX-int8, on a few training-like scenes."""
    calib = tmp_path_factory.mktemp("calib") / "scenes"
    synthesize(calib, CALIBRATION_IMAGES, seed=1, fmt="voc", progress=False)
    result = quantize_checkpoint(float_prefix, calib, edge=SMALL_EDGE, images=CALIBRATION_IMAGES)
    assert result.prefix == Path(f"{float_prefix}-int8")
    assert result.calibration_images == CALIBRATION_IMAGES
    return result.prefix


@pytest.fixture(scope="module")
def int8_detector(float_prefix: Path, int8_prefix: Path) -> Iterator[Detector]:
    (detector,) = load_detectors(float_prefix, 0, SMALL_EDGE, DeviceSpec(), 8, "int8")
    yield detector
    detector.close()


def fixture_scenes() -> list[bytes]:
    """The original service's kind of test picture, plus drawn scenes of several sizes."""
    placed = render_fixture(
        [
            FixtureObject("3", (110, 150), 130, color=(20, 20, 20), style="font"),
            FixtureObject("circle", (320, 140), 120, color=(30, 60, 200), style="filled"),
            FixtureObject("7", (520, 170), 140, color=(120, 40, 10), style="hand"),
        ],
        size=(640, 320),
        seed=5,
        background=(235, 235, 225),
    )
    return [encode_jpeg(placed.image)] + [
        encode_jpeg(scene(seed, width, height))
        for seed, (width, height) in enumerate(((640, 480), (1280, 720), (800, 800), (1920, 1080)))
    ]


def iou(a: Detection, b: Detection) -> float:
    width = max(0, min(a.x + a.width, b.x + b.width) - max(a.x, b.x))
    height = max(0, min(a.y + a.height, b.y + b.height) - max(a.y, b.y))
    inter = width * height
    return inter / (a.width * a.height + b.width * b.height - inter)


def detect(detector: Detector, jpegs: list[bytes], threshold: float) -> list[list[Detection]]:
    images = [prepare(data, SMALL_EDGE, 10**9) for data in jpegs]
    outputs = detector.forward([image.tensor for image in images])
    return [
        to_detections(raw, image.placement, detector.classes, threshold)
        for image, raw in zip(images, outputs, strict=True)
    ]


def unmatched(sure: list[Detection], lenient: list[Detection]) -> list[Detection]:
    """Confident detections with no same-class box of IoU >= 0.7 on the other side."""
    return [
        d
        for d in sure
        if not any(o.object_class == d.object_class and iou(d, o) >= 0.7 for o in lenient)
    ]


def test_the_quantized_checkpoint_is_int8_and_keeps_the_class_names(
    float_prefix: Path, int8_prefix: Path, int8_detector: Detector
) -> None:
    assert checkpoint_dtype(Path(f"{int8_prefix}-symbol.json")) == "int8"
    assert checkpoint_dtype(Path(f"{float_prefix}-symbol.json")) == "float32"
    assert int8_detector.checkpoint.symbol_path == Path(f"{int8_prefix}-symbol.json")
    assert int8_detector.dtype == "int8"
    assert tuple(int8_detector.classes) == SMALL_CLASSES


def test_int8_finds_what_float32_finds_on_real_scenes(
    detectors: list[Detector], int8_detector: Detector
) -> None:
    jpegs = fixture_scenes()
    floats_sure = detect(detectors[0], jpegs, SURE)
    floats_lenient = detect(detectors[0], jpegs, LENIENT)
    ints_sure = detect(int8_detector, jpegs, SURE)
    ints_lenient = detect(int8_detector, jpegs, LENIENT)
    assert sum(map(len, floats_sure)) >= 5, "the scenes hold objects the model finds"
    for index in range(len(jpegs)):
        assert not unmatched(floats_sure[index], ints_lenient[index]), (index, ints_lenient[index])
        assert not unmatched(ints_sure[index], floats_lenient[index]), (
            index,
            floats_lenient[index],
        )


def test_the_int8_graph_with_the_merged_head_gives_the_same_outputs(
    int8_prefix: Path, int8_detector: Detector
) -> None:
    """The head rewrite applies to quantized graphs (their head stays float32) exactly."""
    jpegs = fixture_scenes()[:3]
    tensors = [prepare(jpeg, SMALL_EDGE, 2**31 - 1).tensor for jpeg in jpegs]
    ids, scores, boxes = run_symbol(load_symbol(int8_prefix), int8_prefix, np.stack(tensors))
    served = int8_detector.forward(tensors)
    assert (scores > 0.5).any()
    for index, raw in enumerate(served):
        assert np.array_equal(raw.class_ids, ids[index, :, 0])
        assert np.array_equal(raw.scores, scores[index, :, 0])
        assert np.array_equal(raw.boxes, boxes[index])


def test_int8_is_served_over_http(float_prefix: Path, int8_prefix: Path) -> None:
    jpeg = fixture_scenes()[0]
    env = {"MODEL_PREFIX": str(float_prefix), "MODEL_EDGE": str(SMALL_EDGE), "BATCH_MAX_SIZE": "2"}
    with ServerProcess({**env, "MODEL_DTYPE": "int8"}) as server:
        status, payload = server.request("/predict", jpeg)
        log = "".join(server.log)
    assert status == 200, payload
    assert "int8" in log and str(int8_prefix) in log
    found = sorted(d["objectClass"] for d in payload["prediction"])
    assert found, payload


def test_dtype_and_checkpoint_must_agree(float_prefix: Path, int8_prefix: Path) -> None:
    # Serving the int8 file as float32 is refused; int8 from the float prefix finds PREFIX-int8.
    with pytest.raises(CheckpointError, match="serve it with MODEL_DTYPE=int8"):
        resolve_checkpoint(int8_prefix, 0, "float32")
    assert resolve_checkpoint(int8_prefix, 0, "int8").symbol_path.name == "m-int8-symbol.json"
    assert resolve_checkpoint(float_prefix, 0, "int8").symbol_path.name == "m-int8-symbol.json"


def test_int8_without_a_quantized_checkpoint_says_how_to_make_one(
    float_prefix: Path, tmp_path: Path
) -> None:
    lonely = tmp_path / "m"
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copyfile(f"{float_prefix}{suffix}", f"{lonely}{suffix}")
    shutil.copyfile(float_prefix.parent / "synset.txt", tmp_path / "synset.txt")
    with pytest.raises(CheckpointError, match=r"MODEL_DTYPE=int8: .* `predictor quantize --model "):
        resolve_checkpoint(lonely, 0, "int8")


def test_quantize_refuses_bad_input_clearly(
    float_prefix: Path, int8_prefix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QuantizeError, match="no image files found"):
        quantize_checkpoint(float_prefix, empty, tmp_path / "q", edge=SMALL_EDGE)
    with pytest.raises(QuantizeError, match="already quantized"):
        quantize_checkpoint(int8_prefix, empty, tmp_path / "q", edge=SMALL_EDGE)
    args = ["quantize", "--model", str(float_prefix), "--calib", str(empty)]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "q")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("error: no image files found")


@pytest.mark.skipif(mx.context.num_gpus() == 0, reason="MODEL_DTYPE=float16 needs a GPU")
def test_float16_on_a_gpu_finds_what_float32_finds(
    small_model_prefix: Path, detectors: list[Detector]
) -> None:
    (half,) = load_detectors(small_model_prefix, 0, SMALL_EDGE, DeviceSpec(gpus=(0,)), 8, "float16")
    try:
        jpegs = fixture_scenes()
        floats_sure, floats_lenient = (detect(detectors[0], jpegs, t) for t in (SURE, LENIENT))
        halves_sure, halves_lenient = (detect(half, jpegs, t) for t in (SURE, LENIENT))
        for index in range(len(jpegs)):
            assert not unmatched(floats_sure[index], halves_lenient[index]), index
            assert not unmatched(halves_sure[index], floats_lenient[index]), index
    finally:
        half.close()


def test_quantize_refuses_to_overwrite_other_class_names_before_calibrating(
    float_prefix: Path, tmp_path: Path
) -> None:
    (tmp_path / "synset.txt").write_text("cat\ndog\n")
    with pytest.raises(CheckpointError, match="exists with other class names"):
        # No calibration image is even looked for: the folder does not exist.
        quantize_checkpoint(float_prefix, tmp_path / "missing", tmp_path / "q", edge=SMALL_EDGE)
