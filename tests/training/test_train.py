"""Training end to end on a tiny synthetic set: progress, resume, export, serving."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest

from predictor.config import DeviceSpec
from predictor.data import synthesize
from predictor.runtime.imaging import prepare
from predictor.runtime.model import load_detectors
from predictor.training.config import TrainConfig
from predictor.training.train import TrainingError, TrainState, train

from ..conftest import encode_jpeg, scene

TINY = TrainConfig(epochs=2, batch_size=8, learning_rate=1e-3, pretrain_epochs=1, seed=3, workers=2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    synthesize(root / "train", 24, seed=11, fmt="yolo", progress=False)
    synthesize(root / "val", 8, seed=12, fmt="coco", progress=False)
    return root / "train", root / "val"


def test_train_resume_export_and_serve(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    train_dir, val_dir = tiny_data
    run = tmp_path / "run"
    first = train(train_dir, run, TrainConfig(**{**TINY.__dict__, "epochs": 1}), val_dir=val_dir,
                  progress=False)  # fmt: skip
    assert first.epoch == 1 and len(first.history) == 1 and first.pretrained
    assert first.pretraining["epochs"] == 1 and 0 <= first.pretraining["val_accuracy"] <= 1
    record = first.history[0]
    assert np.isfinite(record["loss"]) and record["loss"] > 0
    assert 0.0 <= record["val_map50"] <= 1.0 and 0.0 <= record["val_map50_95"] <= 1.0

    with pytest.raises(TrainingError, match="already holds a run"):
        train(train_dir, run, TINY, progress=False)

    # Resume to two epochs: the run continues from the saved state, it does not restart.
    state_file = run / "state.json"
    saved = json.loads(state_file.read_text())
    saved["config"]["epochs"] = 2
    state_file.write_text(json.dumps(saved))
    resumed = train(train_dir, run, TINY, val_dir=val_dir, resume=True, progress=False)
    assert resumed.epoch == 2
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert resumed.pretraining == first.pretraining  # not pretrained again
    assert resumed.history[0] == TrainState.load(state_file).history[0]

    # The export is what the server loads.
    prefix = run / "model"
    detector = load_detectors(prefix, 0, TINY.edge, DeviceSpec(), 2)[0]
    assert detector.classes[:3] == ["0", "1", "2"] and len(detector.classes) == 13
    (raw,) = detector.forward([prepare(encode_jpeg(scene(1)), TINY.edge, 10**8).tensor])
    assert np.isfinite(raw.scores).all()
    detector.close()


def test_fine_tuning_starts_from_an_earlier_runs_weights(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    train_dir, val_dir = tiny_data
    base = train(train_dir, tmp_path / "base", TrainConfig(**{**TINY.__dict__, "epochs": 1}),
                 progress=False)  # fmt: skip
    assert base.pretrained
    init = tmp_path / "base" / "last.params"
    config = TrainConfig(
        **{**TINY.__dict__, "epochs": 1, "learning_rate": 0.0, "init_params": str(init)}
    )
    tuned = train(train_dir, tmp_path / "tuned", config, val_dir=val_dir, progress=False)
    assert not tuned.pretrained and tuned.pretraining == {}  # no crop pretraining
    # At a learning rate of 0 the weights stay the earlier run's (batch norm's running
    # statistics aside, which move in training mode whatever the rate).
    before = mx.nd.load(str(init))
    after = mx.nd.load(str(tmp_path / "tuned" / "last.params"))
    convolutions = [k for k in before if k.endswith("weight")]
    assert convolutions and all(
        np.array_equal(before[k].asnumpy(), after[k].asnumpy()) for k in convolutions
    )
    # Resuming keeps the starting point in the saved configuration.
    assert TrainState.load(tmp_path / "tuned" / "state.json").config.init_params == str(init)


def test_fine_tuning_refuses_weights_of_another_network(
    tiny_data: tuple[Path, Path], tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign.params"
    mx.nd.save(str(foreign), {"features.stages.0.0.weight": mx.nd.zeros((1, 1, 1, 1))})
    for init, message in ((foreign, "cannot start from .*foreign.params"),
                          (tmp_path / "missing.params", "no such file")):  # fmt: skip
        config = TrainConfig(**{**TINY.__dict__, "init_params": str(init)})
        with pytest.raises(TrainingError, match=message):
            train(tiny_data[0], tmp_path / init.stem, config, progress=False)


def test_resume_without_a_run_is_refused(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(tiny_data[0], tmp_path / "empty", TINY, resume=True, progress=False)


def test_non_custom_network_is_refused(tiny_data: tuple[Path, Path], tmp_path: Path) -> None:
    config = TrainConfig(network="ssd_300_mobilenet0.25_coco", epochs=1)
    with pytest.raises(TrainingError, match="_custom"):
        train(tiny_data[0], tmp_path / "run", config, progress=False)


def test_train_cli_reports_bad_data_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    (bad / "labels").mkdir(parents=True)
    (bad / "images").mkdir()
    (bad / "classes.txt").write_text("0\n1\n")
    (bad / "labels" / "a.txt").write_text("0 0.5 0.5 0.2\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "train",
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "a.txt" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_hard_negative_floor_is_what_an_image_without_objects_teaches() -> None:
    """On an all-background image the loss counts exactly the N most confident wrong anchors."""
    from predictor.training.train import _multibox_loss

    rng = np.random.default_rng(4)
    anchors, classes = 500, 14
    logits = rng.normal(0, 2, (1, anchors, classes)).astype(np.float32)
    background = np.zeros((1, anchors), np.float32)
    # Per anchor, -log p(background): the worst anchors are the most confident wrong ones.
    shifted = logits - logits.max(axis=-1, keepdims=True)
    per_anchor = -(shifted[..., 0] - np.log(np.exp(shifted).sum(axis=-1)))[0]
    worst_first = np.sort(per_anchor)[::-1]
    for floor in (8, 64, anchors):
        _, cls_loss, _ = _multibox_loss(floor)(
            mx.nd.array(logits),
            mx.nd.zeros((1, anchors, 4)),
            mx.nd.array(background),
            mx.nd.zeros((1, anchors, 4)),
        )
        assert float(cls_loss[0].asscalar()) == pytest.approx(worst_first[:floor].sum(), rel=1e-4)


def test_train_cli_refuses_a_hard_negative_floor_below_one(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "predictor", "train", "--data", str(tmp_path), "--out",
         str(tmp_path / "r"), "--hard-negatives", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--hard-negatives: must be at least 1, not 0" in result.stderr
    assert "Traceback" not in result.stderr
