"""Fixtures shared by the suite: one exported model, real JPEGs, a real server.

The model is exported once per test session. Until a trained model ships in
models/, it is the small SSD architecture of the shipped model with calibrated
random weights: real MXNet, real checkpoint files, finite input-dependent
outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from predictor.config import DeviceSpec, Settings
from predictor.export import export_zoo
from predictor.imaging import ImageBGR
from predictor.model import Detector, load_detectors

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
SMALL_NETWORK = "ssd_300_mobilenet0.25_custom"
SMALL_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "circle", "square", "triangle")
SMALL_EDGE = 300
MAX_BATCH = 8


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for files a person may want to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def small_model_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Checkpoint prefix of the small SSD, exported once for the whole session."""
    prefix = tmp_path_factory.mktemp("model") / "small_ssd"
    export_zoo(SMALL_NETWORK, prefix, random_init=True, classes=SMALL_CLASSES, seed=7)
    return prefix


@pytest.fixture(scope="session")
def small_settings(small_model_prefix: Path) -> Settings:
    """Settings for a loopback server on the small model."""
    return Settings(
        host="127.0.0.1",
        port=0,
        model_prefix=small_model_prefix,
        model_edge=SMALL_EDGE,
        devices=DeviceSpec(),
        batch_max_size=MAX_BATCH,
        batch_max_delay_ms=5.0,
        queue_max=64,
        preprocess_workers=2,
    )


@pytest.fixture(scope="session")
def detectors(small_settings: Settings) -> Iterator[list[Detector]]:
    """The small model loaded and warmed once; apps in tests share it."""
    loaded = load_detectors(
        small_settings.model_prefix,
        small_settings.model_epoch,
        small_settings.model_edge,
        small_settings.devices,
        MAX_BATCH,
    )
    yield loaded
    for detector in loaded:
        detector.close()


def settings_with(base: Settings, **changes: object) -> Settings:
    """A copy of ``base`` with some fields changed."""
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def scene(seed: int, width: int = 640, height: int = 480) -> ImageBGR:
    """A photo-like BGR image: gradient background and a few coloured shapes."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 200, 3)
    slope = rng.uniform(-0.15, 0.15, (3, 2))
    image = np.stack([base[c] + slope[c, 0] * xs + slope[c, 1] * ys for c in range(3)], axis=-1)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(min(width, height) // 10, min(width, height) // 3))
        if rng.random() < 0.5:
            cv2.circle(image, (cx, cy), size, colour, -1)
        else:
            cv2.rectangle(image, (cx - size, cy - size), (cx + size, cy + size), colour, -1)
    return np.asarray(image, dtype=np.uint8)


def encode_jpeg(
    image: npt.NDArray[np.uint8], quality: int = 90, progressive: bool = False
) -> bytes:
    """JPEG bytes of a BGR or grayscale image."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    if progressive:
        params += [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, buffer = cv2.imencode(".jpg", image, params)
    assert ok
    return buffer.tobytes()


@pytest.fixture(scope="session")
def make_jpeg() -> Callable[..., bytes]:
    """Factory: ``make_jpeg(seed, width, height)`` -> JPEG bytes of a scene."""

    def make(seed: int, width: int = 640, height: int = 480) -> bytes:
        return encode_jpeg(scene(seed, width, height))

    return make
