"""The checkpoint's files and its preprocessing declaration; images prepared as declared."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from predictor.checkpoint import (
    Checkpoint,
    Preprocessing,
    read_preprocessing,
    write_class_names,
)
from predictor.detections import RawDetections, to_detections
from predictor.errors import CheckpointError
from predictor.runtime.imaging import prepare, preprocess


def test_the_layout_is_spelled_in_one_place(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "m" / "net", 12)
    assert checkpoint.symbol_path == tmp_path / "m" / "net-symbol.json"
    assert checkpoint.params_path == tmp_path / "m" / "net-0012.params"
    assert checkpoint.synset_path == tmp_path / "m" / "synset.txt"
    assert checkpoint.preprocess_path == tmp_path / "m" / "net-preprocess.json"
    with pytest.raises(CheckpointError, match=r"model file not found: .*net-symbol\.json"):
        checkpoint.require()


def test_without_a_declaration_a_checkpoint_gets_gluoncvs_transform(tmp_path: Path) -> None:
    declared, found = Checkpoint(tmp_path / "net").preprocessing(384)
    assert not found
    assert declared == Preprocessing.gluoncv(384)
    assert (declared.interpolation, declared.reduced_decoding) == ("gluoncv", False)


def test_a_declaration_round_trips_and_int8_falls_back_to_its_original(tmp_path: Path) -> None:
    original = Checkpoint(tmp_path / "net")
    declared = replace(
        Preprocessing.predictor(320), resize="letterbox", pad_value=114, channel_order="BGR"
    )
    original.write_preprocessing(declared)
    assert read_preprocessing(original.preprocess_path) == declared
    quantized = Checkpoint(tmp_path / "net-int8", fallback_preprocess=original.preprocess_path)
    assert quantized.preprocessing() == (declared, True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "expected a JSON object"),
        ('{"size": 3}', "unknown field 'size'"),
        ('{"resize": "crop"}', "resize must be one of 'stretch', 'letterbox', not 'crop'"),
        ('{"width": 0}', "width must be a whole number from 8 to 8192"),
        ('{"width": 300.5}', "width must be a whole number"),
        ('{"pixel_scale": 2}', "pixel_scale must be 1 or 255"),
        ('{"mean": [1, 2]}', "mean must be a list of 3 numbers"),
        ('{"std": [1, 0, 1]}', "std values must be positive"),
        ('{"pad_value": 300}', "pad_value must be a whole number from 0 to 255"),
        ('{"reduced_decoding": "yes"}', "reduced_decoding must be true or false"),
        ("{not json", "is not valid JSON"),
    ],
)
def test_a_bad_declaration_names_the_file_and_the_field(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "net-preprocess.json"
    path.write_text(content)
    with pytest.raises(CheckpointError) as raised:
        read_preprocessing(path)
    assert str(path) in str(raised.value)
    assert message in str(raised.value)


def test_class_names_are_not_silently_replaced(tmp_path: Path) -> None:
    synset = tmp_path / "synset.txt"
    write_class_names(synset, ["cat", "dog"])
    write_class_names(synset, ["cat", "dog"])  # the same list: nothing to do
    with pytest.raises(CheckpointError, match="already lists other classes"):
        write_class_names(synset, ["apple"])
    assert synset.read_text() == "cat\ndog\n"


# ------------------------------------------------------------------ preprocessing as declared


def jpeg(pixels: np.ndarray) -> bytes:  # type: ignore[type-arg]
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("anchor", ["center", "top-left"])
def test_letterbox_keeps_the_aspect_and_boxes_map_back(anchor: str) -> None:
    # A 400x200 photo with a white block at x 100..200, y 50..150 (BGR).
    photo = np.zeros((200, 400, 3), dtype=np.uint8)
    photo[50:150, 100:200] = 255
    declared = Preprocessing(
        width=200,
        height=200,
        resize="letterbox",
        letterbox_anchor=anchor,  # type: ignore[arg-type]
        pad_value=0,
        pixel_scale=255,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
    )
    tensor, placement = preprocess(photo, declared)
    top = 50 if anchor == "center" else 0
    # Scaled by 1/2 into a 200x100 band: the block is x 50..100, y top+25..top+75.
    assert tensor.shape == (3, 200, 200)
    assert tensor[0, top + 30, 60] == pytest.approx(255.0)
    assert tensor[0, top - 1 if top else 150, 60] == 0.0, "padding"
    raw = RawDetections(
        np.array([0.0], np.float32),
        np.array([0.9], np.float32),
        np.array([[50.0, top + 25.0, 100.0, top + 75.0]], np.float32),
    )
    (found,) = to_detections(raw, placement, ["block"], 0.5)
    assert (found.x, found.y, found.width, found.height) == (100, 50, 100, 100)


def test_channel_order_layout_and_scale_follow_the_declaration() -> None:
    photo = np.zeros((64, 64, 3), dtype=np.uint8)
    photo[:, :] = (10, 20, 30)  # B, G, R
    declared = Preprocessing(
        width=32,
        height=32,
        pixel_scale=255,
        mean=(1.0, 2.0, 3.0),  # R, G, B
        std=(1.0, 2.0, 4.0),
        channel_order="BGR",
        layout="NHWC",
    )
    tensor, _ = preprocess(photo, declared)
    assert tensor.shape == (32, 32, 3)
    # BGR input: channel 0 is blue, with blue's mean and std (the last of the RGB lists).
    np.testing.assert_allclose(tensor[5, 5], [(10 - 3) / 4, (20 - 2) / 2, (30 - 1) / 1])
    rgb01 = replace(declared, channel_order="RGB", layout="NCHW", pixel_scale=1.0)
    tensor, _ = preprocess(photo, rgb01)
    np.testing.assert_allclose(
        tensor[:, 5, 5], [(30 / 255 - 1) / 1, (20 / 255 - 2) / 2, (10 / 255 - 3) / 4], rtol=1e-6
    )


def test_reduced_decoding_only_where_the_checkpoint_allows_it() -> None:
    photo = np.random.default_rng(7).integers(0, 256, (1600, 2400, 3), dtype=np.uint8)
    data = jpeg(photo)
    allowed = replace(Preprocessing.gluoncv(300), reduced_decoding=True)
    full = prepare(data, Preprocessing.gluoncv(300), 10**8)
    again = prepare(data, Preprocessing.gluoncv(300), 10**8)
    reduced = prepare(data, allowed, 10**8)
    # Decoded at 1/4 inside libjpeg, the pixels differ from full decoding + area resize;
    # without the permission they never do.
    np.testing.assert_array_equal(full.tensor, again.tensor)
    assert not np.array_equal(full.tensor, reduced.tensor)
    # Both map back to the full photo, whatever was decoded.
    for image in (full, reduced):
        assert (image.width, image.height) == (2400, 1600)
        assert image.placement.scale_x == pytest.approx(2400 / 300)
    assert json.dumps(Preprocessing.gluoncv(300).to_json())  # serialisable as written
