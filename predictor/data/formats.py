"""Reading and writing whole dataset directories in any supported format.

=======  ===========================================================================
format   layout of ``DIR``
=======  ===========================================================================
voc      ``images/NAME.jpg``, ``annotations/NAME.xml``, ``classes.txt``
coco     ``images/NAME.jpg``, ``annotations.json``
yolo     ``images/NAME.jpg``, ``labels/NAME.txt``, ``classes.txt``
=======  ===========================================================================
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Literal, get_args

from predictor.data.coco import ANNOTATIONS_FILE, read_coco, write_coco
from predictor.data.dataset import IMAGES_DIR, Dataset
from predictor.data.errors import DatasetError
from predictor.data.voc import ANNOTATIONS_DIR, read_voc, write_voc
from predictor.data.yolo import LABELS_DIR, read_yolo, write_yolo

Format = Literal["voc", "coco", "yolo"]
FORMATS: tuple[Format, ...] = get_args(Format)

_READERS: dict[Format, Callable[[Path], Dataset]] = {
    "voc": read_voc,
    "coco": read_coco,
    "yolo": read_yolo,
}
_WRITERS: dict[Format, Callable[[Dataset, Path], None]] = {
    "voc": write_voc,
    "coco": write_coco,
    "yolo": write_yolo,
}


def check_format(name: str) -> Format:
    """Validate a format name from user input."""
    for fmt in FORMATS:
        if name == fmt:
            return fmt
    raise ValueError(f"unknown dataset format {name!r}; expected one of {', '.join(FORMATS)}")


def detect_format(root: Path) -> Format:
    """Which format a dataset directory is in, from the annotation files it holds."""
    if not root.is_dir():
        raise DatasetError(root, "not a dataset directory (does not exist)")
    found: list[Format] = []
    if (root / ANNOTATIONS_FILE).is_file():
        found.append("coco")
    if (root / ANNOTATIONS_DIR).is_dir():
        found.append("voc")
    if (root / LABELS_DIR).is_dir():
        found.append("yolo")
    if not found:
        raise DatasetError(
            root,
            f"cannot tell the dataset format: expected {ANNOTATIONS_DIR}/ (voc), "
            f"{ANNOTATIONS_FILE} (coco) or {LABELS_DIR}/ (yolo)",
        )
    if len(found) > 1:
        raise DatasetError(
            root, f"ambiguous dataset format (looks like {' and '.join(found)}); name it explicitly"
        )
    return found[0]


def load_dataset(root: Path | str, fmt: Format | None = None) -> Dataset:
    """Read a dataset directory, detecting its format unless ``fmt`` is given.

    Every image file is checked to exist and to have the size its annotation claims;
    every box must be non-empty and inside its image; every label must be a known class.
    Raises DatasetError naming the offending file (and line / element) otherwise.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "not a dataset directory (does not exist)")
    return _READERS[fmt or detect_format(root)](root)


def save_dataset(
    dataset: Dataset, root: Path | str, fmt: Format, *, copy_images: bool = False
) -> Dataset:
    """Write a dataset to a new or empty directory in the given format.

    Images are hard-linked into ``root/images`` (copied if ``copy_images`` or if linking
    is not possible, e.g. across file systems). Refuses a non-empty ``root`` so that stale
    files from an earlier dataset can never be read back as part of this one. Returns the
    dataset as saved, its records pointing at the new image files; ``dataset`` is unchanged.
    """
    root = Path(root)
    _check_writable(dataset)
    require_empty_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    saved = Dataset(classes=dataset.classes)
    for record in dataset.images:
        target = root / IMAGES_DIR / record.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        _place_image(record.image_path, target, copy_images)
        saved.images.append(replace(record, image_path=target, objects=list(record.objects)))
    write_annotations(saved, root, fmt)
    return saved


def write_annotations(dataset: Dataset, root: Path, fmt: Format) -> None:
    """Write only the annotation files for images already in ``root/images``."""
    _WRITERS[fmt](dataset, root)


def _check_writable(dataset: Dataset) -> None:
    """Refuse to write what could not be read back."""
    for record in dataset.images:
        for annotation in record.objects:
            if annotation.label not in dataset.classes:
                raise DatasetError(record.image_path, f"unknown class {annotation.label!r}")
            problem = annotation.box.problem(record.width, record.height)
            if problem:
                raise DatasetError(record.image_path, problem)


def require_empty_dir(root: Path) -> None:
    """Raise DatasetError unless ``root`` is missing or an empty directory."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(root, "output directory exists and is not empty")


def _place_image(source: Path, target: Path, copy_images: bool) -> None:
    if not source.is_file():
        raise DatasetError(source, "missing image file")
    if not copy_images:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # Different file system or no hard-link support: fall back to a copy.
    shutil.copyfile(source, target)
