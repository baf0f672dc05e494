"""Image decoding and preprocessing: JPEG bytes in, a network-ready tensor out.

Decoding follows what a photo viewer shows: OpenCV applies the EXIF
orientation tag, so boxes are reported in the coordinates of the image as it
is displayed (width and height swapped for 90-degree orientations).

Sizes are checked from the JPEG header before anything is allocated, so a
"decompression bomb" costs a few hundred bytes of parsing, not gigabytes.

Large photos are decoded at 1/2, 1/4 or 1/8 scale inside libjpeg's DCT when the
reduced image is still at least the network's input edge on both sides: the
network never sees more pixels than that, and decoding is the most expensive
step of preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

# ImageNet statistics that GluonCV's SSD networks are trained with (RGB, 0..1).
MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)

# Per-channel constants in BGR order (OpenCV's) on the 0..255 scale.
_MEAN_BGR_255 = np.array(MEAN_RGB[::-1], dtype=np.float32) * 255.0
_INV_STD_BGR_255 = 1.0 / (np.array(STD_RGB[::-1], dtype=np.float32) * 255.0)

_REDUCED_READ_FLAGS = {
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}

# Start-of-frame markers that carry the image size (baseline, progressive,
# lossless, arithmetic-coded): C0-CF except C4 (DHT), C8 (JPG) and CC (DAC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers with no length field.
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})

Tensor = npt.NDArray[np.float32]
ImageBGR = npt.NDArray[np.uint8]


class ImageError(ValueError):
    """The bytes are not an image this service can use (answered with 400)."""


class ImageTooLarge(ImageError):
    """The image has more pixels than the configured limit (answered with 413)."""


@dataclass(frozen=True)
class PreparedImage:
    """A network input plus the size of the original (displayed) image."""

    tensor: Tensor  # (3, edge, edge) float32, normalised RGB
    width: int
    height: int


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from a JPEG's frame header, before decoding.

    Raises `ImageError` when the bytes are not a JPEG stream or the header is
    truncated before the frame size.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ImageError("the body is not a JPEG image (no JPEG start-of-image marker)")
    pos = 2
    end = len(data)
    while pos < end:
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG header (expected a marker)")
        # Any number of 0xFF fill bytes may precede a marker code.
        while pos < end and data[pos] == 0xFF:
            pos += 1
        if pos >= end:
            break
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE_MARKERS:
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame
            raise ImageError("corrupt JPEG header (no frame size before the image data)")
        if pos + 2 > end:
            break
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise ImageError("corrupt JPEG header (bad segment length)")
        if marker in _SOF_MARKERS:
            if pos + 7 > end:
                break
            height = (data[pos + 3] << 8) | data[pos + 4]
            width = (data[pos + 5] << 8) | data[pos + 6]
            if width == 0 or height == 0:
                raise ImageError("JPEG header declares an empty image")
            return width, height
        pos += length
    raise ImageError("truncated JPEG (the header ends before the frame size)")


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels (maybe reduced) and the full-resolution displayed size."""

    pixels: ImageBGR
    width: int
    height: int


def decode(data: bytes, edge: int, max_pixels: int, *, require_jpeg: bool = True) -> DecodedImage:
    """Decode to BGR, reduced in the DCT where that loses nothing the network sees.

    With ``require_jpeg=False`` other formats OpenCV reads are accepted too (for
    the command line), decoded at full resolution.
    """
    if not require_jpeg and not data.startswith(b"\xff\xd8"):
        pixels = _imdecode(data, cv2.IMREAD_COLOR)
        height, width = pixels.shape[:2]
        _check_pixels(width, height, max_pixels)
        return DecodedImage(pixels, width, height)
    width, height = jpeg_size(data)
    _check_pixels(width, height, max_pixels)
    factor = reduction_factor(width, height, edge)
    pixels = _imdecode(data, _REDUCED_READ_FLAGS.get(factor, cv2.IMREAD_COLOR))
    # EXIF orientations of 90 or 270 degrees swap the sides relative to the header.
    if (pixels.shape[1], pixels.shape[0]) != (-(-width // factor), -(-height // factor)):
        width, height = height, width
    return DecodedImage(pixels, width, height)


def decode_full(data: bytes, max_pixels: int) -> ImageBGR:
    """Decode a JPEG at full resolution, EXIF orientation applied, to draw on.

    The same header checks as `decode`: `ImageError` for bytes that are not a
    JPEG, `ImageTooLarge` over ``max_pixels``, before any pixel is allocated.
    """
    width, height = jpeg_size(data)
    _check_pixels(width, height, max_pixels)
    return _imdecode(data, cv2.IMREAD_COLOR)


def reduction_factor(width: int, height: int, edge: int) -> int:
    """Largest DCT scale-down (1, 2, 4 or 8) that keeps both sides >= ``edge``."""
    for factor in (8, 4, 2):
        if min(width, height) // factor >= edge:
            return factor
    return 1


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )


def _imdecode(data: bytes, flags: int) -> ImageBGR:
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flags)
    if pixels is None or pixels.size == 0:
        raise ImageError("the image could not be decoded (corrupt or unsupported data)")
    return np.ascontiguousarray(pixels)


def to_tensor(image: ImageBGR, edge: int, out: Tensor | None = None) -> Tensor:
    """Resize to ``edge`` x ``edge`` and normalise into a (3, edge, edge) RGB float32 tensor.

    The SSD networks are trained on square inputs stretched from the whole
    image, so the aspect ratio is not kept; boxes are scaled back per axis.
    """
    height, width = image.shape[:2]
    shrinking = width > edge or height > edge
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (edge, edge), interpolation=interpolation)
    if out is None:
        out = np.empty((3, edge, edge), dtype=np.float32)
    for rgb_channel in range(3):
        bgr_channel = 2 - rgb_channel
        plane = out[rgb_channel]
        np.subtract(resized[:, :, bgr_channel], _MEAN_BGR_255[bgr_channel], out=plane)
        np.multiply(plane, _INV_STD_BGR_255[bgr_channel], out=plane)
    return out


def prepare(data: bytes, edge: int, max_pixels: int, *, require_jpeg: bool = True) -> PreparedImage:
    """Decode and preprocess one image; raise `ImageError` for anything unusable."""
    decoded = decode(data, edge, max_pixels, require_jpeg=require_jpeg)
    return PreparedImage(to_tensor(decoded.pixels, edge), decoded.width, decoded.height)
