"""The `predictor` command as a user runs it: real processes, real files, real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from predictor.config import DeviceSpec
from predictor.runtime.imaging import prepare
from predictor.runtime.model import load_detectors
from tests.support.server_process import ServerProcess

from .conftest import SMALL_EDGE, encode_jpeg, scene

PREDICTOR = [sys.executable, "-m", "predictor"]
STARTUP_TIMEOUT_S = 120


def run(
    args: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PREDICTOR + args, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def model_env(prefix: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REST_", "MODEL_"))}
    env.update(
        {
            "MODEL_PREFIX": str(prefix),
            "MODEL_EDGE": str(SMALL_EDGE),
            "REST_HOST": "127.0.0.1",
            "REST_PORT": "0",
            "BATCH_MAX_SIZE": "4",
        }
    )
    env.update(extra)
    return env


@pytest.fixture
def server(small_model_prefix: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(model_env(small_model_prefix))
    yield process
    process.kill()


def test_serve_starts_answers_and_stops_cleanly_on_sigterm(server: ServerProcess) -> None:
    assert server.request("/health") == (200, {"status": "alive"})
    status, ready = server.request("/ready")
    assert status == 200 and ready["status"] == "ready"
    status, payload = server.request("/predict", encode_jpeg(scene(1)))
    assert status == 200 and isinstance(payload["prediction"], list)
    assert server.stop(signal.SIGTERM) == 0
    log = "".join(server.log)
    assert "draining" in log and "stopped" in log
    assert "Traceback" not in log


def test_serve_stops_cleanly_on_sigint(server: ServerProcess) -> None:
    assert server.request("/health")[0] == 200
    assert server.stop(signal.SIGINT) == 0


def test_serve_with_missing_checkpoint_names_the_file(tmp_path: Path) -> None:
    result = run(["serve"], model_env(tmp_path / "absent"), timeout=60)
    assert result.returncode != 0
    assert f"model file not found: {tmp_path / 'absent'}-symbol.json" in result.stderr
    assert "Traceback" not in result.stderr


def broken_checkpoint(prefix: Path, folder: Path, fault: str) -> tuple[Path, Path]:
    """A copy of the shipped checkpoint with one fault; returns its prefix and the bad file."""
    import shutil

    import mxnet as mx

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "m"
    for suffix in ("-symbol.json", "-0000.params"):
        shutil.copy(f"{prefix}{suffix}", f"{target}{suffix}")
    shutil.copy(prefix.parent / "synset.txt", folder / "synset.txt")
    params = Path(f"{target}-0000.params")
    if fault == "truncated params":
        params.write_bytes(params.read_bytes()[: params.stat().st_size // 3])
        return target, params
    if fault == "params of another network":
        # The weights of a real, different (tiny) network, exported by Gluon.
        other = mx.gluon.nn.HybridSequential()
        other.add(mx.gluon.nn.Conv2D(8, 3), mx.gluon.nn.Dense(13))
        other.initialize()
        other.hybridize()
        other(mx.nd.zeros((1, 3, 32, 32)))
        other.export(str(folder / "other"))
        shutil.copy(folder / "other-0000.params", params)
        return target, params
    if fault == "wrong class count":
        (folder / "synset.txt").write_text("cat\ndog\n")
        return target, folder / "synset.txt"
    if fault == "missing synset":
        (folder / "synset.txt").unlink()
        return target, folder / "synset.txt"
    raise ValueError(fault)


@pytest.mark.parametrize(
    "fault",
    ["truncated params", "params of another network", "wrong class count", "missing synset"],
)
def test_serve_with_a_broken_checkpoint_names_the_file_and_fails(
    small_model_prefix: Path, tmp_path: Path, fault: str
) -> None:
    prefix, culprit = broken_checkpoint(small_model_prefix, tmp_path / "model", fault)
    result = run(["serve"], model_env(prefix), timeout=120)
    assert result.returncode == 1, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert str(culprit) in error_lines[0]
    assert "Traceback" not in result.stderr


def test_serve_with_malformed_setting_names_the_variable(small_model_prefix: Path) -> None:
    result = run(["serve"], model_env(small_model_prefix, BATCH_MAX_DELAY_MS="soon"), timeout=60)
    assert result.returncode == 2
    assert "BATCH_MAX_DELAY_MS='soon'" in result.stderr
    assert "Traceback" not in result.stderr


def test_predict_over_a_folder_writes_json_lines_and_drawings(
    small_model_prefix: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    (photos / "album").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(encode_jpeg(scene(1, 800, 600)))
    (photos / "album" / "b.jpeg").write_bytes(encode_jpeg(scene(2, 300, 500)))
    (photos / "album" / "c.png").write_bytes(b"not really a png")
    (photos / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "drawn"
    started = time.monotonic()
    result = run(
        ["predict", str(photos), "--out", str(out), "--threshold", "0.3"],
        model_env(small_model_prefix),
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["path"]).name for line in lines] == ["a.jpg", "b.jpeg", "c.png"]
    assert "could not be decoded" in lines[2]["error"]
    for line, (width, height) in zip(lines[:2], ((800, 600), (300, 500)), strict=False):
        for detection in line["prediction"]:
            assert detection["probability"] > 0.3
            assert detection["x"] + detection["width"] <= width
            assert detection["y"] + detection["height"] <= height
    assert (out / "a.jpg").is_file() and (out / "album" / "b.jpg").is_file()
    assert "1 of 3 files could not be read" in result.stderr
    assert time.monotonic() - started < 120


def test_predict_on_a_missing_path_names_it(small_model_prefix: Path, tmp_path: Path) -> None:
    result = run(["predict", str(tmp_path / "nowhere.jpg")], model_env(small_model_prefix))
    assert result.returncode != 0
    assert f"no such file or folder: {tmp_path / 'nowhere.jpg'}" in result.stderr


def test_export_without_weights_says_which_file_to_put_where(tmp_path: Path) -> None:
    env = dict(os.environ)
    result = run(
        [
            "export",
            "--zoo",
            "ssd_512_resnet50_v1_coco",
            "--out",
            str(tmp_path / "m"),
            "--weights-dir",
            str(tmp_path / "weights"),
        ],
        env,
    )
    assert result.returncode == 1
    expected = tmp_path / "weights" / "ssd_512_resnet50_v1_coco-c4835162.params"
    assert f"expected {expected}" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_of_an_unknown_network_is_refused(tmp_path: Path) -> None:
    result = run(
        ["export", "--zoo", "ssd_300_nothing", "--out", str(tmp_path / "m")], dict(os.environ)
    )
    assert result.returncode == 1
    assert "not a GluonCV model-zoo network" in result.stderr


def test_healthcheck_command_follows_the_server(server: ServerProcess) -> None:
    env = dict(os.environ, REST_PORT=str(server.port), REST_HOST="127.0.0.1")
    assert run(["healthcheck"], env, timeout=30).returncode == 0
    assert run(["healthcheck", "--path", "/ready"], env, timeout=30).returncode == 0
    assert server.stop() == 0
    result = run(["healthcheck"], env, timeout=30)
    assert result.returncode == 1
    assert "unhealthy" in result.stderr


def test_export_random_init_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    prefix = tmp_path / "untrained" / "ssd"
    args = ["export", "--zoo", "ssd_300_mobilenet0.25_custom", "--random-init", "--out"]
    result = run([*args, str(prefix), "--classes", "a,b,c"], dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert "RANDOM weights" in result.stderr and "RANDOM weights" in result.stdout
    assert (tmp_path / "untrained" / "synset.txt").read_text() == "a\nb\nc\n"
    detector = load_detectors(prefix, 0, 300, DeviceSpec(), 2)[0]
    outputs = detector.forward([prepare(encode_jpeg(scene(s)), 300, 10**8).tensor for s in (1, 2)])
    # Calibrated random weights: finite outputs that depend on the input.
    assert all(np.isfinite(o.scores).all() and np.isfinite(o.boxes).all() for o in outputs)
    assert not np.allclose(outputs[0].scores, outputs[1].scores)
    detector.close()


def test_the_server_needs_no_training_library() -> None:
    """The runtime image has no Pillow, GluonCV or matplotlib: `predictor` must start without."""
    code = (
        "import sys, predictor.cli, predictor.data\n"
        "predictor.cli.build_parser()\n"
        "loaded = sorted({'PIL', 'gluoncv', 'matplotlib', 'skimage'} & set(sys.modules))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
