"""A GluonCV checkpoint through `/predict` gives what GluonCV's own pipeline gives.

The reference is GluonCV's code path itself, not our reading of it:
``mx.image.imdecode`` at full size, ``SSDDefaultValTransform`` (its resize
picks cubic, area or bilinear by MXNet's ``interp=9``), and the exported
network run as a plain ``SymbolBlock``. Boxes come back to the original image
the way GluonCV's demos scale them. The photos are real (matplotlib's
``grace_hopper.jpg``) at sizes that make the resize grow, shrink, and do
both; one carries an EXIF orientation, which both sides apply first (the
reference with Pillow's ``exif_transpose``), as documented.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import cv2
import matplotlib.cbook
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from predictor.checkpoint import Checkpoint, Preprocessing
from predictor.config import DeviceSpec, Settings
from predictor.detections import Detection, Placement, RawDetections, to_detections
from predictor.export import export_zoo
from predictor.http.app import create_app
from predictor.runtime.model import load_detectors
from tests.support.jpegs import with_exif_orientation

from .conftest import settings_with

ZOO_NETWORK = "ssd_512_mobilenet1.0_coco"
EDGE = 512
ORIENTATION_TAG = 0x0112
THRESHOLD = 0.05
# A detection this close to the threshold may fall on either side of it.
BORDER = 2e-3
# (width, height, EXIF orientation): both sides grow (cubic), both shrink (area),
# one of each (bilinear), a large photo, and a portrait stored on its side.
PHOTOS = {
    "grows": (320, 240, 1),
    "shrinks": (900, 700, 1),
    "mixed": (400, 900, 1),
    "large": (2100, 1400, 1),
    "exif-rotated": (1200, 800, 6),
}


@pytest.fixture(scope="module")
def zoo_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prefix = tmp_path_factory.mktemp("zoo") / ZOO_NETWORK
    export_zoo(ZOO_NETWORK, prefix, random_init=True, stream=io.StringIO())
    return prefix


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """Real photo JPEGs of the sizes above, one with an EXIF orientation tag."""
    path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    original = cv2.imread(str(path), cv2.IMREAD_COLOR)
    made = {}
    for name, (width, height, orientation) in PHOTOS.items():
        pixels = cv2.resize(original, (width, height), interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 92])
        assert ok
        made[name] = with_exif_orientation(encoded.tobytes(), orientation)
    return made


def gluoncv_detections(prefix: Path, jpeg: bytes, classes: list[str]) -> list[Detection]:
    """GluonCV's own pipeline, end to end, as its SSD demos run it."""
    from gluoncv.data.transforms.presets.ssd import SSDDefaultValTransform

    image = mx.image.imdecode(jpeg)  # RGB, HWC, uint8, at full size
    stored = Image.open(io.BytesIO(jpeg))
    orientation = stored.getexif().get(ORIENTATION_TAG, 1)
    if orientation != 1 and image.shape[1] == stored.width:
        # MXNet's decoder left the EXIF orientation out: apply it first, as documented.
        assert orientation == 6, "this test rotates the one orientation it uses"
        image = mx.nd.array(np.ascontiguousarray(np.rot90(image.asnumpy(), k=-1)), dtype="uint8")
    height, width = image.shape[:2]
    tensor, _ = SSDDefaultValTransform(EDGE, EDGE)(image, np.zeros((1, 5), dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checkpoint = Checkpoint(prefix)
        net = mx.gluon.SymbolBlock.imports(
            str(checkpoint.symbol_path), ["data"], str(checkpoint.params_path)
        )
    ids, scores, boxes = (output.asnumpy() for output in net(tensor.expand_dims(0)))
    raw = RawDetections(ids[0, :, 0], scores[0, :, 0], boxes[0])
    return to_detections(raw, Placement.stretched(width, height, EDGE, EDGE), classes, THRESHOLD)


def test_zoo_export_declares_gluoncvs_transform(zoo_prefix: Path) -> None:
    declared, found = Checkpoint(zoo_prefix).preprocessing()
    assert found
    assert declared == Preprocessing.gluoncv(EDGE)
    assert not declared.reduced_decoding


@pytest.mark.parametrize("photo", list(PHOTOS))
async def test_predict_equals_gluoncvs_own_pipeline(
    aiohttp_client: Any,
    zoo_prefix: Path,
    small_settings: Settings,
    photos: dict[str, bytes],
    photo: str,
) -> None:
    detectors = load_detectors(zoo_prefix, 0, None, DeviceSpec(), 1)
    settings = settings_with(small_settings, model_prefix=zoo_prefix, model_edge=None)
    client = await aiohttp_client(create_app(settings, detectors))
    jpeg = photos[photo]
    async with client.post(
        f"/predict?threshold={THRESHOLD}", data=jpeg, headers={"Content-Type": "image/jpeg"}
    ) as response:
        assert response.status == 200, await response.text()
        ours = [as_detection(d) for d in (await response.json())["prediction"]]
    reference = gluoncv_detections(zoo_prefix, jpeg, detectors[0].classes)
    assert len(reference) >= 3, "the random network finds something to compare"
    assert_same(ours, reference)
    assert_same(reference, ours)
    for detector in detectors:
        detector.close()


def as_detection(answer: dict[str, Any]) -> Detection:
    """A detection of the JSON contract."""
    return Detection(
        object_class=answer["objectClass"],
        probability=answer["probability"],
        x=answer["x"],
        y=answer["y"],
        width=answer["width"],
        height=answer["height"],
    )


def assert_same(found: list[Detection], expected: list[Detection]) -> None:
    """Every detection of ``expected`` clear of the threshold is in ``found``: 1e-3, 1 px."""
    for want in expected:
        if want.probability <= THRESHOLD + BORDER:
            continue
        matches = [
            got
            for got in found
            if got.object_class == want.object_class
            and abs(got.probability - want.probability) <= 1e-3
            and abs(got.x - want.x) <= 1
            and abs(got.y - want.y) <= 1
            and abs(got.x + got.width - want.x - want.width) <= 1
            and abs(got.y + got.height - want.y - want.height) <= 1
        ]
        assert matches, f"{want} has no match within 1e-3 and 1 px among {found[:5]}..."
