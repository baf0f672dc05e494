"""Shared helpers for the dataset tests."""

from __future__ import annotations

import argparse
import contextlib
import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from predictor.data.cli import add_data_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "data"

# What the main CLI does with add_data_parser; used to run `predictor data ...` in a child.
CLI_SNIPPET = (
    "import argparse, sys\n"
    "from predictor.data.cli import add_data_parser\n"
    "parser = argparse.ArgumentParser(prog='predictor')\n"
    "add_data_parser(parser.add_subparsers(dest='command', required=True))\n"
    "args = parser.parse_args()\n"
    "sys.exit(args.func(args))\n"
)


def build_parser() -> argparse.ArgumentParser:
    """A stand-in for the main CLI's parser, with only the data command."""
    parser = argparse.ArgumentParser(prog="predictor")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_cli(*argv: str | Path) -> tuple[int, str, str]:
    """Run ``predictor data ...`` in this process: (exit code, stdout, stderr)."""
    args = build_parser().parse_args([str(a) for a in argv])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = args.func(args)
    assert isinstance(code, int)
    return code, out.getvalue(), err.getvalue()


def run_cli_subprocess(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """Run ``predictor data ...`` in a fresh Python, as a user would."""
    return subprocess.run(
        [sys.executable, "-c", CLI_SNIPPET, *(str(a) for a in argv)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


def write_blank_png(path: Path, width: int, height: int) -> None:
    """Write a valid all-black 1-bit PNG; a few KB even at 8000 x 8000 pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = (b"\x00" + bytes((width + 7) // 8)) * height
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows, 1))
        + chunk(b"IEND", b"")
    )


def luma(pixels: NDArray[np.uint8] | NDArray[np.float64]) -> NDArray[np.float64]:
    """BT.601 luminance of BGR pixels (last axis)."""
    weights = np.array([0.114, 0.587, 0.299])
    result: NDArray[np.float64] = np.asarray(pixels, dtype=np.float64) @ weights
    return result
