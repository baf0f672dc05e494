"""Read the files inside a compiled Qt resource archive (``.rcc``).

GCompris (Debian's ``gcompris-qt-data``) ships its photographs only inside such
archives, which Qt's ``rcc -binary`` writes. The layout, from Qt's ``rcc.cpp`` and
``qresource.cpp`` (all integers big-endian):

- a header: ``b"qres"``, the format version, then the offsets of the tree, the data and
  the names sections (version 3 adds a 32-bit flags word);
- the tree: fixed-size nodes (14 bytes, plus an 8-byte modification time from version
  2 on), node 0 being the root directory. Every node starts with its name's offset and
  16 flag bits; a directory then holds its child count and first child's index, a file
  its territory, language and data offset;
- a name: a 16-bit length, a 32-bit hash, then that many UTF-16 code units;
- a file's data: a 32-bit length, then the bytes; zlib-compressed files (flag 1) start
  with their 32-bit uncompressed length, as ``qCompress`` writes them.

Zstandard-compressed files (flag 4) are refused with a message: GCompris uses zlib.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from predictor.data.errors import DatasetError

_MAGIC = b"qres"
_COMPRESSED = 0x01
_DIRECTORY = 0x02
_COMPRESSED_ZSTD = 0x04


def read_qt_resources(path: Path) -> dict[str, bytes]:
    """Every file in the Qt resource archive ``path``, by its path inside it.

    Paths are absolute inside the archive, as Qt names them without the leading colon:
    ``/gcompris/src/activities/erase/resource/alpaca.webp``. Raises DatasetError naming
    ``path`` if it is not a resource archive or is cut short.
    """
    blob = path.read_bytes()
    if blob[:4] != _MAGIC or len(blob) < 20:
        raise DatasetError(path, "not a Qt resource archive (no 'qres' header)")
    version, tree, data, names = struct.unpack_from(">IIII", blob, 4)
    if version not in (1, 2, 3):
        raise DatasetError(path, f"Qt resource format version {version} is not supported")
    reader = _Archive(path, blob, tree, data, names, node_size=14 if version == 1 else 22)
    files: dict[str, bytes] = {}
    reader.collect(0, "", files, depth=0)
    return files


class _Archive:
    """Walks one archive's tree; every read is bounds-checked against the blob."""

    def __init__(
        self, path: Path, blob: bytes, tree: int, data: int, names: int, node_size: int
    ) -> None:
        self.path = path
        self.blob = blob
        self.tree = tree
        self.data = data
        self.names = names
        self.node_size = node_size

    def collect(self, index: int, prefix: str, files: dict[str, bytes], depth: int) -> None:
        if depth > 64:  # a cycle in a damaged tree, not a real nesting depth
            raise DatasetError(self.path, "the resource tree is nested too deeply")
        node = self.tree + index * self.node_size
        name_offset, flags = self._unpack(">IH", node)
        name = "" if index == 0 else self._name(name_offset)
        if flags & _DIRECTORY:
            count, first = self._unpack(">II", node + 6)
            for child in range(first, first + count):
                self.collect(child, f"{prefix}{name}/" if index else "/", files, depth + 1)
            return
        (data_offset,) = self._unpack(">I", node + 10)
        files[prefix + name] = self._file(data_offset, flags, prefix + name)

    def _name(self, offset: int) -> str:
        (length,) = self._unpack(">H", self.names + offset)
        start = self.names + offset + 6
        return self._slice(start, 2 * length).decode("utf-16-be")

    def _file(self, offset: int, flags: int, name: str) -> bytes:
        (size,) = self._unpack(">I", self.data + offset)
        payload = self._slice(self.data + offset + 4, size)
        if flags & _COMPRESSED_ZSTD:
            raise DatasetError(self.path, "zstd-compressed entries are not supported", where=name)
        if flags & _COMPRESSED:
            try:
                return zlib.decompress(payload[4:])
            except zlib.error as exc:
                raise DatasetError(self.path, f"bad zlib data: {exc}", where=name) from exc
        return payload

    def _unpack(self, layout: str, offset: int) -> tuple[int, ...]:
        return struct.unpack(layout, self._slice(offset, struct.calcsize(layout)))

    def _slice(self, offset: int, size: int) -> bytes:
        if offset < 0 or offset + size > len(self.blob):
            raise DatasetError(self.path, f"cut short: needs bytes {offset}-{offset + size}")
        return self.blob[offset : offset + size]
