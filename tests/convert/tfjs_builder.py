"""Write small TensorFlow.js graph models (model.json + weights.bin) for the tests.

The JSON is a GraphDef as the TF.js converter writes it: attributes in
protobuf JSON (strings base64, integers as strings), constants in the
weights manifest, optionally quantized.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_TF_TYPES = {"float32": "DT_FLOAT", "int32": "DT_INT32", "bool": "DT_BOOL"}


def s(value: str) -> dict[str, str]:
    """A string attribute."""
    return {"s": base64.b64encode(value.encode()).decode()}


def ints(*values: int) -> dict[str, Any]:
    """A list-of-integers attribute."""
    return {"list": {"i": [str(v) for v in values]}}


def strings(*values: str) -> dict[str, Any]:
    """A list-of-strings attribute."""
    return {"list": {"s": [s(v)["s"] for v in values]}}


def i(value: int) -> dict[str, str]:
    """An integer attribute."""
    return {"i": str(value)}


def f(value: float) -> dict[str, float]:
    """A float attribute."""
    return {"f": value}


def b(value: bool) -> dict[str, bool]:
    """A boolean attribute."""
    return {"b": value}


def dtype(name: str) -> dict[str, str]:
    """A type attribute."""
    return {"type": _TF_TYPES[name]}


@dataclass
class GraphBuilder:
    """Accumulates nodes and constants; `write` produces the model files."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    weights: list[tuple[dict[str, Any], bytes]] = field(default_factory=list)
    inputs: dict[str, list[int]] = field(default_factory=dict)

    def placeholder(self, name: str, shape: list[int]) -> str:
        """The graph's input."""
        self.inputs[name] = shape
        self.nodes.append(
            {
                "name": name,
                "op": "Placeholder",
                "attr": {
                    "dtype": dtype("float32"),
                    "shape": {"shape": {"dim": [{"size": str(d)} for d in shape]}},
                },
            }
        )
        return name

    def const(self, name: str, value: npt.ArrayLike, quantize: str | None = None) -> str:
        """A constant, stored as float32/int32 or quantized (float16, uint8, uint16)."""
        array = np.asarray(value)
        kind = "int32" if array.dtype.kind in "iu" else "float32"
        array = array.astype(kind)
        spec: dict[str, Any] = {"name": name, "shape": list(array.shape), "dtype": kind}
        if quantize is None:
            data = array.astype("<f4" if kind == "float32" else "<i4").tobytes()
        elif quantize == "float16":
            data = array.astype("<f2").tobytes()
            spec["quantization"] = {"dtype": "float16", "original_dtype": kind}
        else:
            levels = 255 if quantize == "uint8" else 65535
            low, high = float(array.min()), float(array.max())
            scale = (high - low) / levels if high > low else 1.0
            q = np.round((array - low) / scale).astype("u1" if quantize == "uint8" else "<u2")
            data = q.tobytes()
            spec["quantization"] = {
                "dtype": quantize,
                "scale": scale,
                "min": low,
                "original_dtype": kind,
            }
        self.weights.append((spec, data))
        self.nodes.append(
            {
                "name": name,
                "op": "Const",
                "attr": {
                    "value": {"tensor": {"dtype": _TF_TYPES[kind], "tensorShape": {}}},
                    "dtype": dtype(kind),
                },
            }
        )
        return name

    def op(self, name: str, op: str, inputs: list[str], **attrs: Any) -> str:
        """A node; attributes already encoded with the helpers above."""
        self.nodes.append({"name": name, "op": op, "input": list(inputs), "attr": attrs})
        return name

    def write(self, folder: Path, outputs: list[str]) -> Path:
        """model.json and weights.bin in ``folder``; returns the model.json path."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.bin").write_bytes(b"".join(data for _, data in self.weights))
        document = {
            "format": "graph-model",
            "generatedBy": "predictor tests",
            "convertedBy": "predictor tests",
            "modelTopology": {"node": self.nodes, "library": {}, "versions": {}},
            "signature": {
                "inputs": {name: {"name": f"{name}:0"} for name in self.inputs},
                "outputs": {
                    name: {"name": name if ":" in name else f"{name}:0"} for name in outputs
                },
            },
            "weightsManifest": [
                {"paths": ["weights.bin"], "weights": [spec for spec, _ in self.weights]}
            ],
        }
        path = folder / "model.json"
        path.write_text(json.dumps(document), encoding="utf-8")
        return path
