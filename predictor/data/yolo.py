"""YOLO: ``DIR/labels/NAME.txt`` per image, ``DIR/classes.txt``.

Each label line is ``class_index cx cy w h`` with the centre and size normalised by the
image size. Images without a label file have no objects (the usual YOLO convention); a
label file without an image is an error. Image sizes come from the image headers.
"""

from __future__ import annotations

from pathlib import Path

from predictor.data.boxes import Annotation, Box, format_yolo_value
from predictor.data.dataset import (
    CLASSES_FILE,
    IMAGES_DIR,
    Dataset,
    ImageRecord,
    check_unique_stems,
    parse_number,
    read_classes,
    write_classes,
)
from predictor.data.errors import DatasetError
from predictor.data.imageinfo import is_image_file, read_image_size

LABELS_DIR = "labels"


def read_yolo(root: Path) -> Dataset:
    """Read a YOLO dataset directory; raises DatasetError on any bad input."""
    classes = read_classes(root / CLASSES_FILE)
    images_dir = root / IMAGES_DIR
    labels_dir = root / LABELS_DIR
    if not images_dir.is_dir():
        raise DatasetError(images_dir, "missing images folder")
    image_paths = sorted(
        (p for p in images_dir.rglob("*") if p.is_file() and is_image_file(p)),
        key=lambda p: p.as_posix(),
    )
    by_stem: dict[str, Path] = {}
    for image_path in image_paths:
        stem = image_path.relative_to(images_dir).with_suffix("").as_posix()
        if stem in by_stem:
            raise DatasetError(
                image_path,
                f"two images share the label file {LABELS_DIR}/{stem}.txt: {by_stem[stem].name}",
            )
        by_stem[stem] = image_path

    if labels_dir.is_dir():
        for label_path in sorted(labels_dir.rglob("*.txt"), key=lambda p: p.as_posix()):
            stem = label_path.relative_to(labels_dir).with_suffix("").as_posix()
            if stem not in by_stem:
                raise DatasetError(
                    label_path, f"missing image file {images_dir / stem}.* for this label file"
                )

    dataset = Dataset(classes=classes)
    for stem, image_path in by_stem.items():
        width, height = read_image_size(image_path)
        record = ImageRecord(
            file_name=image_path.relative_to(images_dir).as_posix(),
            image_path=image_path,
            width=width,
            height=height,
        )
        label_path = labels_dir / f"{stem}.txt"
        if label_path.is_file():
            record.objects = _read_labels(label_path, width, height, classes)
        dataset.images.append(record)
    return dataset


def _read_labels(path: Path, width: int, height: int, classes: tuple[str, ...]) -> list[Annotation]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read: {exc}") from None
    objects: list[Annotation] = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise DatasetError(
                path, f"expected 5 fields (class cx cy w h), got {len(fields)}", line=number
            )
        try:
            class_index = int(fields[0])
        except ValueError:
            raise DatasetError(
                path, f"class index must be an integer, got {fields[0]!r}", line=number
            ) from None
        if not 0 <= class_index < len(classes):
            raise DatasetError(
                path,
                f"unknown class index {class_index} ({CLASSES_FILE} has {len(classes)} classes)",
                line=number,
            )
        values: list[float] = []
        for field_text in fields[1:]:
            value = parse_number(field_text)
            if value is None:
                raise DatasetError(path, f"non-numeric value {field_text!r}", line=number)
            values.append(value)
        cx, cy, w, h = values
        box = Box.from_yolo(cx, cy, w, h, width, height)
        problem = box.problem(width, height)
        if problem:
            raise DatasetError(path, problem, line=number)
        objects.append(Annotation(classes[class_index], box))
    return objects


def write_yolo(dataset: Dataset, root: Path) -> None:
    """Write ``classes.txt`` and one label file per image (images are not touched).

    Every image gets a label file, empty if it has no objects, so that a missing file
    is never mistaken for "no objects" by a reader that checks.
    """
    check_unique_stems(dataset, "yolo")
    write_classes(root / CLASSES_FILE, dataset.classes)
    for record in dataset.images:
        path = root / LABELS_DIR / f"{record.stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for annotation in record.objects:
            values = annotation.box.to_yolo(record.width, record.height)
            text = " ".join(format_yolo_value(v) for v in values)
            lines.append(f"{dataset.class_index(annotation.label)} {text}\n")
        path.write_text("".join(lines), encoding="utf-8")
