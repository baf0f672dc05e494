"""Bad dataset input: `predictor data convert` names the file and line, exits 2, no traceback."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from predictor.data import Format, SceneConfig, synthesize

from .helpers import run_cli, run_cli_subprocess

SMALL = SceneConfig(min_side=64, max_side=96, max_objects=3)


@pytest.fixture(scope="module")
def clean_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("clean")
    formats: tuple[Format, ...] = ("voc", "coco", "yolo")
    for fmt in formats:
        synthesize(root / fmt, 2, seed=3, fmt=fmt, config=SMALL, progress=False)
    return {fmt: root / fmt for fmt in formats}


def edit_xml(old: str, new: str, count: int = 1) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / "annotations" / "000000.xml"
        text = path.read_text()
        assert old in text
        path.write_text(text.replace(old, new, count))

    return corrupt


def replace_first_bndbox_value(tag: str, value: Callable[[int], str]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / "annotations" / "000000.xml"
        text = path.read_text()
        match = re.search(rf"<{tag}>(\d+)</{tag}>", text)
        assert match
        old = match.group(0)
        path.write_text(text.replace(old, f"<{tag}>{value(int(match.group(1)))}</{tag}>", 1))

    return corrupt


def remove_first_xml_element(tag: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / "annotations" / "000000.xml"
        text, count = re.subn(rf"<{tag}>[^<]*</{tag}>", "", path.read_text(), count=1)
        assert count == 1
        path.write_text(text)

    return corrupt


def edit_json(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / "annotations.json"
        document = json.loads(path.read_text())
        change(document)
        path.write_text(json.dumps(document, indent=1))

    return corrupt


def set_in(document: dict[str, Any], section: str, key: str, value: Any) -> None:
    document[section][0][key] = value


def append_label_line(line: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        path = root / "labels" / "000000.txt"
        path.write_text(path.read_text() + line + "\n")

    return corrupt


def label_line_number(root: Path) -> int:
    """The line number a line appended by append_label_line gets."""
    return len((root / "labels" / "000000.txt").read_text().splitlines()) + 1


def delete(relative: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        (root / relative).unlink()

    return corrupt


def truncate_json(root: Path) -> None:
    path = root / "annotations.json"
    path.write_text(path.read_text()[:-40])


def write_file(relative: str, text: str) -> Callable[[Path], None]:
    def corrupt(root: Path) -> None:
        (root / relative).write_text(text)

    return corrupt


# (format, id, corruption, fragments the message must contain; "{line}" = appended line)
CASES: list[tuple[Format, str, Callable[[Path], None], list[str]]] = [
    (
        "voc",
        "missing-image",
        delete("images/000000.jpg"),
        ["000000.xml: annotation/filename: missing image file", "images/000000.jpg"],
    ),
    (
        "voc",
        "box-outside",
        replace_first_bndbox_value("xmax", lambda v: str(v + 1000)),
        ["000000.xml: annotation/object[1]/bndbox: box", "outside the"],
    ),
    (
        "voc",
        "empty-box",
        replace_first_bndbox_value("xmin", lambda v: str(v + 1000)),
        ["000000.xml: annotation/object[1]/bndbox: empty box"],
    ),
    (
        "voc",
        "zero-based-box",
        replace_first_bndbox_value("xmin", lambda v: "0"),
        ["000000.xml: annotation/object[1]/bndbox: box [xmin=-1", "1-based inclusive"],
    ),
    (
        "voc",
        "unknown-class",
        edit_xml("<name>", "<name>zebra"),
        ["000000.xml: annotation/object[1]/name: unknown class 'zebra"],
    ),
    (
        "voc",
        "non-numeric",
        replace_first_bndbox_value("ymin", lambda v: "abc"),
        ["000000.xml: annotation/object[1]/bndbox/ymin: not a number: 'abc'"],
    ),
    (
        "voc",
        "missing-field",
        remove_first_xml_element("xmax"),
        ["000000.xml: annotation/object[1]/bndbox/xmax: missing element"],
    ),
    (
        "voc",
        "malformed-xml",
        edit_xml("</annotation>", ""),
        ["000000.xml:", "malformed XML: no element found"],
    ),
    (
        "voc",
        "size-mismatch",
        edit_xml("<width>", "<width>1"),
        ["000000.xml: annotation/size: size 1", "does not match the image"],
    ),
    (
        "voc",
        "duplicate-class",
        write_file("classes.txt", "a\nb\na\n"),
        ["classes.txt:3: duplicate class name 'a'"],
    ),
    ("voc", "missing-classes", delete("classes.txt"), ["classes.txt: missing classes file"]),
    ("coco", "malformed-json", truncate_json, ["annotations.json:", "malformed JSON"]),
    (
        "coco",
        "bbox-fields",
        edit_json(lambda d: set_in(d, "annotations", "bbox", [1, 2, 3])),
        ["annotations.json: annotations[0].bbox: expected 4 numbers [x, y, w, h], got 3"],
    ),
    (
        "coco",
        "bbox-non-numeric",
        edit_json(lambda d: set_in(d, "annotations", "bbox", ["1", 2, 3, 4])),
        ["annotations.json: annotations[0].bbox: non-numeric value '1'"],
    ),
    (
        "coco",
        "unknown-category",
        edit_json(lambda d: set_in(d, "annotations", "category_id", 99)),
        ["annotations.json: annotations[0].category_id: unknown class: no category with id 99"],
    ),
    (
        "coco",
        "unknown-image",
        edit_json(lambda d: set_in(d, "annotations", "image_id", 99)),
        ["annotations.json: annotations[0].image_id: no image with id 99"],
    ),
    (
        "coco",
        "missing-image",
        edit_json(lambda d: set_in(d, "images", "file_name", "nope.jpg")),
        ["annotations.json: images[0].file_name: missing image file", "nope.jpg"],
    ),
    (
        "coco",
        "escaping-name",
        edit_json(lambda d: set_in(d, "images", "file_name", "../../etc/passwd")),
        ["annotations.json: images[0].file_name: image file name '../../etc/passwd' must be"],
    ),
    (
        "coco",
        "box-outside",
        edit_json(lambda d: set_in(d, "annotations", "bbox", [90, 0, 50, 5])),
        ["annotations.json: annotations[0].bbox: box [xmin=90", "outside the"],
    ),
    (
        "coco",
        "empty-box",
        edit_json(lambda d: set_in(d, "annotations", "bbox", [1, 1, 0, 5])),
        ["annotations.json: annotations[0].bbox: empty box"],
    ),
    (
        "coco",
        "width-not-int",
        edit_json(lambda d: set_in(d, "images", "width", "wide")),
        ["annotations.json: images[0].width: expected an integer, got 'wide'"],
    ),
    (
        "yolo",
        "field-count",
        append_label_line("1 0.5 0.5 0.1"),
        ["000000.txt:{line}: expected 5 fields (class cx cy w h), got 4"],
    ),
    (
        "yolo",
        "non-numeric",
        append_label_line("1 0.5 abc 0.1 0.1"),
        ["000000.txt:{line}: non-numeric value 'abc'"],
    ),
    (
        "yolo",
        "nan",
        append_label_line("1 0.5 nan 0.1 0.1"),
        ["000000.txt:{line}: non-numeric value 'nan'"],
    ),
    (
        "yolo",
        "class-not-int",
        append_label_line("one 0.5 0.5 0.1 0.1"),
        ["000000.txt:{line}: class index must be an integer, got 'one'"],
    ),
    (
        "yolo",
        "unknown-class",
        append_label_line("13 0.5 0.5 0.1 0.1"),
        ["000000.txt:{line}: unknown class index 13 (classes.txt has 13 classes)"],
    ),
    (
        "yolo",
        "box-outside",
        append_label_line("1 0.99 0.5 0.2 0.1"),
        ["000000.txt:{line}: box", "outside the"],
    ),
    ("yolo", "empty-box", append_label_line("1 0.5 0.5 0 0.1"), ["000000.txt:{line}: empty box"]),
    (
        "yolo",
        "label-without-image",
        write_file("labels/extra.txt", "1 0.5 0.5 0.1 0.1\n"),
        ["labels/extra.txt: missing image file", "images/extra.*"],
    ),
    (
        "yolo",
        "broken-image",
        write_file("images/000001.jpg", "not a jpeg"),
        ["000001.jpg: not a readable image"],
    ),
]


@pytest.mark.parametrize(
    ("fmt", "corrupt", "fragments"),
    [
        pytest.param(fmt, corrupt, fragments, id=f"{fmt}-{name}")
        for fmt, name, corrupt, fragments in CASES
    ],
)
def test_bad_input_is_reported_with_file_and_location(
    clean_datasets: dict[str, Path],
    tmp_path: Path,
    fmt: Format,
    corrupt: Callable[[Path], None],
    fragments: list[str],
) -> None:
    root = tmp_path / "in"
    shutil.copytree(clean_datasets[fmt], root)
    line = label_line_number(root) if fmt == "yolo" else 0
    corrupt(root)
    code, out, err = run_cli(
        "data",
        "convert",
        "--in",
        root,
        "--out",
        tmp_path / "out",
        "--format",
        "coco" if fmt != "coco" else "voc",
    )
    assert code == 2
    assert out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment.format(line=line) in err, err
    assert not (tmp_path / "out").exists()


def test_clean_datasets_convert(clean_datasets: dict[str, Path], tmp_path: Path) -> None:
    # The corrupted copies above fail only because of their corruption.
    for fmt, root in clean_datasets.items():
        code, out, err = run_cli(
            "data", "convert", "--in", root, "--out", tmp_path / fmt, "--format", "yolo"
        )
        assert (code, err) == (0, ""), fmt
        assert out.startswith("wrote 2 images with ")


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--in", "{tmp}/nowhere"], "nowhere: not a dataset directory (does not exist)"),
        (["--in", "{tmp}/empty"], "empty: cannot tell the dataset format"),
        (["--in", "{clean}", "--in-format", "coco"], "annotations.json: missing annotation file"),
    ],
)
def test_bad_input_directories(
    clean_datasets: dict[str, Path], tmp_path: Path, argv: list[str], fragment: str
) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    args = [a.format(tmp=tmp_path, clean=clean_datasets["voc"]) for a in argv]
    code, _, err = run_cli("data", "convert", *args, "--out", tmp_path / "out", "--format", "voc")
    assert code == 2
    assert err.startswith("error: ") and fragment in err, err


def test_output_must_be_empty(clean_datasets: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run_cli(
        "data",
        "convert",
        "--in",
        clean_datasets["voc"],
        "--out",
        tmp_path / "out",
        "--format",
        "yolo",
    )
    assert code == 2 and "out: output directory exists and is not empty" in err
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_real_process_prints_one_line_and_no_traceback(
    clean_datasets: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "in"
    shutil.copytree(clean_datasets["yolo"], root)
    line = label_line_number(root)
    append_label_line("2 0.5 0.5 0.1")(root)
    result = run_cli_subprocess(
        "data", "convert", "--in", root, "--out", tmp_path / "o", "--format", "voc"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr == (
        f"error: {root / 'labels' / '000000.txt'}:{line}: "
        "expected 5 fields (class cx cy w h), got 4\n"
    )
