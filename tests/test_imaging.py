"""Decoding and preprocessing on real JPEG bytes."""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from predictor.errors import ImageError, ImageTooLarge
from predictor.runtime.imaging import (
    MAX_SCANS,
    MEAN_RGB,
    STD_RGB,
    decode,
    decode_full,
    jpeg_header,
    jpeg_size,
    prepare,
    reduction_factor,
    to_tensor,
)
from tests.support.jpegs import (
    extended_jpeg_12bit,
    lossless_jpeg,
    with_declared_size,
    with_exif_orientation,
)

from .conftest import encode_jpeg, scene

LIMIT = 50_000_000


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


# ------------------------------------------------------------------ unusual real JPEGs


def blocks_rgb() -> npt.NDArray[np.uint8]:
    """A 64 x 48 RGB picture of flat colour blocks (no edges inside a JPEG block)."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[:, :32] = (200, 30, 30)
    rgb[:, 32:] = (20, 180, 90)
    rgb[8:24, 8:24] = (250, 250, 10)
    rgb[24:48, 40:64] = (40, 40, 230)
    return rgb


def assert_close_bgr(pixels: npt.NDArray[np.uint8], rgb: npt.NDArray[np.uint8], tol: int) -> None:
    assert pixels.shape == rgb.shape
    error = np.abs(pixels.astype(int) - rgb[:, :, ::-1].astype(int))
    assert error.max() <= tol, error.max()


def test_cmyk_jpeg_decodes_to_the_right_colours() -> None:
    rgb = blocks_rgb()
    buffer = io.BytesIO()
    # Pillow writes Adobe-inverted CMYK with an APP14 marker, as Photoshop does.
    Image.fromarray(rgb).convert("CMYK").save(buffer, "JPEG", quality=95)
    data = buffer.getvalue()
    header = jpeg_header(data)
    assert (header.components, header.adobe_transform) == (4, 0)
    decoded = decode(data, 300, LIMIT)
    assert_close_bgr(decoded.pixels, rgb, tol=8)


@pytest.mark.parametrize("precision", [12, 16])
def test_lossless_high_precision_jpeg_decodes_exactly_scaled_to_8_bits(precision: int) -> None:
    rgb = blocks_rgb()
    wide = rgb.astype(np.uint32) * ((1 << precision) - 1) // 255
    data = lossless_jpeg(wide.astype(np.uint16), precision)
    header = jpeg_header(data)
    assert (header.precision, header.lossless) == (precision, True)
    decoded = decode(data, 300, LIMIT)
    assert (decoded.width, decoded.height) == (64, 48)
    assert_close_bgr(decoded.pixels, rgb, tol=1)
    assert decode_full(data, LIMIT).shape == (48, 64, 3)


def test_16_bit_grayscale_jpeg_decodes_to_three_equal_channels() -> None:
    gray = (np.arange(48 * 64).reshape(48, 64) * 21).astype(np.uint16)
    decoded = decode(lossless_jpeg(gray, 16), 300, LIMIT)
    assert decoded.pixels.shape == (48, 64, 3)
    expected = (gray.astype(np.uint32) * 255 + 32767) // 65535
    for channel in range(3):
        assert np.array_equal(decoded.pixels[:, :, channel], expected)


def test_12_bit_lossy_jpeg_decodes_to_the_right_colours() -> None:
    rgb = blocks_rgb()
    data = extended_jpeg_12bit(rgb.astype(np.uint16) * 16)
    header = jpeg_header(data)
    assert (header.precision, header.lossless, header.jfif) == (12, False, True)
    prepared = prepare(data, 300, LIMIT)
    assert (prepared.width, prepared.height) == (64, 48)
    assert_close_bgr(decode(data, 300, LIMIT).pixels, rgb, tol=2)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_rule_is_the_same_for_every_decoder(orientation: int) -> None:
    """Boxes are in the displayed image: the stored pixels turned as EXIF says.

    OpenCV applies the tag to 8-bit JPEGs; the 12/16-bit path must turn its
    pixels exactly the same way, for all eight orientations.
    """
    rgb = blocks_rgb()
    # Quality 100 without chroma subsampling: the 8-bit file is nearly exact.
    params = [
        cv2.IMWRITE_JPEG_QUALITY,
        100,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
        cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444,
    ]
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), params)
    assert ok
    eight = with_exif_orientation(encoded.tobytes(), orientation)
    sixteen = with_exif_orientation(lossless_jpeg(rgb.astype(np.uint16) * 257, 16), orientation)
    shown_by_opencv = decode(eight, 300, LIMIT)
    shown_by_libjpeg = decode(sixteen, 300, LIMIT)
    assert jpeg_header(sixteen).orientation == orientation
    assert (shown_by_opencv.width, shown_by_opencv.height) == (
        shown_by_libjpeg.width,
        shown_by_libjpeg.height,
    )
    assert shown_by_opencv.pixels.shape == shown_by_libjpeg.pixels.shape
    difference = np.abs(shown_by_opencv.pixels.astype(int) - shown_by_libjpeg.pixels.astype(int))
    assert np.median(difference) <= 2 and np.percentile(difference, 95) <= 12


def test_high_precision_bomb_is_refused_before_decoding() -> None:
    bomb = with_declared_size(lossless_jpeg(np.zeros((8, 8), np.uint16), 16), 60000, 60000)
    with pytest.raises(ImageTooLarge, match="60000x60000"):
        decode(bomb, 300, LIMIT)


def test_truncated_high_precision_jpeg_is_an_error() -> None:
    data = lossless_jpeg(blocks_rgb().astype(np.uint16) * 257, 16)
    for cut in (30, 120, len(data) // 2, len(data) - 3):
        try:
            decode(data[:cut], 300, LIMIT)
        except ImageError:
            continue


def test_four_component_high_precision_jpeg_is_refused_clearly() -> None:
    data = lossless_jpeg(np.zeros((8, 8, 3), np.uint16), 16)
    sof = data.index(b"\xff\xc3")
    patched = data[: sof + 9] + b"\x04" + data[sof + 10 :]  # claims 4 components
    with pytest.raises(ImageError, match="4 colour components"):
        decode(patched, 300, LIMIT)


def test_a_jpeg_with_too_many_scans_is_refused_from_its_markers() -> None:
    data = encode_jpeg(scene(7, 64, 48), progressive=True)
    scans = data.count(b"\xff\xda")
    assert 1 < scans < 50, "a real progressive file has a handful of scans"
    prepare(data, 300, LIMIT)
    # Repeat the last scan (marker, header and data) until there are too many.
    last = data.rindex(b"\xff\xda")
    bloated = data[:last] + data[last:-2] * (MAX_SCANS + 1 - scans + 1) + b"\xff\xd9"
    started = time.monotonic()
    with pytest.raises(ImageError, match=f"at most {MAX_SCANS}"):
        prepare(bloated, 300, LIMIT)
    assert time.monotonic() - started < 5, "refused from the markers, not by decoding"


def test_a_sequential_jpeg_is_not_scanned_for_markers_and_its_extra_scans_cost_nothing() -> None:
    """Only progressive files are counted: a sequential scan's cost is bounded by its bytes."""
    data = encode_jpeg(scene(7, 640, 480))
    assert not jpeg_header(data).progressive
    assert jpeg_header(encode_jpeg(scene(7, 64, 48), progressive=True)).progressive
    last = data.rindex(b"\xff\xda")
    bloated = data[:last] + data[last:-2] * (MAX_SCANS + 2) + b"\xff\xd9"
    started = time.monotonic()
    prepared = prepare(bloated, 300, LIMIT)
    assert time.monotonic() - started < 5, "the decoder stops after the frame's one scan"
    assert prepared.tensor.shape == (3, 300, 300)


@pytest.mark.parametrize("extension", [".png", ".bmp", ".webp", ".tiff"])
def test_other_image_formats_are_not_jpegs(extension: str) -> None:
    ok, encoded = cv2.imencode(extension, scene(8, 64, 48))
    assert ok
    with pytest.raises(ImageError, match="not a JPEG"):
        prepare(encoded.tobytes(), 300, LIMIT)


def test_gif_is_not_a_jpeg() -> None:
    buffer = io.BytesIO()
    Image.fromarray(blocks_rgb()).save(buffer, "GIF")
    with pytest.raises(ImageError, match="not a JPEG"):
        prepare(buffer.getvalue(), 300, LIMIT)


@pytest.mark.parametrize(("width", "height"), [(1, 10000), (10000, 1)])
def test_one_pixel_wide_strips_preprocess(width: int, height: int) -> None:
    prepared = prepare(encode_jpeg(np.full((height, width, 3), 90, np.uint8)), 300, LIMIT)
    assert (prepared.width, prepared.height) == (width, height)
    assert np.isfinite(prepared.tensor).all()
