"""Fixtures shared by the suite: the shipped model, real JPEGs, a real server.

Every test that needs a network uses the small trained model committed in
models/ (loaded once per session), so tests can check what is detected, not
only the shape of the answer.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import numpy.typing as npt
import pytest

from predictor.config import SHIPPED_MODEL_PREFIX, DeviceSpec, Settings
from predictor.data import FixtureObject, SceneConfig, render_fixture, render_scene
from predictor.data.synth import Scene
from predictor.runtime.graph import fuse_for_cpu
from predictor.runtime.imaging import ImageBGR
from predictor.runtime.model import Detector, load_detectors

REPO_ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO_ROOT / "test-artifacts"
SMALL_CLASSES = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "circle", "square", "triangle")
SMALL_EDGE = 300
MAX_BATCH = 8


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Folder for files a person may want to look at after the run."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def small_model_prefix() -> Path:
    """Checkpoint prefix of the shipped model (SSD 300, digits and shapes)."""
    prefix = REPO_ROOT / SHIPPED_MODEL_PREFIX
    assert Path(f"{prefix}-symbol.json").is_file(), f"the shipped model {prefix} is missing"
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


# The classes of `fruit_prefix`: a second model for the several-models tests.
FRUIT_CLASSES = ["apple", "pear", "plum"]


@pytest.fixture(scope="session")
def fruit_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model: another network, other classes, GluonCV's preprocessing (random init)."""
    from predictor.export import export_zoo

    prefix = tmp_path_factory.mktemp("fruit") / "fruit"
    export_zoo(
        "ssd_300_mobilenet0.25_custom",
        prefix,
        random_init=True,
        classes=FRUIT_CLASSES,
        stream=io.StringIO(),
    )
    return prefix


def settings_with(base: Settings, **changes: object) -> Settings:
    """A copy of ``base`` with some fields changed."""
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def scene(seed: int, width: int = 640, height: int = 480) -> ImageBGR:
    """A BGR picture of 1-6 digits and shapes on a varied background, ``width`` x ``height``."""
    rendered = render_scene(np.random.default_rng(seed), SceneConfig(min_side=256, max_side=640))
    resized = cv2.resize(rendered.image, (width, height), interpolation=cv2.INTER_AREA)
    return np.asarray(resized, dtype=np.uint8)


def known_objects() -> Scene:
    """The original service's test picture: a printed 3, a filled circle and a hand-drawn 7.

    A 4:3 photo. The SSD stretches every image to a square, so in a 2:1 image a
    circle reaches the network as an upright ellipse, which is what a "0" looks
    like; at 4:3 the shapes keep their identity.
    """
    return render_fixture(
        [
            FixtureObject("3", (120, 220), 150, color=(20, 20, 20), style="font"),
            FixtureObject("circle", (330, 230), 140, color=(30, 60, 200), style="filled"),
            FixtureObject("7", (530, 240), 160, color=(120, 40, 10), style="hand"),
        ],
        size=(640, 480),
        seed=5,
        background=(235, 235, 225),
    )


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


def load_symbol(prefix: Path) -> mx.sym.Symbol:
    """The checkpoint's graph as written, no rewrite applied."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mx.sym.load(f"{prefix}-symbol.json")


def load_weights(prefix: Path) -> dict[str, mx.nd.NDArray]:
    """The checkpoint's weights by name, as the server loads them."""
    return {
        name.split(":", 1)[-1]: value for name, value in mx.nd.load(f"{prefix}-0000.params").items()
    }


def run_symbol(
    symbol: mx.sym.Symbol,
    prefix: Path,
    batch: npt.NDArray[np.float32],
    weights: dict[str, mx.nd.NDArray] | None = None,
) -> list[npt.NDArray[np.float32]]:
    """Outputs of ``symbol`` with the checkpoint's weights (or ``weights``), as the
    server runs it (CPU, fused)."""
    if weights is None:
        weights = load_weights(prefix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = mx.gluon.SymbolBlock(fuse_for_cpu(symbol, mx.cpu()), mx.sym.var("data"))
    net.collect_params().load_dict(weights, ctx=mx.cpu(), cast_dtype=True, dtype_source="saved")
    net.hybridize(static_alloc=True, static_shape=True)
    return [out.asnumpy() for out in net(mx.nd.array(batch))]
