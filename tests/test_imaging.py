"""Decoding and preprocessing on real JPEG bytes."""

from __future__ import annotations

import struct

import cv2
import numpy as np
import pytest

from predictor.imaging import (
    MEAN_RGB,
    STD_RGB,
    ImageError,
    ImageTooLarge,
    decode,
    jpeg_size,
    prepare,
    reduction_factor,
    to_tensor,
)

from .conftest import encode_jpeg, scene

LIMIT = 50_000_000


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment holding only the orientation tag."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header's size, as a decompression bomb would."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]


@pytest.mark.parametrize("progressive", [False, True])
def test_jpeg_size_reads_the_frame_header(progressive: bool) -> None:
    data = encode_jpeg(scene(1, 123, 45), progressive=progressive)
    assert jpeg_size(data) == (123, 45)


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", b"BM" + b"\x00" * 50, b"\xff\xd8\xff\xda"],
)
def test_not_a_jpeg_is_refused_before_decoding(data: bytes) -> None:
    with pytest.raises(ImageError):
        jpeg_size(data)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = with_declared_size(encode_jpeg(scene(2, 64, 64)), 60000, 60000)
    assert jpeg_size(bomb) == (60000, 60000)
    with pytest.raises(ImageTooLarge, match="60000x60000"):
        prepare(bomb, 300, LIMIT)


def test_grayscale_and_progressive_decode_to_three_channels() -> None:
    gray = np.asarray(cv2.cvtColor(scene(3), cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    for data in (encode_jpeg(gray), encode_jpeg(scene(3), progressive=True)):
        prepared = prepare(data, 300, LIMIT)
        assert prepared.tensor.shape == (3, 300, 300)
        assert (prepared.width, prepared.height) == (640, 480)


@pytest.mark.parametrize(("orientation", "swapped"), [(1, False), (3, False), (6, True), (8, True)])
def test_exif_orientation_gives_the_displayed_size(orientation: int, swapped: bool) -> None:
    for width, height in ((640, 480), (4000, 1000)):  # the second is decoded reduced
        data = with_exif_orientation(encode_jpeg(scene(4, width, height)), orientation)
        decoded = decode(data, 300, LIMIT)
        expected = (height, width) if swapped else (width, height)
        assert (decoded.width, decoded.height) == expected
        # The pixels are rotated too, so boxes land on what a viewer shows.
        assert (decoded.pixels.shape[1] > decoded.pixels.shape[0]) == (expected[0] > expected[1])


def test_exif_rotation_turns_the_pixels() -> None:
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :100] = 255  # white left half
    rotated = decode(with_exif_orientation(encode_jpeg(image, 100), 6), 300, LIMIT)
    # Orientation 6: the stored image is shown turned 90 degrees clockwise,
    # so the white left half becomes the top half.
    top = rotated.pixels[:90].mean()
    bottom = rotated.pixels[110:].mean()
    assert top > 200 > 50 > bottom


def test_large_photos_are_decoded_reduced_with_their_true_size() -> None:
    assert reduction_factor(4000, 3000, 300) == 8
    assert reduction_factor(1000, 700, 300) == 2
    assert reduction_factor(599, 4000, 300) == 1
    photo = scene(5, 4000, 3000)
    data = encode_jpeg(photo)
    decoded = decode(data, 300, LIMIT)
    assert decoded.pixels.shape == (375, 500, 3)
    assert (decoded.width, decoded.height) == (4000, 3000)
    reduced = to_tensor(decoded.pixels, 300)
    full_pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    full = to_tensor(np.asarray(full_pixels, dtype=np.uint8), 300)
    # What the network sees barely changes (normalised units; one grey level is ~0.017).
    assert float(np.abs(reduced - full).mean()) < 0.05


def test_tensor_is_normalised_rgb_in_channel_first_order() -> None:
    blue, green, red = 10, 128, 250
    image = np.empty((50, 80, 3), np.uint8)
    image[:] = (blue, green, red)
    tensor = to_tensor(image, 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.float32
    for channel, value in enumerate((red, green, blue)):
        expected = (value / 255.0 - MEAN_RGB[channel]) / STD_RGB[channel]
        assert np.allclose(tensor[channel], expected, atol=1e-5)


@pytest.mark.parametrize(("width", "height"), [(1, 1), (1, 2000), (2000, 1)])
def test_extreme_shapes_still_preprocess(width: int, height: int) -> None:
    prepared = prepare(encode_jpeg(np.full((height, width, 3), 90, np.uint8)), 300, LIMIT)
    assert (prepared.width, prepared.height) == (width, height)
    assert np.isfinite(prepared.tensor).all()


def test_truncated_scan_data_is_an_error_or_a_partial_image_never_a_crash() -> None:
    data = encode_jpeg(scene(6))
    for cut in range(2, len(data), max(1, len(data) // 40)):
        try:
            prepared = prepare(data[:cut], 300, LIMIT)
        except ImageError:
            continue
        assert prepared.tensor.shape == (3, 300, 300)
