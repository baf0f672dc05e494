"""The v2 request parser, fuzzed: every hostile body is a `V2RequestError` (400), never a crash.

`predictor.http.v2_codec.parse_infer_request` is pure (no aiohttp, no MXNet),
so hypothesis drives it directly and fast: lying ``binary_data_size`` and
element lengths, lengths that overflow 32 and 64 bits, header lengths of
thousands of digits, deeply nested and huge JSON, duplicate inputs, names
that are not UTF-8 or hold lone surrogates, and arbitrary bytes. The only
exception allowed out is `V2RequestError`, its message short and clear; a
well-formed request always parses. A last test sends a sample of the same
bodies to a real server: 400 with JSON, never a 500.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from predictor.http.v2_codec import HEADER_LENGTH, V2RequestError, parse_infer_request
from tests.support.server_process import ServerProcess

from .conftest import SMALL_EDGE

MAX_IMAGES = 64
# A message is for a person: it must say what is wrong in a few lines, however large the input.
MAX_MESSAGE_CHARS = 600
JPEG = b"\xff\xd8\xff\xe0fake-but-non-empty\xff\xd9"
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def parse_or_refuse(body: bytes, header_length: str | None) -> Any:
    """Parse; a `V2RequestError` is fine (its message checked), anything else fails the test."""
    try:
        return parse_infer_request(body, header_length, MAX_IMAGES)
    except V2RequestError as error:
        message = str(error)
        assert message and len(message) <= MAX_MESSAGE_CHARS, message[:2000]
        message.encode("utf-8")  # answerable as JSON: no lone surrogates
        return None


def framed(header: dict[str, Any] | bytes, binary: bytes) -> tuple[bytes, str]:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return raw + binary, str(len(raw))


def element(data: bytes, declared: int | None = None) -> bytes:
    return struct.pack("<I", len(data) if declared is None else declared) + data


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=25,
)
names = st.one_of(st.just("image"), st.text(max_size=12), st.sampled_from(["", "IMAGE", "\ud800"]))
datatypes = st.sampled_from(["BYTES", "FP32", "bytes", "", "UINT8"]) | json_values
shapes = st.one_of(
    st.lists(st.integers(min_value=-3, max_value=2**64), max_size=3),
    st.sampled_from([[1], [2], [1, 1], [2**31], [2**63], [-1], [0]]),
    json_values,
)
sizes = st.one_of(
    st.integers(min_value=-5, max_value=64),
    st.sampled_from([2**31 - 1, 2**31, 2**32, 2**32 + 5, 2**63, 2**64 + 1, 10**40]),
    json_values,
)


@st.composite
def v2_requests(draw: st.DrawFn) -> tuple[bytes, str | None]:
    """Requests near the valid ones: each part valid, lying or malformed at random."""
    inputs = []
    binary = b""
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        tensor: dict[str, Any] = {
            "name": draw(names),
            "datatype": draw(datatypes),
            "shape": draw(shapes),
        }
        if draw(st.booleans()):
            elements = draw(st.lists(st.sampled_from([JPEG, b"", b"x" * 7]), max_size=3))
            declared = draw(st.none() | sizes.filter(lambda v: isinstance(v, int) and v >= 0))
            chunk = b"".join(
                element(e, declared if isinstance(declared, int) and declared < 2**32 else None)
                for e in elements
            )
            chunk = chunk[: draw(st.integers(min_value=0, max_value=len(chunk)))]
            binary += chunk
            tensor["parameters"] = {"binary_data_size": draw(st.just(len(chunk)) | sizes)}
        else:
            encoded = base64.b64encode(JPEG).decode()
            tensor["data"] = draw(
                st.lists(st.sampled_from([encoded, "not base64!", "", encoded + "="]), max_size=3)
                | json_values
            )
        if draw(st.booleans()):
            tensor.setdefault("parameters", {})["content_type"] = draw(json_values)
        inputs.append(tensor)
    request: dict[str, Any] = {"inputs": inputs}
    if draw(st.booleans()):
        request["parameters"] = draw(
            st.fixed_dictionaries(
                {}, optional={"threshold": json_values, "binary_data_output": json_values}
            )
        )
    if draw(st.booleans()):
        request["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": names}, optional={"parameters": json_values}))
            | json_values
        )
    if draw(st.booleans()):
        request["id"] = draw(json_values)
    header = json.dumps(request).encode()
    binary += draw(st.binary(max_size=8)) if draw(st.booleans()) else b""
    how = draw(st.sampled_from(["honest", "none", "lying", "huge", "junk"]))
    lengths = {
        "honest": str(len(header)),
        "none": None,
        "lying": str(draw(st.integers(min_value=-2, max_value=len(header) + len(binary) + 2))),
        "huge": "9" * draw(st.sampled_from([20, 400, 5000])),
        "junk": draw(st.text(max_size=8)),
    }
    return header + binary, lengths[how]


@FUZZ
@given(v2_requests())
def test_near_valid_requests_parse_or_are_refused_clearly(
    request: tuple[bytes, str | None],
) -> None:
    body, header_length = request
    parse_or_refuse(body, header_length)


@FUZZ
@given(st.binary(max_size=300), st.none() | st.text(max_size=30))
def test_arbitrary_bytes_are_refused_clearly(body: bytes, header_length: str | None) -> None:
    parse_or_refuse(body, header_length)


@FUZZ
@given(json_values)
def test_any_json_document_is_refused_or_parsed(document: Any) -> None:
    parse_or_refuse(json.dumps(document).encode(), None)


def test_a_valid_request_parses() -> None:
    body, length = framed(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 2 * (4 + len(JPEG))},
                }
            ]
        },
        element(JPEG) * 2,
    )
    assert parse_infer_request(body, length, MAX_IMAGES).images == (JPEG, JPEG)


HOSTILE: dict[str, tuple[bytes, str | None]] = {
    "binary_data_size beyond the body": framed(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 2**64 + 1},
                }
            ]
        },
        element(JPEG),
    ),
    "element length that overflows": framed(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 4 + len(JPEG)},
                }
            ]
        },
        element(JPEG, declared=2**32 - 1),
    ),
    "header length of 5000 digits": (b'{"inputs": []}', "9" * 5000),
    "header length with unicode digits": (b'{"inputs": []}', "\u0661\u0662"),
    "nested 100000 deep": (b"[" * 100_000 + b"]" * 100_000, None),
    "data nested 100000 deep": (
        b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}]}",
        None,
    ),
    "shape nested 900 deep": (
        b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": '
        + b"[" * 900
        + b"]" * 900
        + b"}]}",
        None,
    ),
    "a number of 5000 digits": (b'{"inputs": [], "id": ' + b"7" * 5000 + b"}", None),
    "duplicate inputs": (
        json.dumps(
            {
                "inputs": [
                    {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["/9j/"]},
                    {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["/9j/"]},
                ]
            }
        ).encode(),
        None,
    ),
    "a name that is not UTF-8": (
        b'{"inputs": [{"name": "\xff\xfe", "datatype": "BYTES", "shape": [1], "data": []}]}',
        None,
    ),
    "a name with a lone surrogate": (
        b'{"inputs": [{"name": "\\ud800", "datatype": "BYTES", "shape": [1], "data": []}]}',
        None,
    ),
    "a name of a megabyte": (
        json.dumps(
            {"inputs": [{"name": "n" * 1_000_000, "datatype": "BYTES", "shape": [1]}]}
        ).encode(),
        None,
    ),
    "a million inputs": (
        b'{"inputs": [' + b",".join([b'{"name": "image"}'] * 1_000_000) + b"]}",
        None,
    ),
    "NaN threshold": (b'{"inputs": [], "parameters": {"threshold": NaN}}', None),
}


def test_hostile_bodies_are_refused_clearly() -> None:
    for label, (body, header_length) in HOSTILE.items():
        try:
            parse_infer_request(body, header_length, MAX_IMAGES)
        except V2RequestError as error:
            message = str(error)
            assert message and len(message) <= MAX_MESSAGE_CHARS, (label, message[:2000])
            message.encode("utf-8")
        else:
            raise AssertionError(f"{label}: parsed")


def test_hostile_bodies_get_400_json_from_a_real_server(small_model_prefix: Path) -> None:
    env = {"MODEL_PREFIX": str(small_model_prefix), "MODEL_EDGE": str(SMALL_EDGE)}
    with ServerProcess(env) as server:
        url = f"{server.url}/v2/models/ssd300_digits_shapes/infer"
        for label, (body, header_length) in HOSTILE.items():
            if header_length is not None and not header_length.isascii():
                continue  # not sendable as an HTTP header; the parser test covers it
            headers = {"Content-Type": "application/json"}
            if header_length is not None:
                headers[HEADER_LENGTH] = header_length
            request = urllib.request.Request(url, data=body, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    status, answer = response.status, response.read()
            except urllib.error.HTTPError as error:
                status, answer = error.code, error.read()
            assert status == 400, (label, status, answer[:300])
            assert "error" in json.loads(answer), label
        assert server.request("/ready")[0] == 200
        assert server.stop() == 0
    assert "Traceback" not in "".join(server.log)
