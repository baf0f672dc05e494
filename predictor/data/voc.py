"""Pascal VOC: ``DIR/annotations/NAME.xml`` per image, ``DIR/classes.txt``.

VOC boxes are 1-based inclusive pixel indices; :class:`~predictor.data.boxes.Box`
converts them exactly. Error locations name the XML element, XPath-style with 1-based
indices (``annotation/object[2]/bndbox/xmin``), since ElementTree keeps no line numbers.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from predictor.data.boxes import Annotation, Box
from predictor.data.dataset import (
    CLASSES_FILE,
    IMAGES_DIR,
    Dataset,
    ImageRecord,
    check_unique_stems,
    checked_file_name,
    parse_number,
    read_classes,
    write_classes,
)
from predictor.data.errors import DatasetError
from predictor.data.imageinfo import read_image_size

ANNOTATIONS_DIR = "annotations"


def read_voc(root: Path) -> Dataset:
    """Read a VOC dataset directory; raises DatasetError on any bad input."""
    classes = read_classes(root / CLASSES_FILE)
    annotations_dir = root / ANNOTATIONS_DIR
    if not annotations_dir.is_dir():
        raise DatasetError(annotations_dir, "missing annotations folder")
    xml_files = sorted(annotations_dir.rglob("*.xml"), key=lambda p: p.as_posix())
    dataset = Dataset(classes=classes)
    for xml_path in xml_files:
        dataset.images.append(_read_annotation(xml_path, annotations_dir, root, classes))
    return dataset


def _read_annotation(
    xml_path: Path, annotations_dir: Path, root: Path, classes: tuple[str, ...]
) -> ImageRecord:
    try:
        element = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        line, column = exc.position
        problem = str(exc).split(":", 1)[0]
        raise DatasetError(
            xml_path, f"malformed XML: {problem}", line=line, column=column + 1
        ) from None
    except OSError as exc:
        raise DatasetError(xml_path, f"cannot read: {exc.strerror}") from None
    if element.tag != "annotation":
        raise DatasetError(
            xml_path, f"root element is <{element.tag}>, expected <annotation>", where=element.tag
        )

    where = "annotation/filename"
    base_name = checked_file_name(_text(element, "filename", xml_path), xml_path, where)
    subdir = xml_path.parent.relative_to(annotations_dir).as_posix()
    file_name = str(PurePosixPath(subdir) / base_name) if subdir != "." else base_name
    width = _positive_int(element, "size/width", xml_path)
    height = _positive_int(element, "size/height", xml_path)
    depth_element = element.find("size/depth")
    depth = 3
    if depth_element is not None and depth_element.text and depth_element.text.strip():
        depth = _positive_int(element, "size/depth", xml_path)

    image_path = root / IMAGES_DIR / file_name
    try:
        actual = read_image_size(image_path)
    except DatasetError as exc:
        raise DatasetError(xml_path, f"{exc.problem}: {image_path}", where=where) from None
    if actual != (width, height):
        raise DatasetError(
            xml_path,
            f"size {width}x{height} does not match the image {image_path} "
            f"({actual[0]}x{actual[1]})",
            where="annotation/size",
        )

    objects: list[Annotation] = []
    for index, obj in enumerate(element.findall("object"), start=1):
        prefix = f"annotation/object[{index}]"
        label = _text(obj, "name", xml_path, prefix).strip()
        if label not in classes:
            raise DatasetError(
                xml_path, f"unknown class {label!r} (not in {CLASSES_FILE})", where=f"{prefix}/name"
            )
        corners = [
            _number(obj, f"bndbox/{name}", xml_path, prefix)
            for name in ("xmin", "ymin", "xmax", "ymax")
        ]
        box = Box.from_voc(*corners)
        box_problem = box.problem(width, height)
        if box_problem:
            voc = ", ".join(f"{c:g}" for c in corners)
            raise DatasetError(
                xml_path,
                f"{box_problem}; VOC values (1-based inclusive): {voc}",
                where=f"{prefix}/bndbox",
            )
        objects.append(Annotation(label, box))
    return ImageRecord(
        file_name=file_name,
        image_path=image_path,
        width=width,
        height=height,
        objects=objects,
        depth=depth,
    )


def _text(parent: ET.Element, path: str, xml_path: Path, prefix: str = "annotation") -> str:
    found = parent.find(path)
    if found is None:
        raise DatasetError(xml_path, "missing element", where=f"{prefix}/{path}")
    return found.text or ""


def _number(parent: ET.Element, path: str, xml_path: Path, prefix: str = "annotation") -> float:
    text = _text(parent, path, xml_path, prefix)
    number = parse_number(text)
    if number is None:
        raise DatasetError(xml_path, f"not a number: {text!r}", where=f"{prefix}/{path}")
    return number


def _positive_int(parent: ET.Element, path: str, xml_path: Path) -> int:
    number = _number(parent, path, xml_path)
    if number != int(number) or number <= 0:
        raise DatasetError(
            xml_path, f"expected a positive integer, got {number:g}", where=f"annotation/{path}"
        )
    return int(number)


def write_voc(dataset: Dataset, root: Path) -> None:
    """Write ``classes.txt`` and one XML file per image (images are not touched)."""
    check_unique_stems(dataset, "voc")
    write_classes(root / CLASSES_FILE, dataset.classes)
    for record in dataset.images:
        xml_path = root / ANNOTATIONS_DIR / f"{record.stem}.xml"
        xml_path.parent.mkdir(parents=True, exist_ok=True)
        xml_path.write_text(_to_xml(record), encoding="utf-8")


def _to_xml(record: ImageRecord) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = IMAGES_DIR
    ET.SubElement(root, "filename").text = PurePosixPath(record.file_name).name
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(record.width)
    ET.SubElement(size, "height").text = str(record.height)
    ET.SubElement(size, "depth").text = str(record.depth)
    ET.SubElement(root, "segmented").text = "0"
    for annotation in record.objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = annotation.label
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for name, value in zip(
            ("xmin", "ymin", "xmax", "ymax"), annotation.box.to_voc(), strict=True
        ):
            ET.SubElement(bndbox, name).text = str(value)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"
