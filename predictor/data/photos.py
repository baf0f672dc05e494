"""Real photographs and wallpapers as scene backgrounds, split for training and evaluation.

A detector trained only on flat and gradient backgrounds invents digits in photos. So
scenes also use crops of Debian's desktop wallpapers (mostly photographs: landscapes,
leaves, water, flowers, a meadow; some illustrations), from the packages named in
`PHOTO_PACKAGES`. ``predictor data photos`` copies them once into a folder, downscaled,
split by name into ``train/`` and ``withheld/``: the withheld ones appear only behind the
generalisation evaluation's scenes.

A third part, ``hard-negatives/``, holds photographs of the kind the model met as a
user's photo and saw digits in: animals with eyes, people, buildings, rooms
(`HARD_NEGATIVE_PHOTOS`, from OpenCV's sample data and Lomiri's wallpapers). Only the
fine-tuning scenes use them, mostly with nothing drawn on them.

A fourth, ``round-things/``, holds photographs of real round things (`ROUND_THING_PHOTOS`:
fruit, cups seen from above, a lid, the sun, dandelions). No scene uses them, lest an
unlabelled round thing teach the detector that circles are background; only the crop
verifier (`predictor.training.train_verifier`) sees them, as what a drawn circle is not.

GCompris's photographs (Debian's ``gcompris-qt-data``, inside Qt resource archives) add
two more, chosen by folder in `GCOMPRIS_PARTS`: its dishes and balls join
``round-things/``, and its tools, fish, animals and dams make ``real-things/``, both for
the verifier only. Its monuments, animals and musicians make ``gcompris-negatives/``, a
second evaluation-only set of photos with nothing to find. Pictures showing digits, letters
or drawn-looking shapes (measuring tapes, multimeters, letter blocks, solar panels' grids)
are in none of them.

scikit-image's and matplotlib's sample photos never enter training: they are the
evaluation's pure negatives (`write_negatives`), photos with no digit and no shape.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from predictor.data.errors import DatasetError, MissingAssetError
from predictor.data.qt_resources import read_qt_resources

Image = NDArray[np.uint8]

WALLPAPER_ROOTS = (
    Path("/usr/share/wallpapers"),  # plasma-workspace-wallpapers: NAME/contents/images/WxH.jpg
    Path("/usr/share/backgrounds/mate"),  # mate-backgrounds: nature/, abstract/, desktop/
    Path("/usr/share/backgrounds/gnome"),  # gnome-backgrounds: NAME-l.webp, NAME-d.webp
)
PHOTO_PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds", "gnome-backgrounds")

HARD_NEGATIVE_ROOTS = (
    Path("/usr/share/doc/opencv-doc/examples/data"),  # opencv-doc: OpenCV's sample images
    Path("/usr/share/backgrounds"),  # lomiri-wallpapers-16.04 and -20.04 (top level only)
)
HARD_NEGATIVE_PACKAGES = ("opencv-doc", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
HARD_NEGATIVE_PHOTOS = frozenset(
    {
        # opencv-doc: animals, people, buildings, aerial views, plants
        "baboon", "chicky_512", "squirrel_cls", "butterfly", "messi5", "basketball1",
        "building", "home", "leuvenA", "aero1", "aero3", "aloeL", "ela_original",
        # Lomiri: dogs at a window, a living room, brushes, a bridge, bark, mountains
        "friends_by_Aitzol_Berasategi", "Wine_by_Jakkub_Mede", "Picture_1A_by_freespace",
        "Bridge_by_Sander_Klootwijk", "Kleiber_by_Lukas_Baubkus", "Dragonfly_by_Bolly",
        "aitzgorri_by_Aitzol_Berasategi", "life_by_Aitzol_Berasategi",
        "picosdeeuropa_by_Aitzol_Berasategi",
    }
)  # fmt: skip
"""Photos (by file stem) with no digit or shape, for the fine-tuning scenes' negatives.

Left out of the same folders on purpose: round things (apple, orange, fruits, smarties,
a fig in a bowl, dandelions, the sun, lamps, a football close up), shapes and
characters (blox, board, chessboards, cards, digits, sudoku, text, licence plates,
graffiti, logos), and paintings and illustrations.
"""

ROUND_THING_ROOTS = (
    Path("/usr/share/doc/opencv-doc/examples/data"),  # opencv-doc
    Path("/usr/share/backgrounds"),  # lomiri-wallpapers-16.04 and -20.04
    Path("/usr/share/wallpapers"),  # plasma-workspace-wallpapers
)
ROUND_THING_PHOTOS = frozenset(
    {
        # opencv-doc: an apple, an orange, cut fruit, a lid and a coin on a desk
        "apple", "orange", "fruits", "stuff",
        # Lomiri: the sun at sunset, dandelion clocks, a fig in a round bowl
        "sunset_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt", "Picture_0B_by_freespace",
        # plasma-workspace-wallpapers: rows of cups seen from above
        "ColorfulCups",
    }
)  # fmt: skip
"""Photos (by file stem or wallpaper name) of real round things, for the verifier only."""

GCOMPRIS_RESOURCES = Path("/usr/share/gcompris-qt/rcc")  # gcompris-qt-data: NAME.rcc
GCOMPRIS_PACKAGE = "gcompris-qt-data"


@dataclass(frozen=True)
class ResourceFolder:
    """Photos in one folder of a GCompris activity's resource archive.

    ``archive`` names both the file (``GCOMPRIS_RESOURCES/<archive>.rcc``) and the
    activity; ``folder`` is below its ``resource/`` folder, subfolders included ("" is
    all of it). ``only`` keeps just those file stems; ``without`` drops those.
    """

    archive: str
    folder: str = ""
    only: frozenset[str] = frozenset()
    without: frozenset[str] = frozenset()

    def holds(self, inside: str) -> bool:
        """Whether the archive path ``inside`` is a photo this folder selects."""
        prefix = f"/gcompris/src/activities/{self.archive}/resource/"
        if self.folder:
            prefix += self.folder.rstrip("/") + "/"
        path = Path(inside)
        return (
            inside.startswith(prefix)
            and path.suffix.lower() in _SUFFIXES
            and (not self.only or path.stem in self.only)
            and path.stem not in self.without
        )


_GCOMPRIS_ROUND_THINGS = frozenset(
    {"plate", "cup", "buffetset", "pan", "bucket", "baseball", "volleyball"}
)
GCOMPRIS_PARTS: dict[str, tuple[ResourceFolder, ...]] = {
    # Dishes and balls: what a drawn circle is not. The verifier's only.
    "round-things": (
        ResourceFolder("categorization", "images/others", only=_GCOMPRIS_ROUND_THINGS),
    ),
    # Household things, tools, fish, animals, windmills and dams. The verifier's only.
    "real-things": (
        ResourceFolder(
            "categorization", "images/others",
            # a blackboard's frame is an outlined rectangle; a scale shows digits
            without=_GCOMPRIS_ROUND_THINGS | {"blackslate", "weighingMachine"},
        ),
        ResourceFolder(
            "categorization", "images/tools",
            without=frozenset(
                [f"measuringTape{i}" for i in range(1, 7)] + [f"multimeter{i}" for i in range(1, 4)]
            ),  # printed scales and digital displays: digits
        ),
        ResourceFolder(
            "categorization", "images/renewable",
            without=frozenset(f"solar{i}" for i in range(1, 9)),  # panels: grids of squares
        ),
        ResourceFolder("categorization", "images/fishes"),
        ResourceFolder("erase"),
    ),
    # Monuments, animals and musicians: evaluation only. The categorization activity's
    # monuments are here too, because three of them are the explore activity's photos.
    "gcompris-negatives": (
        ResourceFolder("categorization", "images/monuments"),
        ResourceFolder("explore_monuments"),
        ResourceFolder("explore_world_animals"),
        ResourceFolder("explore_farm_animals"),
        ResourceFolder("explore_world_music"),
    ),
}  # fmt: skip
"""GCompris's photographs, by the folder ``predictor data photos`` writes them to."""

WITHHELD_WALLPAPERS = frozenset(
    {
        # mate-backgrounds, nature/: photographs
        "Storm", "LadyBird", "Dune", "GreenMeadow", "RainDrops", "YellowFlower",
        # plasma-workspace-wallpapers: photographs
        "Path", "summer_1am", "FallenLeaf",
    }
)  # fmt: skip
"""Wallpapers (by name) that only the withheld-style evaluation scenes use."""

NEGATIVE_SAMPLES = (
    "astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "camera",
    "immunohistochemistry", "hubble_deep_field", "gravel", "grass",
    "grace_hopper", "Minduka_Present_Blue_Pack",
)  # fmt: skip
"""scikit-image and matplotlib sample photos with no digit or shape in them.

Left out on purpose: ``coins`` and ``moon`` (round coins and craters are circles),
``retina`` (a disc), ``brick`` (rectangles), ``page``, ``text`` and ``clock`` (characters).
"""

_LONGEST_SIDE = 1024  # px; backgrounds are at most 640 px, and crops may zoom in
_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Plasma's previews of its wallpapers; flat fills and transparent PNGs (white here); and
# pictures full of circles, triangles or icons, which would teach that a circle or a
# triangle is background (the cups seen from above, Kay's and Patak's triangles, logos).
_NOT_WALLPAPERS = frozenset(
    {
        "screenshot", "vnc-d", "vnc-l", "symbolic-d", "symbolic-l", "Silk", "Spring", "Waves",
        "Arc-Colors-Transparent-Wallpaper", "MATE-Stripes-Dark", "MATE-Stripes-Light",
        "ColorfulCups", "Kay", "Kay-dark", "Patak", "Patak-dark", "GreenTraditional",
        "Float-into-MATE", "FlyingKonqui", "pixels-d", "pixels-l", "truchet-d", "truchet-l",
        "licorice-d", "licorice-l",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Wallpaper:
    """One wallpaper: its name and its largest file."""

    name: str
    path: Path


def find_wallpapers(roots: tuple[Path, ...] = WALLPAPER_ROOTS) -> list[Wallpaper]:
    """The installed wallpapers, one (the largest file) per name, sorted by name."""
    best: dict[str, Path] = {}
    for path in _image_files(roots):
        name = _wallpaper_name(path)
        if name in _NOT_WALLPAPERS:
            continue
        if name not in best or path.stat().st_size > best[name].stat().st_size:
            best[name] = path
    return [Wallpaper(name, best[name]) for name in sorted(best)]


def prepare_photos(out_dir: Path, roots: tuple[Path, ...] = WALLPAPER_ROOTS) -> dict[str, int]:
    """Write the wallpapers, downscaled, into ``out_dir/train`` and ``out_dir/withheld``.

    Returns how many went into each. Raises MissingAssetError if either part is empty.
    """
    wallpapers = find_wallpapers(roots)
    counts = {"train": 0, "withheld": 0}
    for wallpaper in wallpapers:
        part = "withheld" if wallpaper.name in WITHHELD_WALLPAPERS else "train"
        image = cv2.imread(str(wallpaper.path), cv2.IMREAD_COLOR)
        if image is None or min(image.shape[:2]) < 64:
            continue  # a placeholder or an unreadable file: not a background
        target = out_dir / part / f"{wallpaper.name}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_background(image, target)
        counts[part] += 1
    if not counts["train"] or not counts["withheld"]:
        raise MissingAssetError(
            f"too few wallpapers under {', '.join(map(str, roots))} ({counts}); install the "
            f"Debian packages {', '.join(PHOTO_PACKAGES)} with `make training-assets`"
        )
    return counts


def write_hard_negatives(out_dir: Path, roots: tuple[Path, ...] = HARD_NEGATIVE_ROOTS) -> int:
    """Write `HARD_NEGATIVE_PHOTOS`, downscaled, into ``out_dir``; returns how many.

    Raises MissingAssetError naming the photos that are not installed.
    """
    return _write_named_photos(
        out_dir, HARD_NEGATIVE_PHOTOS, roots, HARD_NEGATIVE_PACKAGES, "hard-negative"
    )


def write_round_things(out_dir: Path, roots: tuple[Path, ...] = ROUND_THING_ROOTS) -> int:
    """Write `ROUND_THING_PHOTOS`, downscaled, into ``out_dir``; returns how many.

    Raises MissingAssetError naming the photos that are not installed.
    """
    packages = (*HARD_NEGATIVE_PACKAGES, "plasma-workspace-wallpapers")
    return _write_named_photos(out_dir, ROUND_THING_PHOTOS, roots, packages, "round-thing")


def _write_named_photos(
    out_dir: Path, names: frozenset[str], roots: tuple[Path, ...], packages: tuple[str, ...],
    kind: str,
) -> int:  # fmt: skip
    found: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in _SUFFIXES:
                continue
            # OpenCV's chicky_512 is a stem; plasma's wallpapers are named by their folder.
            name = path.stem if path.stem in names else _wallpaper_name(path)
            if name in names and (
                name not in found or path.stat().st_size > found[name].stat().st_size
            ):
                found[name] = path
    missing = sorted(names - found.keys())
    if missing:
        raise MissingAssetError(
            f"{kind} photos not found under {', '.join(map(str, roots))}: "
            f"{', '.join(missing)}; install the Debian packages "
            f"{', '.join(packages)} with `make training-assets`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, path in sorted(found.items()):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise MissingAssetError(f"cannot read the {kind} photo {path}")
        _write_background(image, out_dir / f"{name}.jpg")
    return len(found)


def write_gcompris_photos(
    out_dir: Path, folders: tuple[ResourceFolder, ...], root: Path = GCOMPRIS_RESOURCES
) -> int:
    """Write the photos ``folders`` select from GCompris's archives into ``out_dir``.

    Files are named ``<archive>-<stem>.jpg`` and downscaled like the wallpapers; returns
    how many. Raises MissingAssetError when an archive is not installed or a folder
    selects nothing, and DatasetError for an archive or photo that cannot be read.
    """
    written: set[str] = set()
    out_dir.mkdir(parents=True, exist_ok=True)
    for archive in sorted({folder.archive for folder in folders}):
        path = root / f"{archive}.rcc"
        if not path.is_file():
            raise MissingAssetError(
                f"GCompris photos not found: no {path}; install the Debian package "
                f"{GCOMPRIS_PACKAGE} with `make training-assets`"
            )
        files = read_qt_resources(path)
        for folder in (f for f in folders if f.archive == archive):
            chosen = sorted(inside for inside in files if folder.holds(inside))
            if not chosen:
                raise MissingAssetError(f"{path}: no photos in {folder}")
            for inside in chosen:
                name = f"{archive}-{Path(inside).stem}"
                if name in written:
                    raise DatasetError(path, f"two photos would both be {name}.jpg", where=inside)
                image = cv2.imdecode(np.frombuffer(files[inside], np.uint8), cv2.IMREAD_COLOR)
                if image is None:
                    raise DatasetError(path, "cannot decode the photo", where=inside)
                _write_background(image, out_dir / f"{name}.jpg")
                written.add(name)
    return len(written)


def write_negatives(out_dir: Path) -> list[Path]:
    """Write the held-out sample photos of `NEGATIVE_SAMPLES` as JPEGs into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in NEGATIVE_SAMPLES:
        target = out_dir / f"{name}.jpg"
        cv2.imwrite(str(target), sample_photo(name), [cv2.IMWRITE_JPEG_QUALITY, 95])
        written.append(target)
    return written


class PhotoLibrary:
    """Photos held in memory, from which random background crops are cut."""

    def __init__(self, photos: list[Image]) -> None:
        if not photos:
            raise ValueError("a photo library needs at least one photo")
        self._photos = photos

    @classmethod
    def load(cls, *folders: Path) -> PhotoLibrary:
        """Every image in ``folders``; raises MissingAssetError if one holds none."""
        photos: list[Image] = []
        for folder in folders:
            files = sorted(p for p in folder.glob("*") if p.suffix.lower() in _SUFFIXES)
            found = [
                img
                for img in (cv2.imread(str(p), cv2.IMREAD_COLOR) for p in files)
                if img is not None
            ]
            if not found:
                raise MissingAssetError(
                    f"no photos in {folder}; write them with `predictor data photos --out "
                    f"{folder.parent}` (after `make training-assets`)"
                )
            photos.extend(np.asarray(p, dtype=np.uint8) for p in found)
        return cls(photos)

    def __len__(self) -> int:
        return len(self._photos)

    def background(self, rng: np.random.Generator, width: int, height: int) -> Image:
        """A ``height x width`` crop of a random photo, at a random zoom, maybe mirrored."""
        photo = self._photos[int(rng.integers(len(self._photos)))]
        photo_height, photo_width = photo.shape[:2]
        # The smallest zoom that still covers the output, times up to 2.5.
        cover = max(width / photo_width, height / photo_height)
        zoom = cover * math.exp(float(rng.uniform(0.0, math.log(2.5))))
        crop_width = min(photo_width, max(1, math.ceil(width / zoom)))
        crop_height = min(photo_height, max(1, math.ceil(height / zoom)))
        x = int(rng.integers(0, photo_width - crop_width + 1))
        y = int(rng.integers(0, photo_height - crop_height + 1))
        crop = photo[y : y + crop_height, x : x + crop_width]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        resized = cv2.resize(
            np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_AREA
        )
        return np.asarray(resized, dtype=np.uint8)


def _image_files(roots: tuple[Path, ...]) -> Iterator[Path]:
    for root in roots:
        if root.is_dir():
            yield from sorted(p for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES)


def _wallpaper_name(path: Path) -> str:
    """plasma: the folder above ``contents/images`` (``-dark`` for ``images_dark``);
    otherwise the file's stem without a ``_WIDTHxHEIGHT`` suffix (gnome's ``-l`` and ``-d``
    are different pictures: both kept)."""
    if path.parent.parent.name == "contents" and path.parent.name.startswith("images"):
        dark = "-dark" if path.parent.name == "images_dark" else ""
        return path.parent.parent.parent.name + dark
    stem = path.stem
    base, _, suffix = stem.rpartition("_")
    if base and suffix.replace("x", "").isdigit():
        return base
    return stem


def _write_background(image: NDArray[Any], target: Path) -> None:
    """``image`` (as OpenCV read it) as the JPEG a photo library loads: at most
    `_LONGEST_SIDE`, quality 92."""
    cv2.imwrite(
        str(target), _downscale(np.asarray(image, np.uint8)), [cv2.IMWRITE_JPEG_QUALITY, 92]
    )


def _downscale(image: Image) -> Image:
    longest = max(image.shape[:2])
    if longest <= _LONGEST_SIDE:
        return image
    factor = _LONGEST_SIDE / longest
    size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA), dtype=np.uint8)


def sample_photo(name: str) -> Image:
    """A BGR sample photo from scikit-image or matplotlib (development extras) by name."""
    if name in ("grace_hopper", "Minduka_Present_Blue_Pack"):
        import matplotlib.cbook

        suffix = ".jpg" if name == "grace_hopper" else ".png"
        path = matplotlib.cbook.get_sample_data(name + suffix, asfileobj=False)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise MissingAssetError(f"cannot read matplotlib's sample photo {path}")
        return np.asarray(image, dtype=np.uint8)
    from skimage import data

    loaded = getattr(data, "stereo_motorcycle" if name == "motorcycle_left" else name)()
    pixels = np.asarray(loaded[0] if name == "motorcycle_left" else loaded, dtype=np.uint8)
    if pixels.ndim == 2:
        return np.asarray(cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR), dtype=np.uint8)
    return np.ascontiguousarray(pixels[:, :, 2::-1])
