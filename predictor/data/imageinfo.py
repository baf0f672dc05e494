"""Image dimensions from file headers, so loading a dataset does not decode every image."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

import cv2

from predictor.data.errors import DatasetError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}


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
                stream.seek(2)
                size = _jpeg_size(stream)
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


def _jpeg_size(stream: BinaryIO) -> tuple[int, int] | None:
    while True:
        byte = stream.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            continue
        marker = stream.read(1)
        # Any number of 0xFF fill bytes may precede a marker.
        while marker == b"\xff":
            marker = stream.read(1)
        if not marker:
            return None
        code = marker[0]
        if code in _JPEG_STANDALONE or code == 0x00:
            continue
        length_bytes = stream.read(2)
        if len(length_bytes) < 2:
            return None
        (length,) = struct.unpack(">H", length_bytes)
        if code in _JPEG_SOF_MARKERS:
            frame = stream.read(5)
            if len(frame) < 5:
                return None
            height, width = struct.unpack(">HH", frame[1:5])
            # Height 0 means "defined later by a DNL marker": let OpenCV decode instead.
            return (int(width), int(height)) if height else None
        if code == 0xDA:
            # Entropy-coded data follows; a baseline file has its frame header before this.
            return None
        stream.seek(length - 2, 1)
