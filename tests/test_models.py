"""Several models behind one server: each request answered by the model it names."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bench.peer_check import compare_answers
from predictor.config import DeviceSpec, Settings
from predictor.http.app import create_app
from predictor.runtime.model import Detector, load_detectors
from tests.support.prometheus import metric_total

from .conftest import FRUIT_CLASSES, REPO_ROOT, encode_jpeg, known_objects, scene, settings_with

OTHER_CLASSES = FRUIT_CLASSES
JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture(scope="module")
def other_detectors(fruit_prefix: Path) -> list[Detector]:
    return load_detectors(fruit_prefix, 0, None, DeviceSpec(), 4)


async def two_model_client(
    aiohttp_client: Any, small_settings: Settings, digits: list[Detector], fruit: list[Detector]
) -> TestClient[Any, Any]:
    settings = settings_with(small_settings, model_name="digits")
    app = create_app(settings, {"digits": digits, "fruit": fruit})
    client: TestClient[Any, Any] = await aiohttp_client(app)
    return client


async def predict(client: TestClient[Any, Any], body: bytes, query: str = "") -> Any:
    async with client.post(f"/predict?threshold=0.05{query}", data=body, headers=JPEG) as reply:
        assert reply.status == 200, await reply.text()
        return (await reply.json())["prediction"]


async def v2_classes(client: TestClient[Any, Any], model: str, body: bytes) -> list[str]:
    request = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(body).decode()],
            }
        ],
        "parameters": {"threshold": 0.05},
    }
    async with client.post(f"/v2/models/{model}/infer", json=request) as reply:
        assert reply.status == 200, await reply.text()
        outputs = {o["name"]: o for o in (await reply.json())["outputs"]}
    count = outputs["num_detections"]["data"][0]
    classes: list[str] = outputs["classes"]["data"][:count]
    return classes


async def test_each_request_is_answered_by_the_model_it_names(
    aiohttp_client: Any,
    small_settings: Settings,
    detectors: list[Detector],
    other_detectors: list[Detector],
) -> None:
    client = await two_model_client(aiohttp_client, small_settings, detectors, other_detectors)
    body = encode_jpeg(known_objects().image)
    alone_digits = await predict(await aiohttp_client(create_app(small_settings, detectors)), body)
    # Concurrent requests to both models, by both protocols, interleaved.
    answers = await asyncio.gather(
        *(predict(client, body) for _ in range(4)),
        *(predict(client, body, "&model=fruit") for _ in range(4)),
        *(predict(client, body, "&model=digits") for _ in range(4)),
        *(v2_classes(client, "fruit", body) for _ in range(2)),
        *(v2_classes(client, "digits", body) for _ in range(2)),
    )
    default, fruit, digits = answers[0:4], answers[4:8], answers[8:12]
    v2_fruit, v2_digits = answers[12:14], answers[14:16]
    # Batched with other requests, the same image may differ from its answer alone in the
    # last float digits (oneDNN sums in another order for another batch size).
    for answer in default + digits:
        difference = compare_answers({"prediction": alone_digits}, {"prediction": answer})
        assert difference is None, f"the default model is the first one, digits: {difference}"
    assert {"3", "7", "circle"} <= {d["objectClass"] for d in alone_digits}
    for answer in fruit:
        assert answer, "the random fruit network reports something at 0.05"
        assert {d["objectClass"] for d in answer} <= set(OTHER_CLASSES)
        assert answer == fruit[0]
    assert all(set(c) <= set(OTHER_CLASSES) for c in v2_fruit)
    assert v2_fruit[0] == [d["objectClass"] for d in fruit[0]]
    assert v2_digits[0] == [d["objectClass"] for d in alone_digits]

    async with client.get("/metrics") as reply:
        text = await reply.text()
    for model, images in (("digits", 10), ("fruit", 6)):
        assert metric_total(text, "predictor_batch_size_sum", model=model) == images


async def test_models_are_listed_and_an_unknown_one_is_404(
    aiohttp_client: Any,
    small_settings: Settings,
    detectors: list[Detector],
    other_detectors: list[Detector],
) -> None:
    client = await two_model_client(aiohttp_client, small_settings, detectors, other_detectors)
    body = encode_jpeg(scene(3))
    async with client.post("/predict?model=nope", data=body, headers=JPEG) as reply:
        assert reply.status == 404
        assert (await reply.json())["error"] == (
            "unknown model 'nope'; this server serves 'digits', 'fruit'"
        )
    async with client.post("/v2/models/nope/infer", json={}) as reply:
        assert reply.status == 404
    async with client.get("/info") as reply:
        info = await reply.json()
    assert info["defaultModel"] == "digits"
    assert [(m["name"], m["classes"]) for m in info["models"]] == [
        ("digits", detectors[0].classes),
        ("fruit", OTHER_CLASSES),
    ]
    async with client.post("/v2/repository/index") as reply:
        index = await reply.json()
    assert [(m["name"], m["state"]) for m in index] == [("digits", "READY"), ("fruit", "READY")]
    async with client.get("/ready") as reply:
        assert reply.status == 200
        assert set((await reply.json())["models"]) == {"digits", "fruit"}


def serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`predictor serve` expected to stop at start-up (it must not start serving)."""
    return subprocess.run(
        [sys.executable, "-m", "predictor", "serve"],
        env={**os.environ, "REST_HOST": "127.0.0.1", "REST_PORT": "0", **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        check=False,
    )


def test_a_bad_models_value_stops_start_up_naming_it() -> None:
    result = serve({"MODELS": "digits=models/ssd300_digits_shapes,digits=models/x"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: MODELS='digits=models/ssd300_digits_shapes,digits=models/x': "
        "entry 2: the name 'digits' is used twice"
    )


def test_a_model_that_fails_to_load_stops_start_up_naming_it(tmp_path: Path) -> None:
    result = serve({"MODELS": f"digits=models/ssd300_digits_shapes,coco={tmp_path}/absent"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: model 'coco' did not load: model file not found: {tmp_path}/absent-symbol.json"
    )
    assert "serving" not in result.stderr
