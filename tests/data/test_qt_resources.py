"""Qt resource archives: GCompris's real ones, and small ones laid out as Qt's rcc writes them."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import pytest

from predictor.data.errors import DatasetError, MissingAssetError
from predictor.data.photos import (
    GCOMPRIS_PARTS,
    GCOMPRIS_RESOURCES,
    ResourceFolder,
    write_gcompris_photos,
)
from predictor.data.qt_resources import read_qt_resources
from tests.support.photos import gradient_photo

Tree = dict[str, "Tree | tuple[bytes, bool]"]  # a folder, or a file's bytes and compression


def rcc_archive(tree: Tree, version: int = 2) -> bytes:
    """An archive in the layout Qt's ``rcc -binary`` writes: breadth-first nodes, so that
    a folder's children sit next to each other in the tree section."""
    names, data, nodes = bytearray(), bytearray(), []
    name_offsets: dict[str, int] = {}

    def name_offset(name: str) -> int:
        if name not in name_offsets:
            name_offsets[name] = len(names)
            encoded = name.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(name), 0) + encoded)
        return name_offsets[name]

    queue: list[tuple[str, Tree | tuple[bytes, bool]]] = [("", tree)]
    index = 0
    next_child = 1
    while index < len(queue):
        name, entry = queue[index]
        offset = name_offset(name) if index else 0
        if isinstance(entry, dict):
            children = sorted(entry.items())
            node = struct.pack(">IHII", offset, 0x02, len(children), next_child)
            queue.extend(children)
            next_child += len(children)
        else:
            content, compressed = entry
            payload = (
                struct.pack(">I", len(content)) + zlib.compress(content) if compressed else content
            )
            node = struct.pack(">IHHHI", offset, 0x01 if compressed else 0, 0, 0, len(data))
            data.extend(struct.pack(">I", len(payload)) + payload)
        nodes.append(node + (struct.pack(">Q", 0) if version >= 2 else b""))
        index += 1
    header_size = 20 if version < 3 else 24
    tree_at = header_size
    data_at = tree_at + sum(map(len, nodes))
    names_at = data_at + len(data)
    header = b"qres" + struct.pack(">IIII", version, tree_at, data_at, names_at)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + b"".join(nodes) + bytes(data) + bytes(names)


def jpeg(seed: int) -> bytes:
    ok, encoded = cv2.imencode(".jpg", gradient_photo(seed))
    assert ok
    return encoded.tobytes()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_files_are_read_by_path_whether_compressed_or_not(tmp_path: Path, version: int) -> None:
    archive = tmp_path / "a.rcc"
    archive.write_bytes(
        rcc_archive(
            {
                "top.txt": (b"plain", False),
                "gcompris": {"src": {"é.webp": (b"x" * 1000, True), "b.jpg": (b"jpeg", False)}},
            },
            version,
        )
    )
    assert read_qt_resources(archive) == {
        "/top.txt": b"plain",
        "/gcompris/src/b.jpg": b"jpeg",
        "/gcompris/src/é.webp": b"x" * 1000,
    }


def test_a_file_that_is_not_an_archive_or_is_cut_short_is_refused_by_name(tmp_path: Path) -> None:
    not_one = tmp_path / "photo.rcc"
    not_one.write_bytes(jpeg(0))
    with pytest.raises(DatasetError, match=f"{not_one}: not a Qt resource archive"):
        read_qt_resources(not_one)
    short = tmp_path / "short.rcc"
    short.write_bytes(rcc_archive({"a": {"b.jpg": (jpeg(1), True)}})[:-40])
    with pytest.raises(DatasetError, match=f"{short}: cut short"):
        read_qt_resources(short)


def test_gcompris_photos_are_chosen_by_folder_and_named_by_activity(tmp_path: Path) -> None:
    root = tmp_path / "rcc"
    root.mkdir()
    others: Tree = {"cup.webp": (jpeg(0), False), "plate.jpg": (jpeg(1), True)}
    resource: Tree = {"images": {"others": others, "tools": {"hammer.jpg": (jpeg(2), False)}}}
    tree: Tree = {"gcompris": {"src": {"activities": {"categorization": {"resource": resource}}}}}
    (root / "categorization.rcc").write_bytes(rcc_archive(tree))
    folders = (ResourceFolder("categorization", "images/others", without=frozenset({"plate"})),)
    assert write_gcompris_photos(tmp_path / "out", folders, root) == 1
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["categorization-cup.jpg"]

    with pytest.raises(MissingAssetError, match="no photos in"):
        write_gcompris_photos(tmp_path / "none", (ResourceFolder("categorization", "x"),), root)
    with pytest.raises(MissingAssetError, match=r"no .*erase.rcc; .*gcompris-qt-data"):
        write_gcompris_photos(tmp_path / "none", (ResourceFolder("erase"),), root)


@pytest.mark.skipif(
    not GCOMPRIS_RESOURCES.is_dir(),
    reason="gcompris-qt-data is not installed (make training-assets)",
)
def test_the_installed_gcompris_archives_give_each_part_its_photos(tmp_path: Path) -> None:
    """The real archives: every part finds photos, no photo is in two parts, all decode."""
    chosen: dict[str, set[str]] = {}
    for part, folders in GCOMPRIS_PARTS.items():
        count = write_gcompris_photos(tmp_path / part, folders)
        files = sorted((tmp_path / part).iterdir())
        assert count == len(files) > 0
        for file in files:
            image = cv2.imread(str(file))
            assert image is not None and min(image.shape[:2]) >= 64, file
        chosen[part] = {p.name for p in files}
    parts = list(chosen.values())
    assert all(not a & b for i, a in enumerate(parts) for b in parts[i + 1 :])
    # The pictures with digits are in none of them.
    everything = set().union(*parts)
    assert not {"categorization-multimeter1.jpg", "categorization-measuringTape1.jpg"} & everything
    assert "categorization-plate.jpg" in chosen["round-things"]
