"""TrueType and OpenType font families from Debian's font packages, split for training.

The digits-and-shapes model must read digits in typefaces it never saw, so the families
are split once, by name, into those the training scenes use and those kept back for the
generalisation evaluation (``predictor data synth --styles withheld``). A family is a set
of font files (regular, bold, italic, condensed...) matched by glob under the system's
font folder; the Debian package that ships it is named so that a missing family can say
what to install.

Glyphs are rendered without anti-aliasing (FreeType's monochrome mode), so a mask holds
exactly the pixels an object occupies, like every other drawing in :mod:`.glyphs`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from predictor.data.errors import MissingAssetError

if TYPE_CHECKING:
    from PIL import ImageFont

FONT_ROOT = Path("/usr/share/fonts")


@dataclass(frozen=True)
class FontFamily:
    """A typeface: its name, the font files that belong to it, and its Debian package."""

    name: str
    patterns: tuple[str, ...]
    """Globs relative to the font root."""
    package: str

    def files(self, root: Path = FONT_ROOT) -> list[Path]:
        """The family's font files under ``root``, sorted (empty if not installed)."""
        found = {path for pattern in self.patterns for path in root.glob(pattern)}
        return sorted(found)


TRAINING_FAMILIES: tuple[FontFamily, ...] = (
    FontFamily("DejaVu Sans", ("truetype/dejavu/DejaVuSans*.ttf",), "fonts-dejavu-core"),
    FontFamily("Liberation", ("truetype/liberation/Liberation*.ttf",), "fonts-liberation"),
    FontFamily("FreeFont", ("truetype/freefont/Free*.ttf",), "fonts-freefont-ttf"),
    FontFamily("Nimbus", ("opentype/urw-base35/Nimbus*.otf",), "fonts-urw-base35"),
    FontFamily("C059", ("opentype/urw-base35/C059-*.otf",), "fonts-urw-base35"),
    FontFamily("URW Bookman", ("opentype/urw-base35/URWBookman-*.otf",), "fonts-urw-base35"),
    FontFamily(
        "Noto Sans",
        ("truetype/noto/NotoSans-*.ttf", "truetype/noto/NotoSansDisplay-*.ttf"),
        "fonts-noto-core",
    ),
    FontFamily("Noto Serif", ("truetype/noto/NotoSerif-*.ttf",), "fonts-noto-core"),
    FontFamily(
        "Arimo and Cousine",
        ("truetype/croscore/Arimo-*.ttf", "truetype/croscore/Cousine-*.ttf"),
        "fonts-croscore",
    ),
)
"""Families the training scenes draw digits and clutter letters in."""

WITHHELD_FAMILIES: tuple[FontFamily, ...] = (
    # A geometric sans (Avant Garde's design), with a single-storey look and round 0s.
    FontFamily("URW Gothic", ("opentype/urw-base35/URWGothic-*.otf",), "fonts-urw-base35"),
    # Palatino's design: calligraphic serifs.
    FontFamily("P052", ("opentype/urw-base35/P052-*.otf",), "fonts-urw-base35"),
    # Zapf Chancery's design: a connected script, unlike every training family.
    FontFamily("Z003", ("opentype/urw-base35/Z003-*.otf",), "fonts-urw-base35"),
    # A slab-like serif with wide, open digits.
    FontFamily("DejaVu Serif", ("truetype/dejavu/DejaVuSerif*.ttf",), "fonts-dejavu-core"),
)
"""Families no training scene uses: the generalisation evaluation's typefaces."""

FONT_PACKAGES = tuple(sorted({f.package for f in TRAINING_FAMILIES + WITHHELD_FAMILIES}))


def font_files(families: Sequence[FontFamily], root: Path = FONT_ROOT) -> tuple[Path, ...]:
    """Every file of ``families``; raises DataError naming the package of any missing one."""
    files: list[Path] = []
    missing: list[str] = []
    for family in families:
        found = family.files(root)
        if not found:
            missing.append(f"{family.name} (Debian package {family.package})")
        files.extend(found)
    if missing:
        raise MissingAssetError(
            f"font families not found under {root}: {', '.join(missing)}; "
            "install them with `make training-assets`"
        )
    return tuple(files)


RENDER_EM = 128
"""Em size glyphs are drawn at, in pixels; callers rescale to the size they need."""


def render_text(text: str, font_file: Path) -> NDArray[np.uint8]:
    """``text`` drawn white (255) on black in one font at `RENDER_EM`, without anti-aliasing."""
    font = _font(str(font_file))
    from PIL import Image, ImageDraw

    left, top, right, bottom = (round(v) for v in font.getbbox(text))
    pad = 2
    canvas = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    draw = ImageDraw.Draw(canvas)
    draw.fontmode = "1"  # monochrome: every pixel fully in or out
    draw.text((pad - left, pad - top), text, fill=255, font=font)
    pixels = np.asarray(canvas, dtype=np.uint8)
    if not pixels.any():
        raise MissingAssetError(f"font {font_file} draws nothing for {text!r}")
    return pixels


@functools.lru_cache(maxsize=256)
def _font(path: str) -> ImageFont.FreeTypeFont:
    # Pillow comes with the training extras; the server's runtime image has none, and
    # needs none: only typeset scenes (styles `train` and `withheld`) draw with it.
    try:
        from PIL import ImageFont
    except ImportError:
        raise MissingAssetError(
            "drawing typeset digits needs Pillow: pip install 'predictor[train]'"
        ) from None
    return ImageFont.truetype(path, RENDER_EM)
