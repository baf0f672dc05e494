"""The HTTP contract, on a real server bound to a loopback port, with the real model."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import cv2
import mxnet as mx
import numpy as np
import numpy.typing as npt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from predictor.config import DeviceSpec, Settings
from predictor.http.app import create_app
from predictor.http.page import render_index
from predictor.http.predict import wants_image
from predictor.runtime.model import Detector, load_detectors
from tests.support.jpegs import (
    extended_jpeg_12bit,
    lossless_jpeg,
    with_declared_size,
    with_exif_orientation,
)
from tests.support.prometheus import metric_total

from .conftest import SMALL_CLASSES, encode_jpeg, scene, settings_with

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Client = TestClient[Any, Any]
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture
async def client(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> Client:
    return await aiohttp_client(create_app(small_settings, detectors))


async def client_with(
    aiohttp_client: ClientFactory, base: Settings, detectors: list[Detector], **changes: object
) -> Client:
    return await aiohttp_client(create_app(settings_with(base, **changes), detectors))


async def post_jpeg(client: Client, body: bytes, query: str = "") -> tuple[int, Any]:
    async with client.post("/predict" + query, data=body, headers=JPEG) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def assert_contract(payload: Any, width: int, height: int, threshold: float) -> None:
    assert set(payload) == {"prediction"}
    previous = 1.0
    for item in payload["prediction"]:
        assert set(item) == {"objectClass", "probability", "x", "y", "width", "height"}
        assert isinstance(item["objectClass"], str)
        for key in ("x", "y", "width", "height"):
            assert isinstance(item[key], int), (key, item)
        assert threshold < item["probability"] <= 1.0
        assert item["probability"] <= previous  # most confident first
        previous = item["probability"]
        assert item["x"] >= 0 and item["x"] + item["width"] <= width
        assert item["y"] >= 0 and item["y"] + item["height"] <= height
        assert item["width"] > 0 and item["height"] > 0


async def test_predict_answers_the_contract(client: Client) -> None:
    body = encode_jpeg(scene(1, 800, 600))
    async with client.post("/predict", data=body, headers=JPEG) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("application/json")
        text = await response.text()
    payload = json.loads(text)
    assert payload["prediction"], "the calibrated test network finds objects at 0.5"
    assert_contract(payload, 800, 600, 0.5)
    assert "NaN" not in text and "Infinity" not in text


async def test_boxes_are_in_original_pixels_for_any_size(client: Client) -> None:
    for width, height in ((1920, 1080), (97, 301), (300, 300), (2000, 40)):
        status, payload = await post_jpeg(
            client, encode_jpeg(scene(2, width, height)), "?threshold=0"
        )
        assert status == 200
        assert_contract(payload, width, height, 0.0)
        assert payload["prediction"]
        # Boxes reach beyond the 300-px network input: they were scaled back.
        if width > 300:
            assert max(d["x"] + d["width"] for d in payload["prediction"]) > 300


async def test_threshold_query_filters_and_overrides_default(client: Client) -> None:
    body = encode_jpeg(scene(3))
    _, everything = await post_jpeg(client, body, "?threshold=0")
    _, default = await post_jpeg(client, body)
    _, strict = await post_jpeg(client, body, "?threshold=0.99999")
    probabilities = [d["probability"] for d in everything["prediction"]]
    assert len(default["prediction"]) == sum(p > 0.5 for p in probabilities)
    assert len(strict["prediction"]) == sum(p > 0.99999 for p in probabilities)
    assert len(everything["prediction"]) > len(strict["prediction"])
    assert default["prediction"] == everything["prediction"][: len(default["prediction"])]


async def test_probability_more_sets_the_default_threshold(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(
        aiohttp_client, small_settings, detectors, probability_threshold=0.9999
    )
    _, payload = await post_jpeg(client, encode_jpeg(scene(3)))
    assert all(d["probability"] > 0.9999 for d in payload["prediction"])


@pytest.mark.parametrize("value", ["nan", "-1", "2", "abc", "", "inf"])
async def test_bad_threshold_is_400(client: Client, value: str) -> None:
    status, payload = await post_jpeg(client, encode_jpeg(scene(4)), f"?threshold={value}")
    assert status == 400
    assert "threshold" in payload["error"]


@pytest.mark.parametrize(
    "content_type", ["image/png", "text/plain", "application/octet-stream", "multipart/form-data"]
)
async def test_other_content_type_is_invalid_content(client: Client, content_type: str) -> None:
    body = encode_jpeg(scene(5))
    async with client.post("/predict", data=body, headers={"Content-Type": content_type}) as r:
        assert r.status == 400
        assert await r.json() == {"error": "Invalid content"}


async def test_missing_content_type_is_invalid_content(client: Client) -> None:
    async with client.post("/predict", data=b"", skip_auto_headers=["Content-Type"]) as r:
        assert r.status == 400
        assert await r.json() == {"error": "Invalid content"}


async def test_content_type_parameters_and_case_are_accepted(client: Client) -> None:
    body = encode_jpeg(scene(6))
    headers = {"Content-Type": "image/JPEG; charset=binary"}
    async with client.post("/predict", data=body, headers=headers) as response:
        assert response.status == 200
        assert "prediction" in await response.json()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "not a JPEG"),
        (b"GIF89a" + b"\x00" * 100, "not a JPEG"),
        (b"random bytes that are not an image at all", "not a JPEG"),
    ],
)
async def test_undecodable_bodies_are_400(client: Client, body: bytes, fragment: str) -> None:
    status, payload = await post_jpeg(client, body)
    assert status == 400
    assert fragment in payload["error"]


async def test_truncated_jpeg_is_400_and_server_keeps_serving(client: Client) -> None:
    whole = encode_jpeg(scene(7))
    for cut in (3, 20, 200):
        status, payload = await post_jpeg(client, whole[:cut])
        assert status == 400, payload
        assert payload["error"]
    status, _ = await post_jpeg(client, whole)
    assert status == 200


async def test_body_over_limit_is_413(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, max_body_bytes=4096)
    status, payload = await post_jpeg(client, encode_jpeg(scene(8), quality=95))
    assert status == 413
    assert "4096" in payload["error"]


async def test_image_over_pixel_limit_is_413(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(
        aiohttp_client, small_settings, detectors, max_image_pixels=100 * 100
    )
    status, payload = await post_jpeg(client, encode_jpeg(scene(9, 200, 100)))
    assert status == 413
    assert "200x100" in payload["error"]


async def test_full_queue_answers_503_with_retry_after(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(
        aiohttp_client, small_settings, detectors, queue_max=2, batch_max_delay_ms=50.0
    )
    body = encode_jpeg(scene(10))

    async def one() -> tuple[int, str | None, Any]:
        async with client.post("/predict", data=body, headers=JPEG) as response:
            return response.status, response.headers.get("Retry-After"), await response.json()

    results = await asyncio.gather(*(one() for _ in range(24)))
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) == {200, 503}, statuses
    for status, retry_after, payload in results:
        if status == 503:
            assert retry_after is not None and int(retry_after) >= 1
            assert "queue is full" in payload["error"]
        else:
            assert "prediction" in payload
    status, _ = await post_jpeg(client, body)
    assert status == 200


async def test_wrong_method_is_405_json(client: Client) -> None:
    async with client.get("/predict") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert "not allowed" in (await response.json())["error"]
    async with client.post("/health") as response:
        assert response.status == 405


async def test_unknown_path_is_404_json(client: Client) -> None:
    async with client.post("/nothing-here", data=b"x", headers=JPEG) as response:
        assert response.status == 404
        assert (await response.json())["error"] == "not found: /nothing-here"


async def test_custom_entry_point(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, entry_point="/detect")
    async with client.post("/detect", data=encode_jpeg(scene(11)), headers=JPEG) as response:
        assert response.status == 200
    async with client.post("/predict", data=encode_jpeg(scene(11)), headers=JPEG) as response:
        assert response.status == 404


async def test_health_and_ready(client: Client) -> None:
    async with client.get("/health") as response:
        assert response.status == 200
        assert await response.json() == {"status": "alive"}
    async with client.get("/ready") as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"


async def test_metrics_count_requests_statuses_and_queue(client: Client) -> None:
    await post_jpeg(client, encode_jpeg(scene(12)))
    await post_jpeg(client, b"not a jpeg")
    async with client.get("/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    assert re.search(r'predictor_requests_total\{route="/predict",status="200"\} 1\.0', text)
    assert re.search(r'predictor_requests_total\{route="/predict",status="400"\} 1\.0', text)
    assert "predictor_request_duration_seconds_bucket" in text
    assert metric_value(text, "predictor_batch_size_count") == 1
    assert metric_value(text, "predictor_queue_depth") == 0
    assert "process_resident_memory_bytes" in text


def normalised(payload: Any) -> list[tuple[str, int, int, int, int, float]]:
    """Detections in an order that does not depend on float ties."""
    return sorted(
        (d["objectClass"], d["x"], d["y"], d["width"], d["height"], d["probability"])
        for d in payload["prediction"]
    )


def assert_same_answer(first: Any, second: Any) -> None:
    """Same classes, boxes within a pixel, probabilities within 1e-4."""
    a, b = normalised(first), normalised(second)
    assert len(a) == len(b)
    for da, db in zip(a, b, strict=True):
        assert da[0] == db[0]
        assert all(abs(p - q) <= 1 for p, q in zip(da[1:5], db[1:5], strict=True)), (da, db)
        assert abs(da[5] - db[5]) <= 1e-4


async def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    client: Client,
) -> None:
    bodies = [encode_jpeg(scene(100 + i, 320 + 16 * i, 240 + 8 * i)) for i in range(32)]
    alone = [await post_jpeg(client, body, "?threshold=0.3") for body in bodies]
    together = await asyncio.gather(*(post_jpeg(client, body, "?threshold=0.3") for body in bodies))
    distinct = {json.dumps(normalised(payload)) for _, payload in alone}
    assert len(distinct) == len(bodies), "every test image must give a different answer"
    for (status_a, single), (status_b, batched) in zip(alone, together, strict=True):
        assert status_a == status_b == 200
        assert_same_answer(single, batched)
    async with client.get("/metrics") as response:
        text = await response.text()
    passes = metric_value(text, "predictor_batch_size_count")
    single_image_passes = metric_value(text, "predictor_batch_size_bucket", le="1.0")
    assert passes - single_image_passes >= 1, "the concurrent burst formed no batch of 2+"
    assert metric_value(text, "predictor_batch_size_sum") == 64  # every image ran exactly once


def metric_value(text: str, name: str, **labels: str) -> float:
    """A metric's value over every model; the metric must be there."""
    assert (
        name.split("{")[0].removesuffix("_total").removesuffix("_count").removesuffix("_sum")
        in text
    ), f"{name} not in /metrics"
    return metric_total(text, name, **labels)


async def test_chunked_upload_over_the_limit_is_413(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, max_body_bytes=8192)
    body = encode_jpeg(scene(13), quality=98)
    assert len(body) > 8192

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]

    async with client.post("/predict", data=chunks(), headers=JPEG) as response:
        assert response.status == 413
        assert "8192" in (await response.json())["error"]
    small = encode_jpeg(scene(13, 64, 48), quality=50)

    async def small_chunks() -> AsyncIterator[bytes]:
        yield small[:100]
        yield small[100:]

    async with client.post("/predict", data=small_chunks(), headers=JPEG) as response:
        assert response.status == 200


async def test_a_body_arriving_in_many_pieces_is_read_whole(client: Client) -> None:
    """The body is joined from every piece the socket delivers, in order, to the last byte."""
    body = encode_jpeg(scene(21, 640, 480), quality=98)
    assert len(body) > 16 * 1024
    async with client.post("/predict", data=body, headers=JPEG) as response:
        assert response.status == 200
        whole = await response.json()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 1024):
            yield body[start : start + 1024]
            await asyncio.sleep(0.005)  # each piece reaches the server as its own read

    async with client.post("/predict", data=pieces(), headers=JPEG) as response:
        assert response.status == 200
        assert await response.json() == whole


async def test_batches_spread_over_replicas_on_cpu_contexts_standing_in_for_gpus(
    aiohttp_client: ClientFactory, small_settings: Settings
) -> None:
    devices = DeviceSpec(cpu_replicas=2)
    replicas = load_detectors(small_settings.model_prefix, 0, small_settings.model_edge, devices, 2)
    assert [d.context for d in replicas] == [mx.cpu(0), mx.cpu(1)]
    before = [d.batches_run for d in replicas]
    client = await client_with(
        aiohttp_client, small_settings, replicas, devices=devices, batch_max_size=2
    )
    bodies = [encode_jpeg(scene(200 + i)) for i in range(24)]
    results = await asyncio.gather(*(post_jpeg(client, body) for body in bodies))
    assert all(status == 200 for status, _ in results)
    used = [d.batches_run - b for d, b in zip(replicas, before, strict=True)]
    assert all(n > 0 for n in used), f"forward passes per replica: {used}"
    # The same images give the same answers whichever replica ran them.
    again = [await post_jpeg(client, body) for body in bodies[:4]]
    for (_, repeated), (_, first) in zip(again, results[:4], strict=True):
        assert_same_answer(repeated, first)
    for replica in replicas:
        replica.close()


# ------------------------------------------------------------------ drawn answers


def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a decodable image"
    return np.asarray(image, dtype=np.uint8)


async def post_for_image(
    client: Client, body: bytes, query: str = "", headers: dict[str, str] | None = None
) -> tuple[int, str, bytes]:
    async with client.post(
        "/predict" + query, data=body, headers={**JPEG, **(headers or {})}
    ) as response:
        return response.status, response.content_type, await response.read()


async def test_render_true_answers_the_image_with_the_boxes_drawn(client: Client) -> None:
    original = scene(14, 800, 600)
    body = encode_jpeg(original, quality=95)
    _, payload = await post_jpeg(client, body, "?threshold=0.9")
    detections = payload["prediction"]
    assert detections, "the stand-in network finds objects above 0.9"
    async with client.post("/predict?threshold=0.9&render=true", data=body, headers=JPEG) as r:
        assert r.status == 200
        assert r.content_type == "image/jpeg"
        assert "render;dur=" in r.headers["Server-Timing"]
        drawn = decode_image(await r.read())
    assert drawn.shape == original.shape  # full resolution, not the network's 300 x 300
    difference = np.abs(drawn.astype(np.int16) - original.astype(np.int16)).max(axis=2)
    for d in detections:
        # The box's outline is drawn in its colour, along its edges.
        left_edge = difference[d["y"] + 2 : d["y"] + d["height"] - 2, d["x"]]
        assert np.median(left_edge) > 40, d
    # Away from every box and label the picture is the photo, re-encoded.
    untouched = np.ones(difference.shape, bool)
    for d in detections:
        untouched[max(0, d["y"] - 30) : d["y"] + d["height"] + 3, d["x"] : d["x"] + 200] = False
        untouched[
            d["y"] : d["y"] + d["height"] + 3, max(0, d["x"] - 3) : d["x"] + d["width"] + 3
        ] = False
    assert untouched.mean() > 0.2
    assert np.median(difference[untouched]) <= 6


async def test_accept_image_jpeg_answers_the_drawn_image(client: Client) -> None:
    body = encode_jpeg(scene(15, 640, 480))
    status, content_type, data = await post_for_image(
        client, body, headers={"Accept": "image/jpeg"}
    )
    assert (status, content_type) == (200, "image/jpeg")
    assert decode_image(data).shape == (480, 640, 3)
    # ?render decides over Accept.
    status, content_type, _ = await post_for_image(
        client, body, "?render=false", headers={"Accept": "image/jpeg"}
    )
    assert (status, content_type) == (200, "application/json")
    status, content_type, _ = await post_for_image(
        client, body, "?render=1", headers={"Accept": "application/json"}
    )
    assert (status, content_type) == (200, "image/jpeg")


@pytest.mark.parametrize(
    ("render", "accept", "image"),
    [
        (None, None, False),
        (None, "*/*", False),
        (None, "application/json", False),
        (None, "image/jpeg", True),
        (None, "IMAGE/JPEG; q=1", True),
        (None, "image/*", True),
        (None, "image/jpeg, application/json", False),  # a tie keeps the contract's JSON
        (None, "image/jpeg, */*;q=0.8", True),
        (None, "application/json;q=0.5, image/jpeg", True),
        (None, "image/jpeg;q=0.5, application/json", False),
        (None, "image/jpeg;q=0", False),
        (None, "image/jpeg;q=abc", False),
        (None, "image/png", False),
        (None, "text/html,application/xhtml+xml,*/*;q=0.8", False),
        ("true", "application/json", True),
        ("TRUE", None, True),
        ("1", None, True),
        ("false", "image/jpeg", False),
        ("0", "image/jpeg", False),
    ],
)
def test_wants_image(render: str | None, accept: str | None, image: bool) -> None:
    assert wants_image(render, accept) is image


@pytest.mark.parametrize("value", ["yes", "", "2", "jpeg"])
async def test_bad_render_value_is_400(client: Client, value: str) -> None:
    status, payload = await post_jpeg(client, encode_jpeg(scene(16)), f"?render={value}")
    assert status == 400
    assert payload["error"] == "render: expected true or false"


async def test_render_keeps_the_json_errors(client: Client) -> None:
    body = encode_jpeg(scene(17))
    wants = {"Accept": "image/jpeg"}
    cases = [
        ("?render=true", body, {"Content-Type": "image/png", **wants}, "Invalid content"),
        ("?render=true", b"not a jpeg", {**JPEG, **wants}, "not a JPEG"),
        ("?render=true&threshold=2", body, {**JPEG, **wants}, "threshold"),
        ("", b"", {**JPEG, **wants}, "empty"),
    ]
    for query, data, headers, fragment in cases:
        async with client.post("/predict" + query, data=data, headers=headers) as response:
            assert (response.status, response.content_type) == (400, "application/json")
            assert fragment in (await response.json())["error"], query


async def test_render_keeps_the_limits(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(
        aiohttp_client, small_settings, detectors, max_body_bytes=65536, max_image_pixels=250_000
    )
    heavy = encode_jpeg(scene(18, 800, 600), quality=100)
    assert len(heavy) > 65536
    tall = encode_jpeg(scene(18, 200, 1500), quality=50)
    for body in (heavy, tall):
        async with client.post("/predict?render=true", data=body, headers=JPEG) as r:
            assert (r.status, r.content_type) == (413, "application/json")
            assert (await r.json())["error"]


async def test_render_applies_the_threshold(client: Client) -> None:
    original = scene(19, 640, 480)
    body = encode_jpeg(original, quality=95)
    status, _, data = await post_for_image(client, body, "?render=true&threshold=1")
    assert status == 200
    difference = np.abs(decode_image(data).astype(np.int16) - original.astype(np.int16))
    assert difference.mean() < 4, "nothing is above 1: nothing is drawn"


async def test_render_draws_on_the_image_as_displayed(client: Client) -> None:
    # Stored 640 x 480; EXIF orientation 6 displays it 480 wide and 640 high.
    body = with_exif_orientation(encode_jpeg(scene(20, 640, 480)), 6)
    _, payload = await post_jpeg(client, body, "?threshold=0.9")
    status, _, data = await post_for_image(client, body, "?render=true&threshold=0.9")
    assert status == 200
    assert decode_image(data).shape == (640, 480, 3)
    assert all(d["x"] + d["width"] <= 480 for d in payload["prediction"])


async def test_server_timing_reports_the_steps(client: Client) -> None:
    async with client.post("/predict", data=encode_jpeg(scene(21)), headers=JPEG) as response:
        assert response.status == 200
        header = response.headers["Server-Timing"]
    steps = dict(re.findall(r"(\w+);dur=([\d.]+)", header))
    assert list(steps) == ["read", "decode", "infer", "total"]
    durations = {name: float(value) for name, value in steps.items()}
    assert durations["infer"] > 0
    assert durations["total"] >= durations["read"] + durations["decode"] + durations["infer"] - 0.3
    async with client.post("/predict", data=b"junk", headers=JPEG) as response:
        assert response.status == 400
        assert "total;dur=" in response.headers["Server-Timing"]


# ------------------------------------------------------------------ the web page's routes


async def test_page_is_served_with_the_settings_in_it(client: Client) -> None:
    async with client.get("/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        html = await response.text()
    match = re.search(r'<script type="application/json" id="predictor-config">(.*?)</script>', html)
    assert match, html
    config = json.loads(match.group(1))
    assert config["entryPoint"] == "/predict"
    assert config["modelEdge"] == 300
    assert config["defaultThreshold"] == 0.5
    assert 'src="static/app.js"' in html and 'href="static/style.css"' in html
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        async with client.get(path) as response:
            assert response.status == 200, path
            assert kind in response.content_type
            assert response.headers["Cache-Control"] == "no-cache"
    for path in ("/static/", "/static/missing.js", "/static/../app.py", "/static/%2e%2e/app.py"):
        async with client.get(path) as response:
            assert response.status in (403, 404), path
            assert "error" in await response.json()


async def test_info_tells_clients_the_settings(client: Client) -> None:
    async with client.get("/info") as response:
        assert response.status == 200
        info = await response.json()
    assert info == {
        "entryPoint": "/predict",
        "modelEdge": 300,
        "defaultThreshold": 0.5,
        "classes": list(SMALL_CLASSES),
        "defaultModel": "ssd300_digits_shapes",
        "models": [
            {
                "name": "ssd300_digits_shapes",
                "classes": list(SMALL_CLASSES),
                "inputWidth": 300,
                "inputHeight": 300,
                "resize": "stretch",
            }
        ],
        "maxBodyBytes": 20 * 1024 * 1024,
        "maxImagePixels": 50_000_000,
        "authRequired": False,
    }


async def test_page_follows_a_custom_entry_point_even_at_the_root(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, entry_point="/")
    async with client.get("/") as response:
        assert response.status == 200
        assert '"entryPoint": "/"' in await response.text()
    status, payload = await post_root(client, encode_jpeg(scene(22)))
    assert status == 200 and "prediction" in payload
    async with client.get("/metrics") as response:
        text = await response.text()
    # Only the detection is timed, not the page.
    assert metric_value(text, "predictor_request_duration_seconds_count") == 1


async def post_root(client: Client, body: bytes) -> tuple[int, Any]:
    async with client.post("/", data=body, headers=JPEG) as response:
        return response.status, await response.json()


def test_settings_in_the_page_cannot_close_its_script_element() -> None:
    info = {"entryPoint": "/</script><script>alert(1)</script>&"}
    html = render_index(info, template="<script>__PREDICTOR_CONFIG__</script>")
    assert html.count("</script>") == 1
    inner = html.removeprefix("<script>").removesuffix("</script>")
    assert json.loads(inner) == info


# ------------------------------------------------------------------ hostile and odd input


def other_format(extension: str) -> bytes:
    """A real image file of another format (to be sent labelled image/jpeg)."""
    image = scene(40, 64, 48)
    if extension == ".gif":
        buffer = io.BytesIO()
        Image.fromarray(image[:, :, ::-1]).save(buffer, "GIF")
        return buffer.getvalue()
    ok, encoded = cv2.imencode(extension, image)
    assert ok
    return encoded.tobytes()


BAD_BODIES = {
    "empty": (b"", "empty"),
    "truncated": (encode_jpeg(scene(41))[:300], "could not be decoded"),
    "random": (np.random.default_rng(0).bytes(5000), "not a JPEG"),
    "png": (other_format(".png"), "not a JPEG"),
    "gif": (other_format(".gif"), "not a JPEG"),
    "bmp": (other_format(".bmp"), "not a JPEG"),
    "webp": (other_format(".webp"), "not a JPEG"),
    "header only": (encode_jpeg(scene(41))[:600], "decoded"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_bodies_get_json_400_without_disturbing_good_requests(
    client: Client, name: str
) -> None:
    body, fragment = BAD_BODIES[name]
    good = [encode_jpeg(scene(42 + i)) for i in range(3)]
    alone = [await post_jpeg(client, g, "?threshold=0.3") for g in good]
    # Bad and good requests at once: the good ones may share batches with nothing bad.
    results = await asyncio.gather(
        *(post_jpeg(client, body) for _ in range(4)),
        *(post_jpeg(client, g, "?threshold=0.3") for g in good),
    )
    for status, payload in results[:4]:
        if name == "header only" and status == 200:
            continue  # libjpeg may fill in a truncated scan: a partial image is fine
        assert status == 400, payload
        assert fragment in payload["error"], payload
    for (status, together), (_, single) in zip(results[4:], alone, strict=True):
        assert status == 200
        assert_same_answer(together, single)
    async with client.get("/ready") as response:
        assert response.status == 200


def unusual_jpegs() -> dict[str, tuple[bytes, int, int]]:
    """Real, valid JPEGs of every unusual kind, with their displayed sizes."""
    image = scene(43, 320, 240)
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    cmyk = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(cmyk, "JPEG", quality=90)
    gray = np.asarray(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), dtype=np.uint8)
    small = np.ascontiguousarray(rgb[:64, :96])
    return {
        "cmyk": (cmyk.getvalue(), 320, 240),
        "grayscale": (encode_jpeg(gray), 320, 240),
        "progressive": (encode_jpeg(image, progressive=True), 320, 240),
        "12-bit lossy": (extended_jpeg_12bit(small.astype(np.uint16) * 16), 96, 64),
        "16-bit lossless": (lossless_jpeg(small.astype(np.uint16) * 257, 16), 96, 64),
        "exif-rotated": (with_exif_orientation(encode_jpeg(image), 6), 240, 320),
        "1x1": (encode_jpeg(np.full((1, 1, 3), 128, np.uint8)), 1, 1),
        "1x10000": (encode_jpeg(np.full((10000, 1, 3), 128, np.uint8)), 1, 10000),
        "10000x1": (encode_jpeg(np.full((1, 10000, 3), 128, np.uint8)), 10000, 1),
    }


UNUSUAL = unusual_jpegs()


@pytest.mark.parametrize("name", list(UNUSUAL))
async def test_unusual_real_jpegs_are_answered_in_their_displayed_pixels(
    client: Client, name: str
) -> None:
    body, width, height = UNUSUAL[name]
    status, payload = await post_jpeg(client, body, "?threshold=0")
    assert status == 200, payload
    assert_contract(payload, width, height, 0.0)


async def test_decompression_bomb_is_refused_from_its_header_at_once(client: Client) -> None:
    bomb = with_declared_size(encode_jpeg(scene(44, 64, 64)), 60000, 60000)
    started = time.monotonic()
    status, payload = await post_jpeg(client, bomb)
    assert status == 413
    assert "60000x60000 = 3600000000 pixels" in payload["error"]
    # Nothing near 3.6 gigapixels (10 GB of BGR) was allocated or decoded.
    assert time.monotonic() - started < 5


async def raw_exchange(client: Client, request: bytes, read_limit: int = 65536) -> bytes:
    """Send raw bytes on a new connection; return all that comes back until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(read_limit), timeout=10)
    finally:
        writer.close()


async def test_declared_body_over_the_limit_is_413_without_reading_it(client: Client) -> None:
    # A gigabyte is announced and only a kilobyte sent: the answer cannot wait for the rest.
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    started = time.monotonic()
    answer = await raw_exchange(client, head + b"\xff" * 1024)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in answer
    assert b'"error": "the body is larger than 20971520 bytes"' in answer
    assert time.monotonic() - started < 5


async def test_chunked_body_over_the_limit_is_413_with_connection_close(client: Client) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % (1 << 20) + b"\xff" * (1 << 20) + b"\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    try:
        writer.write(head)
        for _ in range(21):  # 21 MiB: over the 20 MiB limit
            writer.write(chunk)
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), timeout=10)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
        assert b"Connection: close" in answer
    finally:
        writer.close()
    # That the server then stops reading is tested on `predictor serve` itself
    # (tests/test_robustness.py), which sets how long it lingers.


async def test_expect_100_continue_over_the_limit_is_413_before_the_body(client: Client) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n"
    )
    answer = await raw_exchange(client, head)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:100]
    assert b"100 Continue" not in answer
    # Within the limit, the client is told to go on, and gets its answer.
    body = encode_jpeg(scene(45, 64, 48))
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: %d\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n" % len(body)
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
    writer.write(head)
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(body)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK")


# ------------------------------------------------------------------ deadlines


async def test_request_past_its_deadline_gets_504_json(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    # 1 ms is less than decoding alone takes: no request can make it.
    client = await client_with(aiohttp_client, small_settings, detectors, request_timeout_ms=1.0)
    status, payload = await post_jpeg(client, encode_jpeg(scene(46)))
    assert status == 504
    assert payload["error"].startswith("timed out after REQUEST_TIMEOUT_MS=1: ")
    async with client.get("/metrics") as response:
        text = await response.text()
    assert metric_value(text, "predictor_deadline_exceeded_total") == 1
    assert metric_value(text, "predictor_batch_size_count") == 0, "a timed-out image is never run"


async def test_the_periodic_trim_runs_and_is_counted(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    # predictor_memory_trims_total tells a benchmark when the server has trimmed (bench/soak.py).
    client = await client_with(
        aiohttp_client, small_settings, detectors, memory_trim_interval_s=0.05
    )
    deadline = time.monotonic() + 30
    trims = 0.0
    while trims < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        async with client.get("/metrics") as response:
            trims = metric_value(await response.text(), "predictor_memory_trims_total")
    assert trims >= 2


async def test_no_periodic_trim_when_its_interval_is_zero(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, memory_trim_interval_s=0)
    await asyncio.sleep(0.3)
    async with client.get("/metrics") as response:
        assert metric_value(await response.text(), "predictor_memory_trims_total") == 0


# ------------------------------------------------------------------ API key

KEY = "k3y-for-tests-0123456789abcdef"


async def keyed_client(
    aiohttp_client: ClientFactory,
    small_settings: Settings,
    detectors: list[Detector],
    metrics_require_key: bool = False,
) -> Client:
    return await client_with(
        aiohttp_client,
        small_settings,
        detectors,
        api_key=KEY,
        metrics_require_key=metrics_require_key,
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong-key-0123456789abcdef", f"Basic {KEY}", f"Bearer {KEY}x"],
)
async def test_detection_needs_the_api_key(
    aiohttp_client: ClientFactory,
    small_settings: Settings,
    detectors: list[Detector],
    authorization: str | None,
) -> None:
    client = await keyed_client(aiohttp_client, small_settings, detectors)
    headers = {**JPEG, **({"Authorization": authorization} if authorization is not None else {})}
    async with client.post("/predict", data=encode_jpeg(scene(47)), headers=headers) as r:
        assert r.status == 401
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="predictor"'
        assert (await r.json())["error"].startswith("missing or invalid API key")


async def test_the_api_key_opens_detection_and_is_checked_before_anything_else(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await keyed_client(aiohttp_client, small_settings, detectors)
    body = encode_jpeg(scene(48))
    for scheme in ("Bearer", "bearer"):
        headers = {**JPEG, "Authorization": f"{scheme} {KEY}"}
        async with client.post("/predict", data=body, headers=headers) as response:
            assert response.status == 200
            assert "prediction" in await response.json()
    # Without the key, nothing else is looked at: not the content type, not the body.
    async with client.post("/predict", data=b"x", headers={"Content-Type": "text/plain"}) as r:
        assert r.status == 401
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    assert (await raw_exchange(client, head)).startswith(b"HTTP/1.1 401 ")


async def test_health_ready_page_and_info_stay_open_with_a_key(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await keyed_client(aiohttp_client, small_settings, detectors)
    for path in ("/health", "/ready", "/", "/info", "/static/app.js", "/metrics"):
        async with client.get(path) as response:
            assert response.status == 200, path
    async with client.get("/info") as response:
        assert (await response.json())["authRequired"] is True
    async with client.get("/") as response:
        html = await response.text()
    # The page asks for the key (see app.js); the key itself is never in it.
    assert '"authRequired": true' in html and 'id="api-key"' in html
    assert KEY not in html


async def test_metrics_follow_their_own_setting(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await keyed_client(aiohttp_client, small_settings, detectors, metrics_require_key=True)
    async with client.get("/metrics") as response:
        assert response.status == 401
    async with client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}) as response:
        assert response.status == 200
        assert "predictor_requests_total" in await response.text()
    async with client.get("/health") as response:
        assert response.status == 200


async def test_keys_and_bodies_never_reach_the_log(
    aiohttp_client: ClientFactory,
    small_settings: Settings,
    detectors: list[Detector],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await keyed_client(aiohttp_client, small_settings, detectors)
    marker = b"SECRET-BODY-MARKER"
    bodies = [encode_jpeg(scene(49)) + marker, b"\xff\xd8" + marker, marker]
    for authorization in (f"Bearer {KEY}", "Bearer guessed-key-0123456789"):
        for body in bodies:
            headers = {**JPEG, "Authorization": authorization}
            async with client.post("/predict", data=body, headers=headers) as response:
                await response.read()
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert KEY not in text and "guessed-key" not in text and "SECRET-BODY" not in text
    assert KEY not in repr(settings_with(small_settings, api_key=KEY))
