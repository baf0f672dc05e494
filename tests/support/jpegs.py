"""Hand-made JPEG files that the usual encoders do not write.

OpenCV and Pillow write only 8-bit JPEGs; 12-bit (extended process, SOF1)
and 16-bit (lossless process, SOF3) files are written here from ITU-T T.81
directly: real streams, with fixed Huffman tables long enough for every
symbol, decodable by any conforming decoder.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import numpy.typing as npt

# Zig-zag order of the 64 coefficients of an 8x8 block (T.81 figure A.6).
_ZIGZAG = np.array(
    [
        0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5,
        12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6, 7, 14, 21, 28,
        35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
        58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
    ]
)  # fmt: skip


class _BitWriter:
    """Entropy-coded data: bits most significant first, 0xFF followed by a stuffed 0x00."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._acc = 0
        self._bits = 0

    def put(self, value: int, count: int) -> None:
        self._acc = (self._acc << count) | (value & ((1 << count) - 1))
        self._bits += count
        while self._bits >= 8:
            self._bits -= 8
            byte = (self._acc >> self._bits) & 0xFF
            self.data.append(byte)
            if byte == 0xFF:
                self.data.append(0)
        self._acc &= (1 << self._bits) - 1

    def finish(self) -> bytes:
        if self._bits:
            self.put((1 << (8 - self._bits)) - 1, 8 - self._bits)  # pad with 1-bits
        return bytes(self.data)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _huffman_table(table_class: int, table_id: int, symbols: list[int], length: int) -> bytes:
    """DHT payload giving every symbol a code of the same ``length`` bits."""
    counts = [0] * 16
    counts[length - 1] = len(symbols)
    return bytes([(table_class << 4) | table_id, *counts, *symbols])


def _magnitude(value: int) -> tuple[int, int]:
    """T.81's (size category, extra bits) for a difference or coefficient."""
    size = abs(value).bit_length()
    return size, value if value >= 0 else value + (1 << size) - 1


def lossless_jpeg(samples: npt.NDArray[np.integer[Any]], precision: int) -> bytes:
    """A lossless (SOF3) JPEG of ``samples`` (H, W) or (H, W, 3), ``precision`` bits.

    Three components are stored as RGB without a colour transform (no JFIF
    marker), as lossless encoders do.
    """
    pixels = samples[:, :, None] if samples.ndim == 2 else samples
    height, width, components = pixels.shape
    frame = struct.pack(">BHHB", precision, height, width, components) + b"".join(
        bytes([i + 1, 0x11, 0]) for i in range(components)
    )
    # Difference categories 0..16, all with 5-bit codes.
    out = b"\xff\xd8" + _segment(0xC3, frame)
    out += _segment(0xC4, _huffman_table(0, 0, list(range(17)), 5))
    scan = bytes([components]) + b"".join(bytes([i + 1, 0]) for i in range(components))
    out += _segment(0xDA, scan + bytes([1, 0, 0]))  # predictor 1 (left), no point transform
    writer = _BitWriter()
    values = pixels.astype(np.int64)
    for y in range(height):
        for x in range(width):
            for k in range(components):
                if x == 0 and y == 0:
                    predicted = 1 << (precision - 1)
                elif y == 0 or x > 0:
                    predicted = int(values[y, x - 1, k])
                else:
                    predicted = int(values[y - 1, x, k])
                diff = (int(values[y, x, k]) - predicted) % 65536
                if diff >= 32768:
                    diff -= 65536
                if diff == -32768:
                    writer.put(16, 5)  # category 16 has no extra bits
                    continue
                size, bits = _magnitude(diff)
                writer.put(size, 5)
                if size:
                    writer.put(bits, size)
    return out + writer.finish() + b"\xff\xd9"


def _dct_matrix() -> npt.NDArray[np.float64]:
    k = np.arange(8)
    matrix = np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16) / 2
    matrix[0] /= np.sqrt(2)
    return np.asarray(matrix, dtype=np.float64)


def extended_jpeg_12bit(rgb: npt.NDArray[np.integer[Any]], quantizer: int = 2) -> bytes:
    """A 12-bit lossy (SOF1, extended sequential Huffman) JFIF JPEG of 12-bit ``rgb``.

    (H, W, 3) with H and W multiples of 8; YCbCr without subsampling, every
    coefficient quantised by ``quantizer``.
    """
    height, width, _ = rgb.shape
    assert height % 8 == 0 and width % 8 == 0
    r, g, b = (rgb[:, :, i].astype(np.float64) for i in range(3))
    planes = [
        0.299 * r + 0.587 * g + 0.114 * b,
        -0.168736 * r - 0.331264 * g + 0.5 * b + 2048,
        0.5 * r - 0.418688 * g - 0.081312 * b + 2048,
    ]
    jfif = b"JFIF\x00" + bytes([1, 1, 0]) + struct.pack(">HH", 1, 1) + bytes([0, 0])
    frame = struct.pack(">BHHB", 12, height, width, 3) + b"".join(
        bytes([i + 1, 0x11, 0]) for i in range(3)
    )
    dc_symbols = list(range(16))
    ac_symbols = [0x00, 0xF0] + [(run << 4) | size for run in range(16) for size in range(1, 15)]
    out = b"\xff\xd8" + _segment(0xE0, jfif)
    out += _segment(0xDB, bytes([0]) + bytes([quantizer] * 64))
    out += _segment(0xC1, frame)
    out += _segment(0xC4, _huffman_table(0, 0, dc_symbols, 5))
    out += _segment(0xC4, _huffman_table(1, 0, ac_symbols, 8))
    out += _segment(0xDA, bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0]))
    dc_code = {symbol: index for index, symbol in enumerate(dc_symbols)}
    ac_code = {symbol: index for index, symbol in enumerate(ac_symbols)}
    dct = _dct_matrix()
    writer = _BitWriter()
    previous = [0, 0, 0]
    for by in range(0, height, 8):
        for bx in range(0, width, 8):
            for k, plane in enumerate(planes):
                block = plane[by : by + 8, bx : bx + 8] - 2048
                coefficients = np.rint(dct @ block @ dct.T / quantizer).astype(int).ravel()
                zigzag = coefficients[_ZIGZAG]
                size, bits = _magnitude(int(zigzag[0]) - previous[k])
                previous[k] = int(zigzag[0])
                writer.put(dc_code[size], 5)
                if size:
                    writer.put(bits, size)
                run = 0
                for value in (int(v) for v in zigzag[1:]):
                    if value == 0:
                        run += 1
                        continue
                    while run > 15:
                        writer.put(ac_code[0xF0], 8)
                        run -= 16
                    size, bits = _magnitude(value)
                    writer.put(ac_code[(run << 4) | size], 8)
                    writer.put(bits, size)
                    run = 0
                if run:
                    writer.put(ac_code[0x00], 8)
    return out + writer.finish() + b"\xff\xd9"


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert an APP1 EXIF segment holding only the orientation tag."""
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def with_declared_size(jpeg: bytes, width: int, height: int) -> bytes:
    """Rewrite the frame header's size, as a decompression bomb would."""
    for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2", b"\xff\xc3"):
        sof = jpeg.find(marker)
        if sof >= 0:
            return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9 :]
    raise ValueError("no frame header")
