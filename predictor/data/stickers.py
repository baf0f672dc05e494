"""Cut-out photographs of real things pasted on photos: backgrounds full of non-objects.

The digits model saw `9`s in a cat's eyes and a `3` in a cameraman: wallpapers are
landscapes, and no training scene held an animal, a face or a tool. Tux Paint's stamps
(Debian's `tuxpaint-stamps-default`) are such things cut out with an alpha channel,
most of them photographs. ``compose_sticker_photos`` pastes a few of them on crops of
the training wallpapers; the fine-tuning scenes use the results as backgrounds, mostly
with nothing drawn on them. Clip-art is left out (the stamps' ``cartoon`` folders,
toys), and so are the folders whose things are round, square, lettered or numbered:
food, symbols, vehicles (wheels, signs), town, sports balls.

The round ones come back elsewhere: `ROUND_STICKER_FOLDERS` (fruit, vegetables, cakes,
a pizza, cups, a teapot, balls) pasted the same way make photos of real round things,
which only the crop verifier sees, as what a drawn circle is not
(`predictor.training.train_verifier`).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from predictor.data.errors import MissingAssetError
from predictor.data.photos import PhotoLibrary

STICKER_ROOT = Path("/usr/share/tuxpaint/stamps")
STICKER_PACKAGE = "tuxpaint-stamps-default"
STICKER_FOLDERS = ("animals", "plants/flowers", "plants/trees", "household/tools", "people")
ROUND_STICKER_FOLDERS = ("food", "household/dishes", "sports")
_LEFT_OUT_FOLDERS = frozenset({"cartoon", "toys", "body_parts", "dinosaur"})

_PHOTO_SIZE = (800, 600)  # width, height of a composed photo
_STICKERS_PER_PHOTO = (2, 5)
_STICKER_SCALE = (0.15, 0.6)  # longer side, as a share of the photo's shorter side


def find_stickers(
    root: Path = STICKER_ROOT, folders: tuple[str, ...] = STICKER_FOLDERS
) -> list[Path]:
    """The stamps of ``folders`` under ``root``, sorted; clip-art folders left out."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.png")):
            if not _LEFT_OUT_FOLDERS & set(path.relative_to(root).parts):
                found.append(path)
    return found


def compose_sticker_photos(
    out_dir: Path,
    backgrounds: PhotoLibrary,
    count: int,
    seed: int,
    root: Path = STICKER_ROOT,
    folders: tuple[str, ...] = STICKER_FOLDERS,
) -> int:
    """Write ``count`` JPEGs of background crops with 2-5 stickers each; returns ``count``.

    The stickers come from ``folders`` of ``root``. Raises MissingAssetError when
    none is installed there.
    """
    found = find_stickers(root, folders)
    stickers = [s for s in (_load_sticker(p) for p in found) if s is not None]
    if not stickers:
        raise MissingAssetError(
            f"no stickers under {root}; install the Debian package {STICKER_PACKAGE} "
            "with `make training-assets`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    width, height = _PHOTO_SIZE
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        image = backgrounds.background(rng, width, height).astype(np.float32)
        for _ in range(int(rng.integers(_STICKERS_PER_PHOTO[0], _STICKERS_PER_PHOTO[1] + 1))):
            sticker = stickers[int(rng.integers(len(stickers)))]
            _paste(rng, image, sticker)
        cv2.imwrite(
            str(out_dir / f"sticker-{index:04d}.jpg"),
            np.clip(image, 0, 255).astype(np.uint8),
            [cv2.IMWRITE_JPEG_QUALITY, 92],
        )
    return count


def _load_sticker(path: Path) -> NDArray[np.uint8] | None:
    """A BGRA stamp, cropped to its opaque part; None when it has no usable alpha."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.ndim != 3 or image.shape[2] != 4:
        return None
    if image.dtype != np.uint8:  # 16-bit PNGs
        image = (image // 257).astype(np.uint8)
    rows = np.flatnonzero(image[:, :, 3].max(axis=1) > 127)
    cols = np.flatnonzero(image[:, :, 3].max(axis=0) > 127)
    if rows.size < 16 or cols.size < 16:
        return None
    return np.ascontiguousarray(image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1])


def _paste(
    rng: np.random.Generator, image: NDArray[np.float32], sticker: NDArray[np.uint8]
) -> None:
    """Alpha-blend ``sticker`` into ``image`` in place, scaled, maybe mirrored, anywhere."""
    height, width = image.shape[:2]
    longest = min(height, width) * float(rng.uniform(*_STICKER_SCALE))
    factor = longest / max(sticker.shape[:2])
    size = (max(1, round(sticker.shape[1] * factor)), max(1, round(sticker.shape[0] * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(sticker, size, interpolation=interpolation)
    if rng.random() < 0.5:
        scaled = scaled[:, ::-1]
    sticker_height, sticker_width = scaled.shape[:2]
    x = int(rng.integers(0, max(1, width - sticker_width + 1)))
    y = int(rng.integers(0, max(1, height - sticker_height + 1)))
    region = image[y : y + sticker_height, x : x + sticker_width]
    cut = scaled[: region.shape[0], : region.shape[1]].astype(np.float32)
    alpha = cut[:, :, 3:4] / 255.0
    region[...] = region * (1.0 - alpha) + cut[:, :, :3] * alpha
