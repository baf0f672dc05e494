"""Image decoding and preprocessing: JPEG bytes in, a network-ready tensor out.

Decoding follows what a photo viewer shows: OpenCV applies the EXIF
orientation tag, so boxes are reported in the coordinates of the image as it
is displayed (width and height swapped for 90-degree orientations).

Sizes are checked from the JPEG header before anything is allocated, so a
"decompression bomb" costs a few hundred bytes of parsing, not gigabytes.

How the decoded pixels become the network's input (size, stretch or
letterbox, interpolation, scale, mean and standard deviation, channel order,
layout) is what the checkpoint declares (`predictor.checkpoint.Preprocessing`).
Where the declaration allows it (``reduced_decoding``), large photos are
decoded at 1/2, 1/4 or 1/8 scale inside libjpeg's DCT when the reduced image
is still at least as large as what the network is given on both sides:
decoding is the most expensive step of preprocessing.

What is decoded, and how:

- 8-bit JPEGs of every process OpenCV's libjpeg-turbo reads: baseline,
  progressive, arithmetic-coded, lossless; grayscale, YCbCr, RGB and CMYK/YCCK
  (Adobe's inverted convention, as Photoshop writes it). Grayscale becomes
  three equal channels.
- 12- and 16-bit JPEGs (extended-precision lossy, and lossless up to 16 bits,
  as medical and scientific cameras write them), which OpenCV cannot read, are
  decoded by libjpeg (pylibjpeg-libjpeg) at full resolution and scaled to 8 bits.
  Their colour space follows libjpeg-turbo's rules: a JFIF marker or Adobe
  transform 1 means YCbCr, Adobe transform 0 or component ids R, G, B mean RGB,
  and otherwise lossy means YCbCr and lossless RGB.
- Refused from the header, before any pixel is decoded: anything that is not
  a JPEG stream, an image over ``max_pixels``, and a progressive file of more
  than `MAX_SCANS` scans (each scan can make the decoder walk the whole image
  for a few bytes of data).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from predictor.checkpoint import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from predictor.detections import Placement
from predictor.errors import ImageError, ImageTooLarge

# ImageNet statistics that GluonCV's SSD networks are trained with (RGB, 0..1).
MEAN_RGB = IMAGENET_MEAN
STD_RGB = IMAGENET_STD

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
# Start-of-frame markers of the lossless processes.
_LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
# Start-of-frame markers of the progressive processes (Huffman and arithmetic coded).
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
# libjpeg-turbo's own limit for its "limit scans" safety option; encoders write
# about 10 scans for a progressive photo.
MAX_SCANS = 500
# EXIF orientation -> (transpose first, then flip code for cv2.flip or None).
# Orientation 6 ("rotate 90 clockwise to display") is a transpose then a
# horizontal flip, and so on, as in the EXIF specification's table.
_ORIENTATIONS: dict[int, tuple[bool, int | None]] = {
    1: (False, None),
    2: (False, 1),
    3: (False, -1),
    4: (False, 0),
    5: (True, None),
    6: (True, 1),
    7: (True, -1),
    8: (True, 0),
}

Tensor = npt.NDArray[np.float32]
# Files `find_images` picks up in folders (what OpenCV decodes, for the command line).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
ImageBGR = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class PreparedImage:
    """A network input plus where the original (displayed) image lies in it."""

    tensor: Tensor  # the declared layout, e.g. (3, height, width) float32
    placement: Placement

    @property
    def width(self) -> int:
        """The original image's width, as displayed."""
        return self.placement.width

    @property
    def height(self) -> int:
        """The original image's height, as displayed."""
        return self.placement.height


@dataclass(frozen=True)
class JpegHeader:
    """What the segments up to the frame header say, read without decoding."""

    width: int  # as stored, before the EXIF orientation
    height: int
    precision: int  # bits per sample: 8, or 2-16 for lossless, 12 for extended
    components: int
    lossless: bool
    progressive: bool = False
    jfif: bool = False
    adobe_transform: int | None = None
    component_ids: tuple[int, ...] = ()
    orientation: int = 1  # EXIF orientation, 1 (as stored) to 8

    @property
    def rotated(self) -> bool:
        """True when the displayed image is the stored one turned by 90 or 270 degrees."""
        return self.orientation in (5, 6, 7, 8)


def jpeg_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from a JPEG's frame header, before decoding.

    Raises `ImageError` when the bytes are not a JPEG stream or the header is
    truncated before the frame size.
    """
    header = jpeg_header(data)
    return header.width, header.height


def jpeg_header(data: bytes) -> JpegHeader:
    """Read a JPEG's segments up to its frame header; see `JpegHeader`.

    Raises `ImageError` when the bytes are not a JPEG stream or the header is
    truncated before the frame size. Unreadable EXIF data is ignored, as
    viewers do.
    """
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        raise ImageError("the body is not a JPEG image (no JPEG start-of-image marker)")
    pos = 2
    end = len(data)
    jfif = False
    adobe_transform: int | None = None
    orientation = 1
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
        segment = data[pos + 2 : pos + length]
        if marker == 0xE0 and segment.startswith(b"JFIF\x00"):
            jfif = True
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe_transform = segment[11]
        elif marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
            orientation = _exif_orientation(segment[6:])
        elif marker in _SOF_MARKERS:
            if pos + 8 > end:
                break
            precision = data[pos + 2]
            height = (data[pos + 3] << 8) | data[pos + 4]
            width = (data[pos + 5] << 8) | data[pos + 6]
            components = data[pos + 7]
            if width == 0 or height == 0:
                raise ImageError("JPEG header declares an empty image")
            return JpegHeader(
                width=width,
                height=height,
                precision=precision,
                components=components,
                lossless=marker in _LOSSLESS_SOF,
                progressive=marker in _PROGRESSIVE_SOF,
                jfif=jfif,
                adobe_transform=adobe_transform,
                component_ids=tuple(segment[6 : 6 + 3 * components : 3]),
                orientation=orientation,
            )
        pos += length
    raise ImageError("truncated JPEG (the header ends before the frame size)")


def _exif_orientation(tiff: bytes) -> int:
    """The orientation tag of an EXIF block's first image directory, or 1."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order: Literal["little", "big"] = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return 1
    count = int.from_bytes(tiff[ifd : ifd + 2], order)
    for index in range(count):
        entry = ifd + 2 + 12 * index
        if entry + 12 > len(tiff):
            break
        if int.from_bytes(tiff[entry : entry + 2], order) == 0x0112:
            value = int.from_bytes(tiff[entry + 8 : entry + 10], order)
            return value if value in _ORIENTATIONS else 1
    return 1


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels (maybe reduced) and the full-resolution displayed size."""

    pixels: ImageBGR
    width: int
    height: int


def decode(
    data: bytes,
    edge: int | None,
    max_pixels: int,
    *,
    require_jpeg: bool = True,
    needed: tuple[int, int] | None = None,
) -> DecodedImage:
    """Decode to BGR, reduced in the DCT where the result still has the pixels the network needs.

    ``needed`` is the (width, height) the displayed image is resized to;
    ``edge`` is the same for a square. With neither, the image is decoded at
    full resolution. With ``require_jpeg=False`` other formats OpenCV reads are
    accepted too (for the command line), decoded at full resolution.
    """
    if needed is None and edge is not None:
        needed = (edge, edge)
    if not require_jpeg and not data.startswith(b"\xff\xd8"):
        pixels = _imdecode(data, cv2.IMREAD_COLOR)
        height, width = pixels.shape[:2]
        _check_pixels(width, height, max_pixels)
        return DecodedImage(pixels, width, height)
    header = _checked_header(data, max_pixels)
    width, height = header.width, header.height
    if header.precision != 8:
        pixels = _decode_high_precision(data, header)
        return DecodedImage(pixels, pixels.shape[1], pixels.shape[0])
    factor = 1
    if needed is not None:
        # The header's sides are as stored; EXIF may turn the displayed image by 90 degrees.
        need_w, need_h = needed[::-1] if header.rotated else needed
        factor = reduction_factor(width, height, need_w, need_h)
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
    header = _checked_header(data, max_pixels)
    if header.precision != 8:
        return _decode_high_precision(data, header)
    return _imdecode(data, cv2.IMREAD_COLOR)


def _checked_header(data: bytes, max_pixels: int) -> JpegHeader:
    """The header of a JPEG this service will decode; `ImageError` otherwise."""
    header = jpeg_header(data)
    _check_pixels(header.width, header.height, max_pixels)
    if not header.progressive:
        # A sequential scan carries every block of its components, at least two bits
        # each, so MAX_BODY_BYTES bounds what repeated scans cost. Only a progressive
        # scan can cover the image in a few bytes (an end-of-band run); libjpeg-turbo's
        # own scan limit is for progressive images too. Counting markers holds the GIL
        # (about 1 ms for a camera photo), which the other threads then wait for.
        return header
    scans = data.count(b"\xff\xda")
    if scans > MAX_SCANS:
        raise ImageError(f"the JPEG has {scans} scans; at most {MAX_SCANS} are accepted")
    return header


def _decode_high_precision(data: bytes, header: JpegHeader) -> ImageBGR:
    """Decode a 12- or 16-bit (or other non-8-bit) JPEG to 8-bit BGR, oriented for display."""
    if header.components not in (1, 3):
        raise ImageError(
            f"a {header.precision}-bit JPEG with {header.components} colour components "
            "is not supported (1 or 3 are)"
        )
    try:
        import libjpeg
    except ImportError:  # pragma: no cover - a declared dependency
        raise ImageError(
            f"{header.precision}-bit JPEGs need the pylibjpeg-libjpeg package"
        ) from None
    transform = 1 if header.components == 3 and _is_ycbcr(header) else 0  # 1: YCbCr -> RGB
    try:
        raw = np.asarray(libjpeg.decode(data, colour_transform=transform))  # type: ignore[attr-defined]
    except Exception as exc:  # its errors are RuntimeError or ValueError; none may escape
        raise ImageError(f"the image could not be decoded ({exc})") from None
    expected = (header.height, header.width) + (
        (header.components,) if header.components > 1 else ()
    )
    if raw.shape != expected:
        raise ImageError("the image could not be decoded (its data does not match its header)")
    maximum = (1 << header.precision) - 1
    scaled = (raw.astype(np.uint32) * 255 + maximum // 2) // maximum
    eight: ImageBGR = np.clip(scaled, 0, 255).astype(np.uint8)
    bgr = np.asarray(
        cv2.cvtColor(eight, cv2.COLOR_GRAY2BGR) if header.components == 1 else eight[:, :, ::-1],
        dtype=np.uint8,
    )
    return np.ascontiguousarray(_orient(bgr, header.orientation))


def _is_ycbcr(header: JpegHeader) -> bool:
    """libjpeg-turbo's rule for a three-component image's colour space."""
    if header.jfif:
        return True
    if header.adobe_transform is not None:
        return header.adobe_transform != 0
    if header.component_ids == (82, 71, 66):  # "R", "G", "B"
        return False
    return not header.lossless


def _orient(pixels: ImageBGR, orientation: int) -> ImageBGR:
    """Turn stored pixels the way EXIF ``orientation`` says a viewer shows them."""
    transpose, flip = _ORIENTATIONS.get(orientation, (False, None))
    if transpose:
        pixels = np.ascontiguousarray(pixels.transpose(1, 0, 2))
    if flip is not None:
        pixels = np.asarray(cv2.flip(pixels, flip), dtype=np.uint8)
    return pixels


def reduction_factor(width: int, height: int, need_w: int, need_h: int | None = None) -> int:
    """Largest DCT scale-down (1, 2, 4 or 8) that keeps the sides >= ``need_w`` x ``need_h``."""
    need_h = need_w if need_h is None else need_h
    for factor in (8, 4, 2):
        if width // factor >= need_w and height // factor >= need_h:
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
    """predictor's own transform at a square ``edge``: see `Preprocessing.predictor`."""
    return preprocess(image, Preprocessing.predictor(edge), out)[0]


def preprocess(
    image: ImageBGR,
    preprocessing: Preprocessing,
    out: Tensor | None = None,
    displayed: tuple[int, int] | None = None,
) -> tuple[Tensor, Placement]:
    """Resize and normalise decoded BGR pixels as ``preprocessing`` declares.

    Returns the network input (``preprocessing.input_shape``, float32) and
    where the image lies in it. ``displayed`` is the (width, height) of the
    image the pixels show, when they were decoded at reduced scale: the
    placement is in its pixels, and a letterbox is sized from it.
    """
    height, width = image.shape[:2]
    shown_w, shown_h = displayed if displayed is not None else (width, height)
    p = preprocessing
    if p.resize == "stretch":
        target_w, target_h = p.width, p.height
    else:
        fit = min(p.width / shown_w, p.height / shown_h)
        target_w = max(1, min(p.width, round(shown_w * fit)))
        target_h = max(1, min(p.height, round(shown_h * fit)))
    interpolation = _interpolation(p.interpolation, width, height, target_w, target_h)
    if p.interpolation == "gluoncv" and interpolation == cv2.INTER_CUBIC:
        resized = _mxnet_cubic(image, target_w, target_h)
    else:
        resized = np.asarray(
            cv2.resize(image, (target_w, target_h), interpolation=interpolation), dtype=np.uint8
        )
    if p.resize == "letterbox":
        offset_x, offset_y = 0, 0
        if p.letterbox_anchor == "center":
            offset_x, offset_y = (p.width - target_w) // 2, (p.height - target_h) // 2
        canvas = np.full((p.height, p.width, 3), p.pad_value, dtype=np.uint8)
        canvas[offset_y : offset_y + target_h, offset_x : offset_x + target_w] = resized
        resized = canvas
        placement = Placement(
            shown_w,
            shown_h,
            shown_w / target_w,
            shown_h / target_h,
            float(offset_x),
            float(offset_y),
        )
    else:
        placement = Placement.stretched(shown_w, shown_h, p.width, p.height)
    if out is None:
        out = np.empty(p.input_shape, dtype=np.float32)
    mean, inv_std = _normalisation(p)
    # Channel c of the input comes from OpenCV's BGR channel source[c].
    source = (2, 1, 0) if p.channel_order == "RGB" else (0, 1, 2)
    for channel, bgr_channel in enumerate(source):
        plane = out[channel] if p.layout == "NCHW" else out[:, :, channel]
        np.subtract(resized[:, :, bgr_channel], mean[channel], out=plane)
        np.multiply(plane, inv_std[channel], out=plane)
    return out, placement


def _mxnet_cubic(image: ImageBGR, width: int, height: int) -> ImageBGR:
    """Bicubic enlargement exactly as GluonCV gets it: through MXNet's own ``imresize``.

    MXNet bundles its own OpenCV, whose bicubic kernel rounds differently from
    the OpenCV 4 that decodes here (one intensity level on about 2 % of the
    pixels, measured on a photo enlarged to 512x512); area and bilinear agree
    bit for bit, so only this case pays for the round trip.
    """
    import mxnet as mx

    resized = mx.image.imresize(mx.nd.array(image, dtype="uint8"), width, height, interp=2)
    return np.ascontiguousarray(resized.asnumpy(), dtype=np.uint8)


@functools.cache
def _normalisation(p: Preprocessing) -> tuple[Tensor, Tensor]:
    """Per input channel: the mean and 1/std on the 0..255 scale of the decoded pixels.

    Cached: a server has a few declarations, and every image of one needs the same constants.
    """
    # A pixel p (0..255) is first p / k on the declared scale, then (p / k - m) / s,
    # which is (p - m * k) / (s * k).
    k = 255.0 / p.pixel_scale
    order = (0, 1, 2) if p.channel_order == "RGB" else (2, 1, 0)
    mean = np.array([p.mean[c] for c in order], dtype=np.float32) * k
    inv_std = 1.0 / (np.array([p.std[c] for c in order], dtype=np.float32) * k)
    return mean, inv_std


def _interpolation(rule: str, width: int, height: int, target_w: int, target_h: int) -> int:
    """OpenCV's interpolation for a resize, by the declared rule.

    "gluoncv" is MXNet's ``interp=9`` as GluonCV's SSD transforms call it: cubic
    when both sides grow, area when both shrink, bilinear otherwise.
    "predictor" (what predictor's own models are trained with): area when
    either side shrinks, else bilinear.
    """
    if rule == "gluoncv":
        if target_w > width and target_h > height:
            return cv2.INTER_CUBIC
        if target_w < width and target_h < height:
            return cv2.INTER_AREA
        return cv2.INTER_LINEAR
    if width > target_w or height > target_h:
        return cv2.INTER_AREA
    return cv2.INTER_LINEAR


def prepare(
    data: bytes,
    preprocessing: Preprocessing | int,
    max_pixels: int,
    *,
    require_jpeg: bool = True,
) -> PreparedImage:
    """Decode and preprocess one image; raise `ImageError` for anything unusable.

    ``preprocessing`` is the checkpoint's declaration; a bare edge means
    predictor's own transform at that square size (`Preprocessing.predictor`).
    """
    if isinstance(preprocessing, int):
        preprocessing = Preprocessing.predictor(preprocessing)
    needed = None
    if preprocessing.reduced_decoding:
        needed = _resized_size(data, preprocessing) if require_jpeg or _is_jpeg(data) else None
    decoded = decode(data, None, max_pixels, require_jpeg=require_jpeg, needed=needed)
    tensor, placement = preprocess(
        decoded.pixels, preprocessing, displayed=(decoded.width, decoded.height)
    )
    return PreparedImage(tensor, placement)


def _is_jpeg(data: bytes) -> bool:
    return data.startswith(b"\xff\xd8")


def _resized_size(data: bytes, preprocessing: Preprocessing) -> tuple[int, int] | None:
    """The displayed image's size once resized for the network; None if the header is unreadable."""
    if preprocessing.resize == "stretch":
        return preprocessing.width, preprocessing.height
    try:
        header = jpeg_header(data)
    except ImageError:
        return None  # decode() reports it
    width, height = header.width, header.height
    if header.rotated:
        width, height = height, width
    fit = min(preprocessing.width / width, preprocessing.height / height)
    return max(1, round(width * fit)), max(1, round(height * fit))


def find_images(paths: Iterable[Path]) -> list[Path]:
    """Files as given, plus image files found recursively in folders, in a stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)
    return found
