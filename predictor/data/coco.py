"""COCO: one ``DIR/annotations.json`` for the whole dataset.

Boxes are ``bbox: [x, y, w, h]`` in pixels, which share their edges with our half-open
boxes. Category ids are written as ``class index + 1`` (COCO reserves 0); on reading,
classes are ordered by category id. Error locations are JSON paths such as
``annotations[3].bbox``; a file that is not valid JSON is reported by line and column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from predictor.data.boxes import Annotation, Box
from predictor.data.dataset import (
    IMAGES_DIR,
    Dataset,
    ImageRecord,
    checked_file_name,
    parse_number,
)
from predictor.data.errors import DatasetError
from predictor.data.imageinfo import read_image_size

ANNOTATIONS_FILE = "annotations.json"


def read_coco(root: Path) -> Dataset:
    """Read a COCO dataset directory; raises DatasetError on any bad input."""
    path = root / ANNOTATIONS_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(path, "missing annotation file") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(
            path, f"malformed JSON: {exc.msg}", line=exc.lineno, column=exc.colno
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read: {exc}") from None
    if not isinstance(document, dict):
        raise DatasetError(path, "expected a JSON object at the top level", where="$")

    reader = _Reader(path)
    categories = reader.list_of_objects(document, "categories")
    images = reader.list_of_objects(document, "images")
    annotations = reader.list_of_objects(document, "annotations")

    category_names: dict[int, str] = {}
    for index, category in enumerate(categories):
        where = f"categories[{index}]"
        category_id = reader.integer(category, "id", where)
        name = category.get("name")
        if not isinstance(name, str) or not name.strip():
            raise DatasetError(path, "expected a non-empty string", where=f"{where}.name")
        if category_id in category_names:
            raise DatasetError(path, f"duplicate category id {category_id}", where=f"{where}.id")
        if name.strip() in category_names.values():
            raise DatasetError(path, f"duplicate category name {name!r}", where=f"{where}.name")
        category_names[category_id] = name.strip()
    if not category_names:
        raise DatasetError(path, "no categories", where="categories")
    classes = tuple(category_names[key] for key in sorted(category_names))

    records: dict[int, ImageRecord] = {}
    for index, image in enumerate(images):
        where = f"images[{index}]"
        image_id = reader.integer(image, "id", where)
        if image_id in records:
            raise DatasetError(path, f"duplicate image id {image_id}", where=f"{where}.id")
        file_name = checked_file_name(image.get("file_name"), path, f"{where}.file_name")
        width = reader.integer(image, "width", where, minimum=1)
        height = reader.integer(image, "height", where, minimum=1)
        image_path = root / IMAGES_DIR / file_name
        try:
            actual = read_image_size(image_path)
        except DatasetError as exc:
            raise DatasetError(
                path, f"{exc.problem}: {image_path}", where=f"{where}.file_name"
            ) from None
        if actual != (width, height):
            raise DatasetError(
                path,
                f"size {width}x{height} does not match the image {image_path} "
                f"({actual[0]}x{actual[1]})",
                where=where,
            )
        records[image_id] = ImageRecord(file_name, image_path, width, height)

    for index, annotation in enumerate(annotations):
        where = f"annotations[{index}]"
        image_id = reader.integer(annotation, "image_id", where)
        record = records.get(image_id)
        if record is None:
            raise DatasetError(path, f"no image with id {image_id}", where=f"{where}.image_id")
        category_id = reader.integer(annotation, "category_id", where)
        label = category_names.get(category_id)
        if label is None:
            raise DatasetError(
                path,
                f"unknown class: no category with id {category_id}",
                where=f"{where}.category_id",
            )
        bbox = annotation.get("bbox")
        if not isinstance(bbox, list):
            raise DatasetError(path, "expected a list [x, y, w, h]", where=f"{where}.bbox")
        if len(bbox) != 4:
            raise DatasetError(
                path, f"expected 4 numbers [x, y, w, h], got {len(bbox)}", where=f"{where}.bbox"
            )
        numbers: list[float] = []
        for value in bbox:
            # JSON strings are not numbers, even when they look like one.
            number = None if isinstance(value, str) else parse_number(value)
            if number is None:
                raise DatasetError(path, f"non-numeric value {value!r}", where=f"{where}.bbox")
            numbers.append(number)
        box = Box.from_coco(*numbers)
        problem = box.problem(record.width, record.height)
        if problem:
            raise DatasetError(path, f"{problem}; bbox {bbox!r}", where=f"{where}.bbox")
        record.objects.append(Annotation(label, box))

    return Dataset(classes=classes, images=list(records.values()))


class _Reader:
    """Typed access to JSON values, raising DatasetError with the JSON path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def list_of_objects(self, document: dict[str, Any], key: str) -> list[dict[str, Any]]:
        value = document.get(key)
        if not isinstance(value, list):
            raise DatasetError(self.path, "missing or not a list", where=key)
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise DatasetError(self.path, "expected a JSON object", where=f"{key}[{index}]")
        return value

    def integer(
        self, item: dict[str, Any], key: str, where: str, minimum: int | None = None
    ) -> int:
        value = item.get(key)
        if isinstance(value, bool) or not isinstance(value, int):
            problem = "missing" if value is None else f"expected an integer, got {value!r}"
            raise DatasetError(self.path, problem, where=f"{where}.{key}")
        if minimum is not None and value < minimum:
            raise DatasetError(
                self.path, f"must be at least {minimum}, got {value}", where=f"{where}.{key}"
            )
        return value


def write_coco(dataset: Dataset, root: Path) -> None:
    """Write ``annotations.json`` (images are not touched)."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, record in enumerate(dataset.images, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": record.file_name,
                "width": record.width,
                "height": record.height,
            }
        )
        for annotation in record.objects:
            box = annotation.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": dataset.class_index(annotation.label) + 1,
                    "bbox": list(box.to_coco()),
                    "area": box.area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(dataset.classes)]
    document = {"images": images, "annotations": annotations, "categories": categories}
    (root / ANNOTATIONS_FILE).write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
