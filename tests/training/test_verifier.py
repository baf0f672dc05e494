"""The crop verifier: how it re-scores candidates, that it sees the crops it learned
on, and its training end to end into a checkpoint the server loads."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest

from predictor.config import DeviceSpec
from predictor.data import CLASSES, synthesize
from predictor.export import export_zoo
from predictor.runtime.imaging import prepare
from predictor.runtime.model import load_detectors
from predictor.training.config import VerifierConfig
from predictor.training.train_verifier import VerifierTrainingError, crops_of, train_verifier
from predictor.training.verifier import (
    CANDIDATES,
    CROP,
    VerificationError,
    VerifiedDetector,
    build_verifier,
    export_verified,
    is_verified,
    load_detector_block,
)

from ..conftest import FRUIT_CLASSES, encode_jpeg, scene

EDGE = 300


@pytest.fixture(scope="module")
def digits_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained SSD over the scene generator's classes (a stand-in for `predictor train`)."""
    prefix = tmp_path_factory.mktemp("digits") / "detector"
    export_zoo(
        "ssd_300_mobilenet0.25_custom", prefix, random_init=True, classes=CLASSES,
        stream=io.StringIO(),
    )  # fmt: skip
    return prefix


def constant_verifier(probabilities: list[float]) -> mx.gluon.HybridBlock:
    """A verifier that answers ``probabilities`` (background first) whatever the crop."""
    verifier = build_verifier(len(probabilities) - 1)
    verifier.initialize()
    verifier(mx.nd.zeros((1, 3, CROP, CROP)))  # the layers' shapes are known after a pass
    output = verifier[-1]
    output.weight.set_data(mx.nd.zeros(output.weight.shape))
    output.bias.set_data(mx.nd.array(np.log(probabilities)))
    return verifier


def test_each_of_the_best_candidates_scores_the_geometric_mean_of_detector_and_verifier(
    fruit_prefix: Path,
) -> None:
    probabilities = [0.1, 0.2, 0.3, 0.4]  # background, then the three fruit classes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detector = load_detector_block(fruit_prefix)
        verified = VerifiedDetector(detector, constant_verifier(probabilities))
        images = mx.nd.array(np.random.default_rng(3).normal(size=(2, 3, EDGE, EDGE)))
        ids, scores, boxes = (output.asnumpy() for output in detector(images))
        v_ids, v_scores, v_boxes = (output.asnumpy() for output in verified(images))
    assert len(FRUIT_CLASSES) == 3 and ids.shape[1] > CANDIDATES
    assert np.array_equal(v_ids, ids) and np.array_equal(v_boxes, boxes)
    best, rest = slice(0, CANDIDATES), slice(CANDIDATES, None)
    assert (ids[:, best] >= 0).any()
    agreement = np.array(probabilities[1:])[np.clip(ids[:, best], 0, None).astype(int)]
    expected = np.where(ids[:, best] >= 0, np.sqrt(scores[:, best] * agreement), scores[:, best])
    np.testing.assert_allclose(v_scores[:, best], expected, rtol=1e-5)
    assert np.array_equal(v_scores[:, rest], scores[:, rest])  # after the best: as they were


def test_the_served_network_classifies_the_crops_training_cuts(
    fruit_prefix: Path, tmp_path: Path
) -> None:
    """Exported, loaded as the server loads it (graph rewrites included), the verified
    network scores what the training-side crops give the same verifier."""
    verifier = build_verifier(len(FRUIT_CLASSES))
    verifier.initialize(mx.init.Xavier(magnitude=2))
    prefix = tmp_path / "verified"
    export_verified(fruit_prefix, verifier, prefix, EDGE)
    assert is_verified(prefix) and not is_verified(fruit_prefix)

    tensor = prepare(encode_jpeg(scene(5)), EDGE, 10**8).tensor
    plain = load_detectors(fruit_prefix, 0, EDGE, DeviceSpec(), 1)[0]
    served = load_detectors(prefix, 0, EDGE, DeviceSpec(), 1)[0]
    try:
        (raw,) = plain.forward([tensor])
        (verified,) = served.forward([tensor])
    finally:
        plain.close()
        served.close()
    assert served.classes == FRUIT_CLASSES
    best = slice(0, CANDIDATES)
    crops = crops_of(tensor, raw.boxes[best]).astype(np.float32)
    probabilities = mx.nd.softmax(verifier(mx.nd.array(crops))).asnumpy()
    ids = raw.class_ids[best].astype(int)
    agreement = probabilities[np.arange(CANDIDATES), np.clip(ids, 0, None) + 1]
    expected = np.where(ids >= 0, np.sqrt(np.maximum(raw.scores[best], 0) * agreement),
                        raw.scores[best])  # fmt: skip
    # float16 crops on the training side: agreement to about 1e-3.
    np.testing.assert_allclose(verified.scores[best], expected, atol=3e-3)
    assert np.array_equal(verified.class_ids, raw.class_ids)
    np.testing.assert_allclose(verified.scores[CANDIDATES:], raw.scores[CANDIDATES:], rtol=1e-6)

    with pytest.raises(VerificationError, match="already has a verifier"):
        export_verified(prefix, verifier, tmp_path / "twice", EDGE)


@pytest.fixture(scope="module")
def scenes_and_photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("verifier-data")
    synthesize(root / "train", 16, seed=21, fmt="voc", progress=False)
    synthesize(root / "val", 8, seed=22, fmt="coco", progress=False)
    photos = root / "photos"
    photos.mkdir()
    for seed in range(3):
        cv2.imwrite(str(photos / f"photo-{seed}.jpg"), scene(100 + seed))
    return root / "train", root / "val", photos


def test_training_collects_crops_and_exports_a_checkpoint_the_server_loads(
    digits_detector: Path, scenes_and_photos: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    train_dir, val_dir, photos = scenes_and_photos
    config = VerifierConfig(epochs=1, batch_size=32, scenes_per_set=12, views_per_folder=6)
    run, prefix = tmp_path / "run", tmp_path / "model"
    report = train_verifier(
        digits_detector, [train_dir], [photos], run, config, export_prefix=prefix,
        val_dir=val_dir, progress=False,
    )  # fmt: skip
    # Every object gives two crops of its own box at least; 6 views of 3 photos, 2 each.
    objects = sum(len(obj) for obj in _objects(train_dir, 12))
    assert report.scene_crops >= 2 * objects > 0
    assert report.photo_crops >= 6 * 3
    assert 0 < report.background_share < 1
    assert 0 <= report.train_accuracy <= 1
    assert report.val_objects_accuracy is not None and report.val_background_accuracy is not None
    saved = json.loads((run / "report.json").read_text())
    assert saved["config"]["views_per_folder"] == 6 and saved["photo_crops"] == report.photo_crops
    assert (run / "verifier.params").is_file() and is_verified(prefix)

    detector = load_detectors(prefix, 0, EDGE, DeviceSpec(), 2)[0]
    try:
        assert detector.classes == list(CLASSES)
        (raw,) = detector.forward([prepare(encode_jpeg(scene(1)), EDGE, 10**8).tensor])
    finally:
        detector.close()
    assert np.isfinite(raw.scores).all() and raw.scores.max() <= 1.0

    with pytest.raises(VerifierTrainingError, match="already has a verifier"):
        train_verifier(prefix, [train_dir], [], tmp_path / "again", config,
                       export_prefix=tmp_path / "again" / "m", progress=False)  # fmt: skip


def _objects(folder: Path, limit: int) -> list[list[object]]:
    from predictor.data import load_dataset

    dataset = load_dataset(folder)
    return [list(dataset.targets(record)) for record in dataset.images[:limit]]


def test_a_detector_of_other_classes_is_refused(
    fruit_prefix: Path, scenes_and_photos: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    train_dir, _, _ = scenes_and_photos
    with pytest.raises(VerifierTrainingError, match="must be the same, in order"):
        train_verifier(fruit_prefix, [train_dir], [], tmp_path, VerifierConfig(epochs=1),
                       export_prefix=tmp_path / "m", progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--data", "missing"], "--data {tmp}/missing: no such folder"),
        (["--photos", "nowhere"], "--photos {tmp}/nowhere: no such folder"),
        (["--epochs", "0"], "--epochs: must be at least 1, not 0"),
    ],
    ids=["data", "photos", "epochs"],
)
def test_the_cli_names_what_is_wrong_without_a_traceback(
    digits_detector: Path,
    scenes_and_photos: tuple[Path, Path, Path],
    tmp_path: Path,
    options: list[str],
    message: str,
) -> None:
    train_dir, _, _ = scenes_and_photos
    given = [str(tmp_path / o) if o in ("missing", "nowhere") else o for o in options]
    arguments = ["--detector", str(digits_detector), "--out", str(tmp_path / "run"),
                 "--export", str(tmp_path / "m")]  # fmt: skip
    if "--data" not in options:
        arguments += ["--data", str(train_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "train-verifier", *arguments, *given],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert message.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_verified_checkpoint_quantizes_with_its_verifier_in_float32(
    fruit_prefix: Path, tmp_path: Path
) -> None:
    from predictor.runtime.graph import after_suppression
    from predictor.runtime.quantize import quantize_checkpoint

    verifier = build_verifier(len(FRUIT_CLASSES))
    verifier.initialize(mx.init.Xavier(magnitude=2))
    prefix = tmp_path / "verified"
    export_verified(fruit_prefix, verifier, prefix, EDGE)
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for seed in range(8):
        (calibration / f"{seed}.jpg").write_bytes(encode_jpeg(scene(seed)))
    result = quantize_checkpoint(prefix, calibration, images=8)
    graph = json.loads(result.symbol_path.read_text())
    tail = set(after_suppression(mx.sym.load(str(result.symbol_path))))
    assert any(n["op"] == "_contrib_ROIAlign" and n["name"] in tail for n in graph["nodes"])
    quantized = [n["name"] for n in graph["nodes"] if n.get("attrs", {}).get("quantized")]
    assert quantized, "the detector's convolutions are quantized"
    assert not tail & set(quantized), "the verifier's are not"
    assert any(n["op"] == "_sg_mkldnn_conv" and n["name"] in tail for n in graph["nodes"])
    int8 = load_detectors(result.prefix, 0, EDGE, DeviceSpec(), 2, "int8")[0]
    try:
        (raw,) = int8.forward([prepare(encode_jpeg(scene(2)), EDGE, 10**8).tensor])
    finally:
        int8.close()
    assert np.isfinite(raw.scores).all() and (raw.class_ids >= 0).any()
