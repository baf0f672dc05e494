"""Image dimensions from file headers, so loading a dataset does not decode every image."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import cv2

from predictor.data.errors import DatasetError
from predictor.errors import ImageError
from predictor.runtime.imaging import jpeg_size

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG frame header follows the APPn segments (EXIF is at most 64 KiB).
_JPEG_HEADER_BYTES = 1 << 18


def is_image_file(path: Path) -> bool:
    """True if the file name has one of the image extensions we read."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def read_image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file.

    PNG and JPEG sizes come from the header; other formats are decoded with OpenCV.
    Raises DatasetError if the file is missing or unreadable.
    """
    try:
        with path.open("rb") as stream:
            head = stream.read(len(_PNG_SIGNATURE))
            if head == _PNG_SIGNATURE:
                size = _png_size(stream)
            elif head[:2] == b"\xff\xd8":
                size = _jpeg_size(head + stream.read(_JPEG_HEADER_BYTES))
            else:
                size = None
    except FileNotFoundError:
        raise DatasetError(path, "missing image file") from None
    except OSError as exc:
        raise DatasetError(path, f"cannot read image: {exc.strerror}") from None
    if size is None:
        decoded = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if decoded is None:
            raise DatasetError(path, "not a readable image")
        size = (int(decoded.shape[1]), int(decoded.shape[0]))
    if size[0] <= 0 or size[1] <= 0:
        raise DatasetError(path, f"image header gives an empty size {size[0]}x{size[1]}")
    return size


def _png_size(stream: BinaryIO) -> tuple[int, int] | None:
    chunk = stream.read(16)
    if len(chunk) < 16 or chunk[4:8] != b"IHDR":
        return None
    width, height = struct.unpack(">II", chunk[8:16])
    return int(width), int(height)


def _jpeg_size(start: bytes) -> tuple[int, int] | None:
    try:
        return jpeg_size(start)
    except ImageError:
        return None  # an unusual or very long header: OpenCV decodes the file instead
