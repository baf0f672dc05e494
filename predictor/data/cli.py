"""``predictor data ...``: synthesise and convert detection datasets.

The main CLI calls :func:`add_data_parser` on its sub-parsers and then
``sys.exit(args.func(args))``. Handlers turn bad input into ``error: <message>`` on
stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path

from predictor.data.dataset import Dataset
from predictor.data.errors import DatasetError, MissingAssetError
from predictor.data.formats import FORMATS, check_format, load_dataset, save_dataset
from predictor.data.photos import (
    GCOMPRIS_PACKAGE,
    GCOMPRIS_PARTS,
    HARD_NEGATIVE_PACKAGES,
    PHOTO_PACKAGES,
    PhotoLibrary,
    prepare_photos,
    write_gcompris_photos,
    write_hard_negatives,
    write_negatives,
    write_round_things,
)
from predictor.data.stickers import (
    ROUND_STICKER_FOLDERS,
    STICKER_PACKAGE,
    compose_sticker_photos,
)
from predictor.data.styles import STYLE_SET_NAMES, style_set
from predictor.data.synth import SceneConfig, synthesize

EXIT_BAD_INPUT = 2


def add_data_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``data`` command, with ``synth``, ``photos`` and ``convert`` below it."""
    data = subparsers.add_parser(
        "data",
        help="synthesise or convert object-detection datasets",
        description="Synthesise or convert object-detection datasets (voc, coco, yolo).",
    )
    commands = data.add_subparsers(
        dest="data_command", metavar="{synth,photos,convert}", required=True
    )

    synth = commands.add_parser(
        "synth",
        help="render a synthetic digits-and-shapes dataset",
        description=(
            "Render scenes of digits 0-9 and circles, squares and triangles with exact "
            "boxes. The same seed gives byte-identical files."
        ),
    )
    synth.add_argument("--out", type=Path, required=True, help="new or empty output directory")
    synth.add_argument("--images", type=int_at_least(0), required=True, help="number of images")
    synth.add_argument("--seed", type=int_at_least(0), default=0, help="random seed (default 0)")
    synth.add_argument("--format", choices=FORMATS, default="voc", help="annotation format")
    synth.add_argument("--min-side", type=int, default=256, help="smallest image side (px)")
    synth.add_argument("--max-side", type=int, default=640, help="largest image side (px)")
    synth.add_argument(
        "--quality",
        type=int,
        help="JPEG quality for every image (default: 90 for classic, else drawn per image 30-95)",
    )
    synth.add_argument(
        "--styles",
        choices=STYLE_SET_NAMES,
        default="classic",
        help="style set (predictor/data/styles.py; default: %(default)s)",
    )
    synth.add_argument(
        "--photos",
        type=Path,
        metavar="DIR",
        action="append",
        help=(
            "folder of background photos (from `predictor data photos`: its train/, "
            "withheld/ or hard-negatives/); repeat to draw from several"
        ),
    )
    synth.add_argument(
        "--negative-share",
        type=float,
        metavar="F",
        help="share of scenes with no object (default: the style set's; train: 0.1)",
    )
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    synth.set_defaults(func=run_synth)

    photos = commands.add_parser(
        "photos",
        help="collect background photos and held-out negatives for synth",
        description=(
            "Copy Debian's wallpapers (" + ", ".join(PHOTO_PACKAGES) + "), downscaled, into "
            "OUT/train and OUT/withheld; photos with nothing to find from "
            + ", ".join(HARD_NEGATIVE_PACKAGES)
            + " (fine-tuning only) into OUT/hard-negatives; training wallpapers with "
            f"{STICKER_PACKAGE}'s cut-out animals, plants and tools pasted on them "
            "(fine-tuning only) into OUT/stickers; photographs of real round things, "
            "training wallpapers with its fruit, dishes and balls pasted on them, and "
            f"{GCOMPRIS_PACKAGE}'s photographs of real things (the crop verifier's "
            "background only), into OUT/round-things, OUT/round-stickers and "
            "OUT/real-things; and scikit-image's and matplotlib's sample photos, and more "
            "of GCompris's (evaluation only), into OUT/negatives and OUT/gcompris-negatives."
        ),
    )
    photos.add_argument("--out", type=Path, required=True, help="output directory")
    photos.set_defaults(func=run_photos)

    convert = commands.add_parser(
        "convert",
        help="convert a dataset between voc, coco and yolo",
        description="Read a dataset, check it, and write it in another format.",
    )
    convert.add_argument("--in", dest="in_dir", type=Path, required=True, help="dataset to read")
    convert.add_argument("--out", type=Path, required=True, help="new or empty output directory")
    convert.add_argument("--format", choices=FORMATS, required=True, help="output format")
    convert.add_argument(
        "--in-format", choices=FORMATS, default=None, help="input format (default: detect)"
    )
    convert.add_argument(
        "--copy", action="store_true", help="copy images instead of hard-linking them"
    )
    convert.set_defaults(func=run_convert)


STICKER_PHOTOS = 300
"""How many photos with stickers `predictor data photos` composes (seed 0)."""
ROUND_STICKER_PHOTOS = 150
"""How many photos with round stickers (the crop verifier's) it composes (seed 1)."""


def run_synth(args: argparse.Namespace) -> int:
    """Handler for ``predictor data synth``."""
    try:
        config = SceneConfig(min_side=args.min_side, max_side=args.max_side)
    except ValueError as exc:
        return _fail(f"bad image size options: {exc}")
    if args.quality is not None and not 1 <= args.quality <= 100:
        return _fail("--quality must be between 1 and 100")
    if args.negative_share is not None and not 0.0 <= args.negative_share <= 1.0:
        return _fail("--negative-share must be between 0 and 1")
    try:
        styles = style_set(args.styles)
        if args.negative_share is not None:
            styles = dataclasses.replace(styles, negative_share=args.negative_share)
        photos = PhotoLibrary.load(*args.photos) if args.photos else None
        dataset = synthesize(
            args.out,
            args.images,
            args.seed,
            check_format(args.format),
            config=config,
            styles=styles,
            photos=photos,
            quality=args.quality,
            progress=not args.no_progress,
        )
    except (DatasetError, MissingAssetError, OSError) as exc:
        return _fail(str(exc))
    return _report(dataset, args.format, args.out)


def run_photos(args: argparse.Namespace) -> int:
    """Handler for ``predictor data photos``."""
    try:
        counts = prepare_photos(args.out)
        hard_negatives = write_hard_negatives(args.out / "hard-negatives")
        round_things = write_round_things(args.out / "round-things")
        gcompris = {
            part: write_gcompris_photos(args.out / part, folders)
            for part, folders in GCOMPRIS_PARTS.items()
        }
        backgrounds = PhotoLibrary.load(args.out / "train")
        stickers = compose_sticker_photos(
            args.out / "stickers", backgrounds, STICKER_PHOTOS, seed=0
        )
        round_stickers = compose_sticker_photos(
            args.out / "round-stickers", backgrounds, ROUND_STICKER_PHOTOS, seed=1,
            folders=ROUND_STICKER_FOLDERS,
        )  # fmt: skip
        negatives = write_negatives(args.out / "negatives")
    except (DatasetError, MissingAssetError, OSError) as exc:
        return _fail(str(exc))
    print(
        f"wrote {counts['train']} training and {counts['withheld']} withheld backgrounds, "
        f"{hard_negatives} fine-tuning negatives, {stickers} photos with stickers, "
        f"{round_things + gcompris['round-things']} photos of round things, "
        f"{round_stickers} with round stickers and {gcompris['real-things']} of real things "
        f"(the verifier's), and {len(negatives)} + {gcompris['gcompris-negatives']} held-out "
        f"negative photos, to {args.out}"
    )
    return 0


def run_convert(args: argparse.Namespace) -> int:
    """Handler for ``predictor data convert``."""
    try:
        in_format = check_format(args.in_format) if args.in_format else None
        dataset = load_dataset(args.in_dir, in_format)
        save_dataset(dataset, args.out, check_format(args.format), copy_images=args.copy)
    except (DatasetError, OSError) as exc:
        return _fail(str(exc))
    return _report(dataset, args.format, args.out)


def _report(dataset: Dataset, fmt: str, out: Path) -> int:
    images, objects = len(dataset.images), dataset.object_count
    print(f"wrote {images} images with {objects} objects ({fmt}) to {out}")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``, else a message saying so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse
