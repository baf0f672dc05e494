"""The named style sets scenes are drawn in: training variety, and what training never sees.

``train``     the model's training, validation and in-distribution test scenes: Hershey,
              hand-drawn and TrueType digits in the `TRAINING_FAMILIES`; filled,
              outlined, hand-drawn and soft-cornered shapes; flat, gradient and
              blotchy backgrounds and crops of the training wallpapers; clutter
              lines, stains, specks and letters; blur, low contrast, JPEG quality
              30-95; 10 % of scenes with no object, most of them on photos.
``withheld``  the generalisation evaluation: digits only in the `WITHHELD_FAMILIES`,
              shapes only in the ``rounded`` and ``twotone`` styles, photo backgrounds
              only from the withheld wallpapers. Nothing of these is in ``train``.
``classic``   the generator before issue 16 (Hershey and hand digits, no fonts or
              photos needed): quick test fixtures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from predictor.data.fonts import FONT_ROOT, TRAINING_FAMILIES, WITHHELD_FAMILIES, font_files
from predictor.data.glyphs import CLASSIC_STYLES, GlyphStyles

STYLE_SET_NAMES = ("train", "withheld", "classic")

# Characters drawn as unlabelled clutter. Left out: anything a digit or shape could be
# taken for (O o Q D 0; I l i j J L T ! | 1 7; Z z 2; S s 5; G b 6; B 8; g q 9; C c circle).
CLUTTER_CHARACTERS = "AEFHKMNPRUVWXYaehkmnprtuvwxy+#&?%@"


@dataclass(frozen=True)
class StyleSet:
    """How the objects and the rest of a set of scenes are drawn."""

    name: str
    glyphs: GlyphStyles
    letter_share: float = 0.0
    """Share of scenes with 1-5 clutter characters beside the objects."""
    photo_share: float = 0.0
    """Share of scenes on a photo background (when a photo library is given)."""
    negative_share: float = 0.0
    """Share of scenes with no object at all: only background and clutter."""
    blur_share: float = 0.0
    """Share of scenes blurred a little (Gaussian, sigma 0.4-1.3 px), as if out of focus."""
    faded_share: float = 0.0
    """Share of scenes whose contrast is lowered (to 60-90 %), as if washed out."""
    quality: tuple[int, int] = (90, 90)
    """Range of JPEG quality the scenes are saved with."""


def style_set(name: str, font_root: Path = FONT_ROOT) -> StyleSet:
    """The style set called ``name`` (see the module docstring).

    Raises MissingAssetError when ``train`` or ``withheld`` fonts are not installed.
    """
    if name == "classic":
        return StyleSet("classic", CLASSIC_STYLES)
    if name == "train":
        glyphs = GlyphStyles(
            digit_styles=("font", "type", "hand"),
            digit_weights=(0.25, 0.5, 0.25),
            shape_styles=("filled", "outline", "hand", "soft"),
            shape_weights=(0.3, 0.35, 0.2, 0.15),
            fonts=font_files(TRAINING_FAMILIES, font_root),
            perspective=0.3,
        )
    elif name == "withheld":
        glyphs = GlyphStyles(
            digit_styles=("type",),
            digit_weights=(1.0,),
            shape_styles=("rounded", "twotone"),
            shape_weights=(0.5, 0.5),
            fonts=font_files(WITHHELD_FAMILIES, font_root),
            perspective=0.3,
        )
    else:
        raise ValueError(f"style set must be one of {STYLE_SET_NAMES}, not {name!r}")
    return StyleSet(
        name,
        glyphs,
        letter_share=0.5,
        photo_share=0.4,
        negative_share=0.1,
        blur_share=0.2,
        faded_share=0.15,
        quality=(30, 95),
    )
