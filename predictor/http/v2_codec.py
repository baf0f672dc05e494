"""The Open Inference Protocol v2's messages for the detector: parsing and encoding, no I/O.

The routes are `predictor.http.v2`; this module is pure functions and plain
types (no aiohttp, no MXNet), so that the parser can be tested and fuzzed on
its own. The tensors of the detector model:

- ``image``: ``BYTES``, shape ``[N]`` (or ``[N, 1]``), N encoded JPEG images.
  With the binary tensor data extension each element is the raw JPEG, as a
  4-byte little-endian length and the bytes. In JSON each element is a string
  holding the JPEG in base64 (JSON strings cannot hold raw bytes), as KServe's
  image examples send it; ``parameters.content_type``, when given, must be
  ``"base64"`` (MLServer's name for this encoding).
- ``num_detections``: ``INT32`` ``[N]``, detections per image;
- ``classes``: ``BYTES`` ``[N, K]``, class names;
- ``probabilities``: ``FP32`` ``[N, K]``, most probable first;
- ``boxes``: ``INT32`` ``[N, K, 4]``, ``x, y, width, height`` in pixels of
  the original image, exactly as ``/predict`` answers them.

K is the largest number of detections of one image; the rows of images with
fewer are padded with ``""``, ``0.0`` and zeros (``num_detections`` says how
many are real).
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from predictor import __version__
from predictor.config import Device, parse_probability
from predictor.detections import Detection
from predictor.errors import InvalidInput

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "predictor"
MODEL_VERSION = "1"
PLATFORM = "mxnet_gluoncv_ssd"
# binary_tensor_data: inputs and outputs after the JSON header; model_repository:
# POST /v2/repository/index (loading and unloading are refused: models load at start);
# Triton's model_configuration (GET .../config) and statistics (GET .../stats).
EXTENSIONS = ("binary_tensor_data", "model_repository", "model_configuration", "statistics")
# Triton's names of the tensor types in a model configuration.
_CONFIG_TYPES = {"BYTES": "TYPE_STRING", "INT32": "TYPE_INT32", "FP32": "TYPE_FP32"}
INPUT_NAME = "image"
BASE64 = "base64"
# JSON requests larger than this are parsed (and their base64 decoded) on a
# thread, so that a 20 MB request does not hold up the event loop.
PARSE_INLINE_MAX_BYTES = 256 * 1024
_LENGTH = struct.Struct("<I")
_MAX_LENGTH_DIGITS = 19
# How much of a client's value an error message repeats.
_SHOWN_CHARS = 60


def _shown(value: Any) -> str:
    """``repr(value)`` for an error message: short, ASCII, and safe on any JSON value.

    A name of a megabyte or a list nested 900 deep must not become the
    message (or blow the stack in ``repr``); lone surrogates are escaped, so
    the message can always be sent as UTF-8 JSON.
    """
    try:
        text = ascii(value)
    except RecursionError:
        text = f"<a {type(value).__name__} nested too deeply>"
    if len(text) > _SHOWN_CHARS:
        text = text[: _SHOWN_CHARS - 3] + "..."
    return text


@dataclass(frozen=True)
class TensorSpec:
    """A tensor of the model's metadata; -1 is a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """The v2 metadata form: ``{"name", "datatype", "shape"}``."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


# [N, 1]: N images of one element each, as Triton states a batched input whose
# configuration dims are [1]; requests may also send [N].
INPUT = TensorSpec(INPUT_NAME, "BYTES", (-1, 1))
OUTPUTS = (
    TensorSpec("num_detections", "INT32", (-1,)),
    TensorSpec("classes", "BYTES", (-1, -1)),
    TensorSpec("probabilities", "FP32", (-1, -1)),
    TensorSpec("boxes", "INT32", (-1, -1, 4)),
)
_OUTPUT_NAMES = tuple(spec.name for spec in OUTPUTS)
_DATATYPES = {spec.name: spec.datatype for spec in OUTPUTS}


class V2RequestError(InvalidInput):
    """A malformed v2 inference request; the message says what is wrong (answered 400)."""


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferRequest:
    """A v2 inference request, checked: the images, and how to answer."""

    request_id: str | None
    images: tuple[bytes, ...]
    threshold: float | None
    outputs: tuple[RequestedOutput, ...]


# ------------------------------------------------------------------ parsing


def parse_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """Check and unpack a v2 inference request body; raise `V2RequestError` saying what is wrong.

    ``header_length`` is the ``Inference-Header-Content-Length`` header: when
    given, the body is that many bytes of JSON followed by the binary data of
    the inputs that declare ``parameters.binary_data_size``, in their order,
    with nothing left over.
    """
    header, binary = _split(body, header_length)
    request = _object(_load_json(header), "the request")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2RequestError("'id' must be a string")
    parameters = _parameters(request, "the request")
    threshold = _threshold(parameters.get("threshold"))
    binary_output = _bool(parameters.get("binary_data_output", False), "binary_data_output")
    cursor = _Cursor(binary)
    images = _images(request.get("inputs"), cursor, max_images, binary_framed=header_length)
    if cursor.remaining:
        raise V2RequestError(
            f"{cursor.remaining} bytes after the JSON header are not claimed by any "
            "input's binary_data_size"
        )
    outputs = _requested_outputs(request.get("outputs"), binary_output)
    return InferRequest(request_id, images, threshold, outputs)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary data after it."""
    if header_length is None:
        return body, b""
    raw = header_length.strip()
    # At most 19 digits: int() of thousands of digits raises (Python's 4300-digit
    # limit) or costs quadratic time, and no body is that long anyway.
    if (
        not (raw.isascii() and raw.isdigit())
        or len(raw) > _MAX_LENGTH_DIGITS
        or not 0 < int(raw) <= len(body)
    ):
        raise V2RequestError(
            f"{HEADER_LENGTH}: {_shown(header_length)} is not a length between 1 and the body's "
            f"{len(body)} bytes"
        )
    length = int(raw)
    return body[:length], body[length:]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _load_json(header: bytes) -> Any:
    if not header.strip():
        raise V2RequestError("the body is empty; send a v2 inference request (JSON)")
    try:
        return json.loads(header.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise V2RequestError(
            f"the JSON header is not UTF-8 (binary data after it needs the {HEADER_LENGTH} header)"
        ) from None
    except ValueError as exc:  # json.JSONDecodeError included
        raise V2RequestError(f"the request is not valid JSON: {exc}") from None
    except RecursionError:
        raise V2RequestError("the request's JSON is nested too deeply") from None


def strict_dumps(value: Any) -> str:
    """Compact JSON that refuses NaN and infinities instead of emitting invalid JSON."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def parse_index_request(body: bytes) -> bool:
    """``POST /v2/repository/index``'s optional body: whether only ready models are asked for."""
    if not body.strip():
        return False
    return _bool(_object(_load_json(body), "the request").get("ready", False), "ready")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise V2RequestError(f"{where} must be a JSON object")
    return value


def _parameters(container: dict[str, Any], where: str) -> dict[str, Any]:
    parameters = container.get("parameters")
    if parameters is None:
        return {}
    return _object(parameters, f"'parameters' of {where}")


def _bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise V2RequestError(f"parameter {name} must be true or false")
    return value


def _threshold(value: Any) -> float | None:
    """``parameters.threshold``: a number (or numeric string) in [0, 1], as ``?threshold=``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise V2RequestError("parameter threshold: expected a number between 0 and 1")
    try:
        return parse_probability(str(value))
    except ValueError as exc:
        raise V2RequestError(f"parameter threshold: {exc}") from None


def _images(
    inputs: Any, cursor: _Cursor, max_images: int, binary_framed: str | None
) -> tuple[bytes, ...]:
    """The encoded images of the one input, ``image``."""
    if not isinstance(inputs, list) or not inputs:
        raise V2RequestError(
            f"missing input '{INPUT_NAME}': send 'inputs': [{{'name': '{INPUT_NAME}', "
            "'datatype': 'BYTES', 'shape': [1], ...}]"
        )
    tensors = [_object(item, "each of 'inputs'") for item in inputs]
    names = [tensor.get("name") for tensor in tensors]
    for name in names:
        if name != INPUT_NAME:
            raise V2RequestError(
                f"unknown input {_shown(name)}: this model takes one input, '{INPUT_NAME}' "
                "(BYTES, shape [N]: N encoded JPEG images)"
            )
    if len(names) > 1:
        raise V2RequestError(f"input '{INPUT_NAME}' is given {len(names)} times")
    (tensor,) = tensors
    where = f"input '{INPUT_NAME}'"
    datatype = tensor.get("datatype")
    if datatype != INPUT.datatype:
        raise V2RequestError(
            f"{where}: datatype {_shown(datatype)}; expected 'BYTES' (encoded JPEG images)"
        )
    count = _image_count(tensor.get("shape"), max_images, where)
    parameters = _parameters(tensor, where)
    size = parameters.get("binary_data_size")
    has_data = "data" in tensor
    if size is not None and has_data:
        raise V2RequestError(f"{where}: both 'data' and parameters.binary_data_size; give one")
    if size is not None:
        if binary_framed is None:
            raise V2RequestError(
                f"{where}: parameters.binary_data_size needs the {HEADER_LENGTH} header "
                "(the length of the JSON before the binary data)"
            )
        if "content_type" in parameters:
            raise V2RequestError(
                f"{where}: content_type describes JSON data; binary data is the raw JPEG bytes"
            )
        return _binary_elements(cursor.take(_size(size, where), where), count, where)
    if not has_data:
        raise V2RequestError(
            f"{where} has no data: give 'data' (base64 strings) or "
            f"parameters.binary_data_size and the bytes after the JSON header"
        )
    content_type = parameters.get("content_type", BASE64)
    if content_type != BASE64:
        raise V2RequestError(
            f"{where}: content_type {_shown(content_type)}; in JSON the images are base64 "
            f"strings (content_type '{BASE64}')"
        )
    return _json_elements(tensor["data"], count, where)


def _image_count(shape: Any, max_images: int, where: str) -> int:
    # [N], or [N, 1] as Triton's perf_analyzer batches a one-element tensor.
    valid = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        and shape[0] >= 1
        and shape[1:] in ([], [1])
    )
    if not valid:
        raise V2RequestError(
            f"{where}: shape {_shown(shape)}; expected [N] or [N, 1], N >= 1 images"
        )
    count: int = shape[0]
    if count > max_images:
        raise V2RequestError(
            f"{where}: shape [{count}]: at most {max_images} images per request (QUEUE_MAX)"
        )
    return count


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise V2RequestError(f"{where}: binary_data_size must be a whole number of bytes")
    return value


class _Cursor:
    """Reads the binary data after the JSON header, input by input."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._offset = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet claimed by an input."""
        return len(self._data) - self._offset

    def take(self, size: int, where: str) -> memoryview:
        """The next ``size`` bytes, which must be there."""
        if size > self.remaining:
            raise V2RequestError(
                f"{where}: binary_data_size {size} is more than the {self.remaining} bytes "
                "left after the JSON header"
            )
        chunk = self._data[self._offset : self._offset + size]
        self._offset += size
        return chunk


def _binary_elements(chunk: memoryview, count: int, where: str) -> tuple[bytes, ...]:
    """BYTES elements in binary form: each a 4-byte little-endian length, then the bytes."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if len(elements) == count:
            raise V2RequestError(f"{where}: the binary data holds more than the {count} elements")
        if len(chunk) - offset < _LENGTH.size:
            raise V2RequestError(
                f"{where}: element {len(elements) + 1}: {len(chunk) - offset} bytes left, "
                "too few for its 4-byte length"
            )
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += _LENGTH.size
        if length > len(chunk) - offset:
            raise V2RequestError(
                f"{where}: element {len(elements) + 1} declares {length} bytes; "
                f"{len(chunk) - offset} follow"
            )
        elements.append(_nonempty(bytes(chunk[offset : offset + length]), len(elements), where))
        offset += length
    if len(elements) != count:
        raise V2RequestError(
            f"{where}: the binary data holds {len(elements)} elements; shape [{count}] says {count}"
        )
    return tuple(elements)


def _json_elements(data: Any, count: int, where: str) -> tuple[bytes, ...]:
    """BYTES elements in JSON: base64 strings, in a flat or nested list."""
    flat = _flatten(data, where)
    if len(flat) != count:
        raise V2RequestError(
            f"{where}: 'data' holds {len(flat)} elements; shape [{count}] says {count}"
        )
    images = []
    for index, element in enumerate(flat):
        if not isinstance(element, str):
            raise V2RequestError(
                f"{where}: element {index + 1} is not a string; in JSON each image is "
                "a base64 string"
            )
        try:
            image = base64.b64decode(element, validate=True)
        except (binascii.Error, ValueError):
            raise V2RequestError(
                f"{where}: element {index + 1} is not base64; in JSON each image is the JPEG "
                "in base64 (or send binary data)"
            ) from None
        images.append(_nonempty(image, index, where))
    return tuple(images)


_END = object()  # marks an exhausted list in `_flatten`


def _flatten(data: Any, where: str) -> list[Any]:
    """Row-major elements of a (possibly nested) JSON list, without recursion."""
    if not isinstance(data, list):
        raise V2RequestError(f"{where}: 'data' must be a list")
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        else:
            flat.append(item)
    return flat


def _nonempty(image: bytes, index: int, where: str) -> bytes:
    if not image:
        raise V2RequestError(f"{where}: element {index + 1} is empty; send the JPEG bytes")
    return image


def _requested_outputs(outputs: Any, binary_default: bool) -> tuple[RequestedOutput, ...]:
    """The outputs to answer, in the order asked; all of them when none are named."""
    if outputs is None or outputs == []:
        return tuple(RequestedOutput(name, binary_default) for name in _OUTPUT_NAMES)
    if not isinstance(outputs, list):
        raise V2RequestError("'outputs' must be a list")
    requested: list[RequestedOutput] = []
    for item in outputs:
        output = _object(item, "each of 'outputs'")
        name = output.get("name")
        if name not in _OUTPUT_NAMES:
            raise V2RequestError(
                f"unknown output {_shown(name)}: the outputs are " + ", ".join(_OUTPUT_NAMES)
            )
        if any(r.name == name for r in requested):
            raise V2RequestError(f"output {_shown(name)} is asked for twice")
        parameters = _parameters(output, f"output {_shown(name)}")
        if "classification" in parameters:
            raise V2RequestError("the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise V2RequestError("shared memory is not supported; use binary data")
        binary = _bool(parameters.get("binary_data", binary_default), "binary_data")
        requested.append(RequestedOutput(name, binary))
    return tuple(requested)


# ------------------------------------------------------------------ encoding


def encode_infer_response(
    model_name: str,
    request_id: str | None,
    detections: Sequence[Sequence[Detection]],
    outputs: Sequence[RequestedOutput],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (else None).

    Probabilities are the network's float32 scores: as binary FP32 exactly,
    in JSON as their shortest decimal form (as ``/predict`` writes them).
    """
    rows = max((len(found) for found in detections), default=0)
    values = _output_values(detections, rows)
    shapes = {
        "num_detections": [len(detections)],
        "classes": [len(detections), rows],
        "probabilities": [len(detections), rows],
        "boxes": [len(detections), rows, 4],
    }
    tensors = []
    blobs = []
    for output in outputs:
        datatype = _DATATYPES[output.name]
        tensor: dict[str, Any] = {
            "name": output.name,
            "datatype": datatype,
            "shape": shapes[output.name],
        }
        if output.binary:
            blob = _binary(datatype, values[output.name])
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values[output.name]
        tensors.append(tensor)
    response: dict[str, Any] = {"model_name": model_name, "model_version": MODEL_VERSION}
    if request_id is not None:
        response["id"] = request_id
    response["outputs"] = tensors
    header = strict_dumps(response).encode("utf-8")
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)


def _output_values(detections: Sequence[Sequence[Detection]], rows: int) -> dict[str, list[Any]]:
    """Every output's elements, row-major, each image's rows padded to ``rows``."""
    classes: list[str] = []
    probabilities: list[float] = []
    boxes: list[int] = []
    for found in detections:
        for detection in found:
            classes.append(detection.object_class)
            probabilities.append(detection.probability)
            boxes.extend((detection.x, detection.y, detection.width, detection.height))
        padding = rows - len(found)
        classes.extend([""] * padding)
        probabilities.extend([0.0] * padding)
        boxes.extend([0] * (4 * padding))
    return {
        "num_detections": [len(found) for found in detections],
        "classes": classes,
        "probabilities": probabilities,
        "boxes": boxes,
    }


def _binary(datatype: str, values: list[Any]) -> bytes:
    """The binary tensor data extension's form: little-endian, row-major, no padding."""
    if datatype == "BYTES":
        encoded = [str(value).encode("utf-8") for value in values]
        return b"".join(_LENGTH.pack(len(item)) + item for item in encoded)
    dtype = {"INT32": "<i4", "FP32": "<f4"}[datatype]
    return np.asarray(values, dtype=dtype).tobytes()


# ------------------------------------------------------------------ metadata


def server_metadata() -> dict[str, Any]:
    """``GET /v2``: who answers, and which protocol extensions it has."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}


@dataclass(frozen=True)
class ServingConfig:
    """What a model's Triton configuration states about how it is served."""

    max_images: int  # images one request may carry (QUEUE_MAX)
    batch_max_size: int
    batch_max_delay_ms: float
    queue_max: int
    request_timeout_ms: float
    devices: tuple[Device, ...]  # one per replica
    parameters: dict[str, str]


def model_config(model_name: str, serving: ServingConfig) -> dict[str, Any]:
    """``GET /v2/models/NAME/config``: the model as a Triton ``config.pbtxt`` in JSON.

    Batching is declared as it really runs: requests carry up to ``max_images``
    images (``max_batch_size``; the image tensor is then ``[N, 1]`` or ``[N]``),
    and the dynamic batcher forms forward passes of up to ``batch_max_size``,
    waiting at most ``batch_max_delay_ms`` and queueing at most ``queue_max``.
    """
    gpus = [device.index for device in serving.devices if device.kind == "gpu"]
    if gpus:
        instances = [{"name": model_name, "kind": "KIND_GPU", "count": 1, "gpus": gpus}]
    else:
        instances = [{"name": model_name, "kind": "KIND_CPU", "count": len(serving.devices)}]
    # With max_batch_size > 0, Triton's dims leave the batch dimension out.
    dims = {"image": [1], "num_detections": [1], "classes": [-1], "probabilities": [-1]}
    dims["boxes"] = [-1, 4]
    return {
        "name": model_name,
        "platform": PLATFORM,
        "backend": "predictor",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": serving.max_images,
        "input": [
            {
                "name": INPUT.name,
                "data_type": _CONFIG_TYPES[INPUT.datatype],
                "format": "FORMAT_NONE",
                "dims": dims[INPUT.name],
            }
        ],
        "output": [
            {"name": spec.name, "data_type": _CONFIG_TYPES[spec.datatype], "dims": dims[spec.name]}
            # num_detections is sent as [N]: one element per image, Triton's "reshape" to [].
            | ({"reshape": {"shape": []}} if spec.name == "num_detections" else {})
            for spec in OUTPUTS
        ],
        "instance_group": instances,
        "dynamic_batching": {
            "preferred_batch_size": [serving.batch_max_size],
            "max_queue_delay_microseconds": int(serving.batch_max_delay_ms * 1000),
            "default_queue_policy": {
                "timeout_action": "REJECT",
                "default_timeout_microseconds": int(serving.request_timeout_ms * 1000),
                "allow_timeout_override": False,
                "max_queue_size": serving.queue_max,
            },
        },
        "parameters": {key: {"string_value": value} for key, value in serving.parameters.items()},
    }


def model_metadata(model_name: str) -> dict[str, Any]:
    """``GET /v2/models/NAME``: the model's versions, platform and tensors."""
    return {
        "name": model_name,
        "versions": [MODEL_VERSION],
        "platform": PLATFORM,
        "inputs": [INPUT.to_json()],
        "outputs": [spec.to_json() for spec in OUTPUTS],
    }
