"""What the converter refuses, and how it says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from predictor.convert import ConversionError
from predictor.convert.checkpoint import convert_tfjs
from predictor.convert.graphmodel import load_graph_model
from predictor.convert.tfjs import translate
from tests.convert.tfjs_builder import GraphBuilder, ints, s


def _graph(tmp_path: Path, op: str) -> Path:
    g = GraphBuilder()
    x = g.placeholder("x", [1, 8, 8, 3])
    w = g.const("w", np.ones((1, 1, 3, 4)))
    conv = g.op(
        "conv", "Conv2D", [x, w], strides=ints(1, 1, 1, 1), padding=s("SAME"), data_format=s("NHWC")
    )
    g.op("odd", op, [conv])
    return g.write(tmp_path, ["odd"])


def test_unsupported_op_names_node_and_op(tmp_path: Path) -> None:
    """An op without a translation is an error naming the node and the op."""
    path = _graph(tmp_path, "Cumprod")
    with pytest.raises(ConversionError, match=r"node odd \(Cumprod\): op Cumprod is not supported"):
        translate(load_graph_model(path), ["odd"])


def test_batch_mixing_reshape_is_refused(tmp_path: Path) -> None:
    """A reshape that folds the batch into other axes would be wrong for batches > 1."""
    g = GraphBuilder()
    x = g.placeholder("x", [1, 8, 8, 3])
    shape = g.const("shape", np.array([-1], dtype=np.int32))
    g.op("flat", "Reshape", [x, shape])
    path = g.write(tmp_path, ["flat"])
    with pytest.raises(ConversionError, match=r"node flat \(Reshape\).*batch"):
        translate(load_graph_model(path), ["flat"])


def test_unsupported_weight_dtype(tmp_path: Path) -> None:
    """A quantization the converter does not know names the weight."""
    path = _graph(tmp_path, "Relu")
    document = json.loads(path.read_text())
    document["weightsManifest"][0]["weights"][0]["quantization"] = {"dtype": "int4"}
    path.write_text(json.dumps(document))
    with pytest.raises(ConversionError, match=r"weight 'w' is quantized as 'int4'"):
        load_graph_model(path)


def test_head_checks_outputs(tmp_path: Path) -> None:
    """A head given outputs it cannot decode fails instead of writing a wrong graph."""
    path = _graph(tmp_path, "Relu")
    with pytest.raises(ConversionError, match="NanoDet head"):
        convert_tfjs(path, tmp_path / "out" / "m", "nanodet", outputs=["odd"])
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_line_and_fails(tmp_path: Path) -> None:
    """`predictor convert tfjs` reports a conversion error as one line, exit code 1."""
    path = _graph(tmp_path, "Cumprod")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "convert",
            "tfjs",
            str(path),
            "--raw",
            "--outputs",
            "odd",
            "--out",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    lines = completed.stderr.strip().splitlines()
    assert lines[-1] == "error: node odd (Cumprod): op Cumprod is not supported", lines
    assert not any(line.startswith("Traceback") for line in lines)


def test_cli_writes_raw_graph(tmp_path: Path) -> None:
    """--raw writes a checkpoint ending in the source outputs, with its declaration."""
    path = _graph(tmp_path, "Relu")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "convert",
            "tfjs",
            str(path),
            "--raw",
            "--outputs",
            "odd",
            "--out",
            str(tmp_path / "m" / "raw"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    summary = json.loads(completed.stdout)
    assert summary["input_shape"] == [1, 3, 8, 8]
    for key in ("symbol", "params", "synset", "preprocess"):
        assert Path(summary[key]).is_file()
