"""Reading a TensorFlow.js graph model: ``model.json`` plus its weight files.

A graph model is a TensorFlow GraphDef written as JSON (``modelTopology.node``:
name, op, inputs, attributes) and a weights manifest that says where each
constant's bytes are in the concatenation of the listed ``.bin`` files. The
converter (`predictor.convert.tfjs`) works on the `GraphModel` built here.

Weights may be stored quantized: ``float16`` (IEEE half floats) or
``uint8``/``uint16`` (``value * scale + min``). They are expanded back to
their original dtype here, as TensorFlow.js does when it loads them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from predictor.convert.errors import ConversionError

Array = npt.NDArray[Any]

# The weight dtypes of the manifest and how many bytes one element takes.
_STORED_DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("<f4", 4),
    "int32": ("<i4", 4),
    "bool": ("u1", 1),
}
_QUANTIZED_DTYPES: dict[str, tuple[str, int]] = {
    "float16": ("<f2", 2),
    "uint8": ("u1", 1),
    "uint16": ("<u2", 2),
}
# TensorFlow's DataType enum names as graph attributes spell them.
TF_DTYPES: dict[str, str] = {
    "DT_FLOAT": "float32",
    "DT_INT32": "int32",
    "DT_BOOL": "bool",
    "DT_INT64": "int64",
    "DT_HALF": "float16",
}


@dataclass(frozen=True)
class Node:
    """One node of the graph: its op, data inputs (``name`` or ``name:k``) and attributes."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def attr(self, key: str, default: Any = None) -> Any:
        """The decoded value of attribute ``key`` (strings decoded from base64)."""
        if key not in self.attrs:
            return default
        return decode_attr(self.attrs[key])


@dataclass(frozen=True)
class GraphModel:
    """A loaded graph model: nodes in file order, constants by name, signature."""

    path: Path
    nodes: dict[str, Node]
    weights: dict[str, Array]
    inputs: dict[str, tuple[int, ...]]  # placeholder name -> shape (-1 where unknown)
    outputs: tuple[str, ...]  # signature outputs, node names without ":0"
    metadata: dict[str, Any]

    def node(self, name: str) -> Node:
        """The node called ``name`` (``name:k`` and ``^name`` accepted)."""
        base = split_ref(name)[0]
        try:
            return self.nodes[base]
        except KeyError:
            raise ConversionError(f"{self.path}: no node named {base!r}") from None


def split_ref(ref: str) -> tuple[str, int]:
    """``"node:2"`` -> ``("node", 2)``; ``"node"`` -> ``("node", 0)``."""
    ref = ref.removeprefix("^")
    name, sep, index = ref.rpartition(":")
    if sep and index.isdigit():
        return name, int(index)
    return ref, 0


def decode_attr(value: dict[str, Any]) -> Any:
    """An attribute value of the JSON GraphDef as a Python value."""
    if "s" in value:
        return base64.b64decode(value["s"]).decode("utf-8", errors="replace")
    if "i" in value:
        return int(value["i"])
    if "f" in value:
        return float(value["f"])
    if "b" in value:
        return bool(value["b"])
    if "type" in value:
        return TF_DTYPES.get(str(value["type"]), str(value["type"]))
    if "shape" in value:
        return value["shape"]
    if "tensor" in value:
        return value["tensor"]
    if "list" in value:
        items = value["list"]
        if "i" in items:
            return [int(v) for v in items["i"]]
        if "f" in items:
            return [float(v) for v in items["f"]]
        if "s" in items:
            return [base64.b64decode(v).decode("utf-8", errors="replace") for v in items["s"]]
        if "b" in items:
            return [bool(v) for v in items["b"]]
        return []
    return None


def load_graph_model(model_json: Path | str) -> GraphModel:
    """Parse ``model.json`` and its weight files; `ConversionError` on anything unexpected."""
    path = Path(model_json)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConversionError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict) or "modelTopology" not in document:
        raise ConversionError(f"{path} is not a TensorFlow.js model (no modelTopology)")
    if document.get("format") not in (None, "graph-model"):
        raise ConversionError(
            f"{path} is a {document.get('format')!r} model; only graph models are converted"
        )
    topology = document["modelTopology"]
    if not isinstance(topology, dict) or "node" not in topology:
        raise ConversionError(f"{path}: modelTopology has no nodes (a layers model?)")
    library = topology.get("library") or {}
    if library.get("function"):
        raise ConversionError(f"{path}: graphs with functions (control flow) are not supported")
    nodes: dict[str, Node] = {}
    for raw in topology["node"]:
        node = Node(
            name=str(raw["name"]),
            op=str(raw["op"]),
            inputs=tuple(str(i) for i in raw.get("input", []) if not str(i).startswith("^")),
            attrs=dict(raw.get("attr", {})),
        )
        nodes[node.name] = node
    weights = _read_weights(path, document.get("weightsManifest", []))
    inputs = {
        node.name: _placeholder_shape(node) for node in nodes.values() if node.op == "Placeholder"
    }
    signature = document.get("signature") or {}
    outputs = tuple(
        split_ref(str(spec.get("name", key)))[0]
        for key, spec in (signature.get("outputs") or {}).items()
    )
    metadata = {key: document.get(key) for key in ("format", "generatedBy", "convertedBy")}
    return GraphModel(path, nodes, weights, inputs, outputs, metadata)


def _placeholder_shape(node: Node) -> tuple[int, ...]:
    shape = node.attr("shape") or {}
    return tuple(int(dim.get("size", -1)) for dim in shape.get("dim", []))


def _read_weights(path: Path, manifest: list[dict[str, Any]]) -> dict[str, Array]:
    """All constants of the manifest, dequantized, by name."""
    blobs = []
    for group in manifest:
        for file in group.get("paths", []):
            try:
                blobs.append((path.parent / file).read_bytes())
            except OSError as exc:
                raise ConversionError(f"cannot read weight file of {path}: {exc}") from None
    data = b"".join(blobs)
    weights: dict[str, Array] = {}
    offset = 0
    for group in manifest:
        for spec in group.get("weights", []):
            name = str(spec["name"])
            array, size = _decode_weight(path, spec, data, offset)
            weights[name] = array
            offset += size
    if offset != len(data):
        raise ConversionError(
            f"{path}: the weight files hold {len(data)} bytes but the manifest describes {offset}"
        )
    return weights


def _decode_weight(path: Path, spec: dict[str, Any], data: bytes, offset: int) -> tuple[Array, int]:
    name = spec["name"]
    dtype = str(spec.get("dtype"))
    shape = tuple(int(d) for d in spec.get("shape", []))
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    quantization = spec.get("quantization")
    if dtype not in _STORED_DTYPES:
        raise ConversionError(f"{path}: weight {name!r} has unsupported dtype {dtype!r}")
    if quantization:
        qtype = str(quantization.get("dtype"))
        if qtype not in _QUANTIZED_DTYPES:
            raise ConversionError(
                f"{path}: weight {name!r} is quantized as {qtype!r}, which is not supported"
            )
        numpy_type, width = _QUANTIZED_DTYPES[qtype]
    else:
        numpy_type, width = _STORED_DTYPES[dtype]
    size = count * width
    if offset + size > len(data):
        raise ConversionError(f"{path}: weight {name!r} runs past the end of the weight files")
    raw = np.frombuffer(data, dtype=numpy_type, count=count, offset=offset).reshape(shape)
    if not quantization:
        return raw.astype(numpy_type.lstrip("<"), copy=True), size
    if quantization["dtype"] == "float16":
        values = raw.astype(np.float32)
    else:
        # Affine quantization: float = q * scale + min, computed in float32 like TF.js.
        scale = np.float32(quantization["scale"])
        minimum = np.float32(quantization["min"])
        values = raw.astype(np.float32) * scale + minimum
    if dtype == "int32":
        return np.round(values).astype(np.int32), size
    if dtype == "bool":
        return values != 0, size
    return values.astype(np.float32), size
