"""The in-memory dataset that every on-disk format is read into and written from.

A dataset directory always keeps its images under ``DIR/images/``; an image's
``file_name`` is its path relative to that folder, with ``/`` separators. Annotation
files are named after the image without its extension (``images/a/b.jpg`` ->
``annotations/a/b.xml`` or ``labels/a/b.txt``). Boxes follow :mod:`predictor.data.boxes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.typing import NDArray

from predictor.data.boxes import Annotation
from predictor.data.errors import DatasetError

IMAGES_DIR = "images"
CLASSES_FILE = "classes.txt"


@dataclass
class ImageRecord:
    """One image of a dataset and its labelled objects."""

    file_name: str
    """Path relative to ``DIR/images``, ``/``-separated."""
    image_path: Path
    """Where the image file is now (absolute or relative to the working directory)."""
    width: int
    height: int
    objects: list[Annotation] = field(default_factory=list)
    depth: int = 3

    @property
    def stem(self) -> str:
        """``file_name`` without its extension: the name of the annotation file."""
        return str(PurePosixPath(self.file_name).with_suffix(""))


@dataclass
class Dataset:
    """Class names in id order, and the images with their objects."""

    classes: tuple[str, ...]
    images: list[ImageRecord] = field(default_factory=list)

    def class_index(self, label: str) -> int:
        """The class id of a name (its position in ``classes``)."""
        return self.classes.index(label)

    def targets(self, record: ImageRecord) -> NDArray[np.float32]:
        """``(N, 5)`` float32 rows ``xmin, ymin, xmax, ymax, class_id`` for training.

        Coordinates are the half-open pixel edges of :mod:`predictor.data.boxes`.
        """
        rows = [(*a.box.as_tuple(), self.class_index(a.label)) for a in record.objects]
        return np.asarray(rows, dtype=np.float32).reshape(-1, 5)

    @property
    def object_count(self) -> int:
        """Total number of labelled objects."""
        return sum(len(record.objects) for record in self.images)


def checked_file_name(name: object, path: Path, where: str) -> str:
    """Validate an image name from an annotation file: relative, inside ``images/``.

    Rejecting ``..`` and absolute paths keeps a hostile annotation file from making
    ``save_dataset`` write outside its output directory.
    """
    if not isinstance(name, str) or not name.strip():
        raise DatasetError(path, "image file name must be a non-empty string", where=where)
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or ".." in posix.parts or ":" in name:
        raise DatasetError(
            path, f"image file name {name!r} must be relative to images/", where=where
        )
    return str(posix)


def read_classes(path: Path) -> tuple[str, ...]:
    """Read ``classes.txt``: one class name per line, in class-id order."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(path, "missing classes file (one class name per line)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read classes file: {exc}") from None
    lines = text.splitlines()
    # Trailing blank lines are harmless; a blank line in the middle would shift class ids.
    while lines and not lines[-1].strip():
        lines.pop()
    classes: list[str] = []
    for number, raw in enumerate(lines, start=1):
        name = raw.strip()
        if not name:
            raise DatasetError(path, "empty class name", line=number)
        if name in classes:
            raise DatasetError(path, f"duplicate class name {name!r}", line=number)
        classes.append(name)
    if not classes:
        raise DatasetError(path, "no class names")
    return tuple(classes)


def write_classes(path: Path, classes: Sequence[str]) -> None:
    """Write ``classes.txt``."""
    path.write_text("".join(f"{name}\n" for name in classes), encoding="utf-8")


def check_unique_stems(dataset: Dataset, fmt: str) -> None:
    """Two images whose names differ only by extension would share an annotation file."""
    seen: dict[str, str] = {}
    for record in dataset.images:
        other = seen.setdefault(record.stem, record.file_name)
        if other != record.file_name:
            raise DatasetError(
                record.image_path,
                f"cannot write as {fmt}: {other!r} and {record.file_name!r} "
                "would share one annotation file",
            )


def parse_number(value: object) -> float | None:
    """A finite number from JSON/XML/text input, or None if it is not one.

    Booleans are not numbers here, even though Python treats them as ints.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None
