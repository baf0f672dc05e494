"""VOC, COCO and YOLO writers and readers: exact round trips through real files."""

from __future__ import annotations

import json
import os
import string
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.data import (
    FORMATS,
    Annotation,
    Box,
    Dataset,
    DatasetError,
    Format,
    ImageRecord,
    detect_format,
    load_dataset,
    save_dataset,
)

from .helpers import write_blank_png

ImageSpec = tuple[int, int, list[Annotation]]
Summary = tuple[tuple[str, ...], list[tuple[str, int, int, list[Annotation]]]]


@st.composite
def boxes_in(draw: st.DrawFn, width: int, height: int) -> Box:
    xmin = draw(st.integers(0, width - 1))
    ymin = draw(st.integers(0, height - 1))
    return Box(xmin, ymin, draw(st.integers(xmin + 1, width)), draw(st.integers(ymin + 1, height)))


@st.composite
def dataset_specs(draw: st.DrawFn) -> tuple[tuple[str, ...], list[ImageSpec]]:
    name = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=8)
    classes = tuple(draw(st.lists(name, min_size=1, max_size=5, unique=True)))
    images: list[ImageSpec] = []
    for _ in range(draw(st.integers(1, 3))):
        width, height = draw(st.integers(1, 8000)), draw(st.integers(1, 8000))
        objects = draw(
            st.lists(
                st.builds(Annotation, st.sampled_from(classes), boxes_in(width, height)),
                max_size=4,
            )
        )
        images.append((width, height, objects))
    return classes, images


def summary(dataset: Dataset) -> Summary:
    return dataset.classes, [
        (r.file_name, r.width, r.height, list(r.objects)) for r in dataset.images
    ]


def make_source(root: Path, classes: tuple[str, ...], images: list[ImageSpec]) -> Dataset:
    dataset = Dataset(classes=classes)
    for index, (width, height, objects) in enumerate(images):
        path = root / f"img{index}.png"
        write_blank_png(path, width, height)
        dataset.images.append(ImageRecord(path.name, path, width, height, list(objects)))
    return dataset


def check_files_independently(root: Path, fmt: Format, dataset: Dataset) -> None:
    """Read the written files without our readers, to pin down each convention."""
    if fmt == "voc":
        for record in dataset.images:
            tree = ET.parse(root / "annotations" / f"{record.stem}.xml").getroot()
            assert tree.findtext("filename") == record.file_name
            assert tree.findtext("size/width") == str(record.width)
            written = [
                (
                    obj.findtext("name"),
                    tuple(
                        int(obj.findtext(f"bndbox/{k}") or "")
                        for k in ("xmin", "ymin", "xmax", "ymax")
                    ),
                )
                for obj in tree.findall("object")
            ]
            # 1-based inclusive: the first pixel column is 1, the last is xmax.
            expected = [
                (a.label, (a.box.xmin + 1, a.box.ymin + 1, a.box.xmax, a.box.ymax))
                for a in record.objects
            ]
            assert written == expected
    elif fmt == "coco":
        document = json.loads((root / "annotations.json").read_text())
        names = {c["id"]: c["name"] for c in document["categories"]}
        written_coco = [(names[a["category_id"]], a["bbox"]) for a in document["annotations"]]
        expected_coco = [
            (a.label, [a.box.xmin, a.box.ymin, a.box.width, a.box.height])
            for r in dataset.images
            for a in r.objects
        ]
        assert written_coco == expected_coco
    else:
        for record in dataset.images:
            lines = (root / "labels" / f"{record.stem}.txt").read_text().splitlines()
            assert len(lines) == len(record.objects)
            for line, a in zip(lines, record.objects, strict=True):
                index, cx, cy, w, h = line.split()
                assert dataset.classes[int(index)] == a.label
                left = (float(cx) - float(w) / 2) * record.width
                bottom = (float(cy) + float(h) / 2) * record.height
                assert abs(left - a.box.xmin) < 1e-3 and abs(bottom - a.box.ymax) < 1e-3


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=dataset_specs(), chain=st.permutations(FORMATS))
def test_every_conversion_round_trips_exactly(
    spec: tuple[tuple[str, ...], list[ImageSpec]], chain: list[Format]
) -> None:
    classes, images = spec
    with tempfile.TemporaryDirectory() as tmp:
        source = make_source(Path(tmp) / "source", classes, images)
        expected = summary(source)
        current = source
        # voc -> coco -> yolo -> voc, in every order; each hop is checked.
        for step, fmt in enumerate([*chain, chain[0]]):
            out = Path(tmp) / f"{step}-{fmt}"
            save_dataset(current, out, fmt)
            check_files_independently(out, fmt, current)
            assert detect_format(out) == fmt
            loaded = load_dataset(out)
            assert summary(loaded) == expected
            current = loaded


def test_save_links_images_and_returns_new_paths(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", ("a",), [(5, 4, [Annotation("a", Box(0, 0, 5, 4))])])
    saved = save_dataset(source, tmp_path / "out", "yolo")
    target = tmp_path / "out" / "images" / "img0.png"
    assert saved.images[0].image_path == target
    assert source.images[0].image_path == tmp_path / "src" / "img0.png"
    assert os.path.samefile(target, source.images[0].image_path)  # hard link, not a copy
    copied = save_dataset(source, tmp_path / "copy", "voc", copy_images=True)
    assert not os.path.samefile(copied.images[0].image_path, target)
    assert copied.images[0].image_path.read_bytes() == target.read_bytes()


def test_images_without_objects_survive_every_format(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", ("a", "b"), [(9, 9, []), (9, 9, [])])
    for fmt in FORMATS:
        save_dataset(source, tmp_path / fmt, fmt)
        assert summary(load_dataset(tmp_path / fmt, fmt)) == summary(source)


def test_nested_image_folders(tmp_path: Path) -> None:
    path = tmp_path / "src" / "sub" / "x.png"
    write_blank_png(path, 8, 6)
    record = ImageRecord("sub/x.png", path, 8, 6, [Annotation("a", Box(1, 2, 3, 4))])
    source = Dataset(("a",), [record])
    for fmt in FORMATS:
        save_dataset(source, tmp_path / fmt, fmt)
        assert summary(load_dataset(tmp_path / fmt)) == summary(source)


def test_save_refuses_non_empty_dir_and_bad_datasets(tmp_path: Path) -> None:
    source = make_source(tmp_path / "src", ("a",), [(5, 4, [Annotation("a", Box(0, 0, 5, 4))])])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "old.txt").write_text("x")
    with pytest.raises(DatasetError, match="busy: output directory exists and is not empty"):
        save_dataset(source, tmp_path / "busy", "voc")
    source.images[0].objects.append(Annotation("zebra", Box(0, 0, 1, 1)))
    with pytest.raises(DatasetError, match=r"img0\.png: unknown class 'zebra'"):
        save_dataset(source, tmp_path / "out1", "coco")
    source.images[0].objects[-1] = Annotation("a", Box(0, 0, 6, 1))
    with pytest.raises(DatasetError, match=r"img0\.png: box .* outside"):
        save_dataset(source, tmp_path / "out2", "coco")


def test_two_images_sharing_an_annotation_name_are_refused(tmp_path: Path) -> None:
    write_blank_png(tmp_path / "src" / "a.png", 4, 4)
    (tmp_path / "src" / "a.jpg").write_bytes((tmp_path / "src" / "a.png").read_bytes())
    source = Dataset(
        ("x",),
        [
            ImageRecord("a.png", tmp_path / "src" / "a.png", 4, 4),
            ImageRecord("a.jpg", tmp_path / "src" / "a.jpg", 4, 4),
        ],
    )
    with pytest.raises(DatasetError, match="would share one annotation file"):
        save_dataset(source, tmp_path / "out", "voc")


def test_targets_for_training() -> None:
    dataset = Dataset(("a", "b"))
    record = ImageRecord("x.png", Path("x.png"), 10, 10, [Annotation("b", Box(1, 2, 3, 4))])
    assert dataset.targets(record).tolist() == [[1.0, 2.0, 3.0, 4.0, 1.0]]
    assert dataset.targets(ImageRecord("y.png", Path("y.png"), 10, 10)).shape == (0, 5)
