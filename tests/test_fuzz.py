"""Fuzzing: thousands of mutated JPEGs through the decoder and through the HTTP endpoint.

The seeds are real files of every kind the server reads (baseline, progressive,
grayscale, restart markers, EXIF-rotated, CMYK, 12-bit lossy, 12- and 16-bit
lossless); hypothesis flips, overwrites, inserts, deletes, duplicates and cuts
their bytes, with a bias towards the marker bytes that steer a JPEG parser.

- Decoder: every mutant is decoded or refused with `ImageError`; nothing
  else escapes, nothing hangs, and a decoded tensor is finite and well formed.
- HTTP: every mutant posted to a real `predictor serve` gets 200, 400 or 413
  with a JSON body, never a 5xx, a hang or a dropped connection; afterwards the
  server is ready, answers a good image, and has logged no traceback.

The runs are reproducible (``derandomize``). For exploratory fuzzing set
``PREDICTOR_FUZZ_RANDOM=1`` and raise ``PREDICTOR_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import http.client
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from predictor.errors import ImageError
from predictor.runtime.imaging import prepare
from tests.support.jpegs import extended_jpeg_12bit, lossless_jpeg, with_exif_orientation
from tests.support.server_process import ServerProcess

from .conftest import SMALL_EDGE, encode_jpeg, scene

EXAMPLES = int(os.environ.get("PREDICTOR_FUZZ_EXAMPLES", "3000"))
HTTP_EXAMPLES = max(1, EXAMPLES // 3)
# Small enough that a mutated frame header cannot make one example slow.
MAX_PIXELS = 4_000_000


def fuzz_settings(examples: int) -> settings:
    """Reproducible runs of ``examples`` mutants, patient with a shared machine."""
    return settings(
        max_examples=examples,
        derandomize=not os.environ.get("PREDICTOR_FUZZ_RANDOM"),
        database=None,
        # Generous: the machine is shared; a hang would still be caught.
        deadline=timedelta(seconds=10),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _seeds() -> list[bytes]:
    import cv2

    small = scene(31, 96, 64)
    cmyk = io.BytesIO()
    Image.fromarray(small[:, :, ::-1]).convert("CMYK").save(cmyk, "JPEG", quality=80)
    gray = np.asarray(cv2.cvtColor(small, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    ok, restarts = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_RST_INTERVAL, 2])
    assert ok
    rgb16 = small[:32, :32, ::-1].astype(np.uint16) * 257
    return [
        encode_jpeg(small, quality=75),
        encode_jpeg(small, quality=75, progressive=True),
        encode_jpeg(gray, quality=75),
        restarts.tobytes(),
        with_exif_orientation(encode_jpeg(small, quality=60), 6),
        cmyk.getvalue(),
        extended_jpeg_12bit(small[:32, :32, ::-1].astype(np.uint16) * 16, quantizer=8),
        lossless_jpeg(rgb16 >> 4, 12),
        lossless_jpeg(rgb16, 16),
        with_exif_orientation(lossless_jpeg(rgb16[:, :, 0], 16), 8),
    ]


SEEDS = _seeds()
# Bytes that mean something to a JPEG parser: marker prefix, SOI/EOI, SOS,
# frame headers of several processes, DHT, DQT, DRI, APP1, stuffing.
HTTP_STATUSES: Counter[int] = Counter()
INTERESTING = [0x00, 0xFF, 0xD8, 0xD9, 0xDA, 0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xDB, 0xDD, 0xE1]


@st.composite
def mutated_jpegs(draw: st.DrawFn) -> bytes:
    """A seed JPEG with 1-8 random edits."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        # Most parsers break in the header: aim half of the edits at it.
        if draw(st.booleans()):
            position = min(position, draw(st.integers(0, min(len(data) - 1, 700))))
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "repeat", "cut"]))
        if operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[position] = draw(st.sampled_from(INTERESTING) | st.integers(0, 255))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 64))]
        elif operation == "repeat":
            length = draw(st.integers(1, 256))
            data[position:position] = data[position : position + length] * draw(st.integers(1, 4))
        else:
            del data[max(2, position) :]
    return bytes(data)


def test_seeds_are_decodable() -> None:
    for seed in SEEDS:
        prepared = prepare(seed, SMALL_EDGE, MAX_PIXELS)
        assert prepared.tensor.shape == (3, SMALL_EDGE, SMALL_EDGE)


@fuzz_settings(EXAMPLES)
@given(mutated_jpegs())
def test_mutated_jpegs_decode_or_are_refused_cleanly(data: bytes) -> None:
    try:
        prepared = prepare(data, SMALL_EDGE, MAX_PIXELS)
    except ImageError:
        return
    assert prepared.tensor.shape == (3, SMALL_EDGE, SMALL_EDGE)
    assert prepared.tensor.dtype == np.float32
    assert np.isfinite(prepared.tensor).all()
    assert 1 <= prepared.width * prepared.height <= MAX_PIXELS


# ------------------------------------------------------------------ through the HTTP endpoint


class Connection:
    """One keep-alive HTTP connection to the server, reopened only if the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def post(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        self.http.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
        response = self.http.getresponse()
        data = response.read()
        if response.getheader("Connection", "").lower() == "close":
            self.http.close()
            self.http = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        return response.status, response.getheader("Content-Type", ""), data


@pytest.fixture(scope="module")
def fuzz_server(small_model_prefix: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(
        {
            "MODEL_PREFIX": str(small_model_prefix),
            "MODEL_EDGE": str(SMALL_EDGE),
            "BATCH_MAX_SIZE": "4",
            "MAX_IMAGE_PIXELS": str(MAX_PIXELS),
            "PREPROCESS_WORKERS": "2",
        }
    )
    yield process
    process.kill()


@pytest.fixture(scope="module")
def connection(fuzz_server: ServerProcess) -> Connection:
    assert fuzz_server.port is not None
    return Connection(fuzz_server.port)


@fuzz_settings(HTTP_EXAMPLES)
@given(data=mutated_jpegs(), render=st.booleans())
def test_mutated_jpegs_over_http_get_json_4xx_or_200(
    connection: Connection, data: bytes, render: bool
) -> None:
    status, content_type, body = connection.post(
        "/predict?threshold=0.5" + ("&render=true" if render else ""), data
    )
    HTTP_STATUSES[status] += 1
    assert status in (200, 400, 413), (status, body[:200])
    if status == 200 and render:
        assert content_type == "image/jpeg" and body.startswith(b"\xff\xd8")
        return
    assert content_type.startswith("application/json")
    payload = json.loads(body)
    if status == 200:
        assert isinstance(payload["prediction"], list)
    else:
        assert isinstance(payload["error"], str) and payload["error"]


def test_server_is_healthy_after_the_fuzzing(
    fuzz_server: ServerProcess, connection: Connection
) -> None:
    # Runs after the fuzz test above (same module, file order).
    assert fuzz_server.process.poll() is None, "the server died"
    # Both ways through the server were taken often: decoded and refused.
    total = sum(HTTP_STATUSES.values())
    assert total >= HTTP_EXAMPLES, HTTP_STATUSES
    assert HTTP_STATUSES[200] >= total // 20 and HTTP_STATUSES[400] >= total // 20, HTTP_STATUSES
    assert fuzz_server.request("/ready")[0] == 200
    status, _, body = connection.post("/predict", encode_jpeg(scene(32)))
    assert status == 200 and "prediction" in json.loads(body)
    log = "".join(fuzz_server.log)
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
