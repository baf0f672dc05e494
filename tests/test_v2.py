"""The Open Inference Protocol v2 routes, driven by the real `tritonclient` and by raw requests.

A real `predictor serve` (tests.support.server_process) answers NVIDIA's own client
library, in its default binary form and in JSON, and every answer is checked
against what ``/predict`` says for the same image and threshold. Malformed v2
requests go over raw sockets (urllib) to the same process, which must answer
each with a 4xx JSON error and stay healthy. Settings that need their own
server (API key, model name, a tiny queue or deadline) use an in-process app
on a loopback port, fed with request bodies that tritonclient itself encodes.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.http as triton
import tritonclient.utils as triton_utils
from aiohttp import web
from aiohttp.test_utils import TestClient

from predictor.config import Device, Settings
from predictor.detections import Detection
from predictor.errors import ConfigError
from predictor.http.app import REGISTRY_KEY, create_app
from predictor.http.v2_codec import (
    HEADER_LENGTH,
    RequestedOutput,
    ServingConfig,
    V2RequestError,
    encode_infer_response,
    model_config,
    parse_infer_request,
)
from predictor.runtime.model import Detector
from tests.support.server_process import ServerProcess

from .conftest import SMALL_EDGE, encode_jpeg, known_objects, scene, settings_with

ClientFactory = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]
Client = TestClient[Any, Any]
OUTPUT_NAMES = ("num_detections", "classes", "probabilities", "boxes")
KEY = "k3y-for-v2-tests-0123456789abcdef"


def jpegs() -> list[bytes]:
    """Real photos-like JPEGs of different sizes and aspect ratios."""
    return [
        encode_jpeg(known_objects().image),
        encode_jpeg(scene(31, 800, 600)),
        encode_jpeg(scene(32, 333, 500)),
    ]


@pytest.fixture(scope="module")
def server(small_model_prefix: Path) -> Iterator[ServerProcess]:
    env = {
        "MODEL_PREFIX": str(small_model_prefix),
        "MODEL_EDGE": str(SMALL_EDGE),
        "PREPROCESS_WORKERS": "2",
        # One image per forward pass: the fused oneDNN graph's float32 scores
        # differ in their last bits with the batch size, and these tests compare
        # v2 with /predict to the bit (batching itself is tested in test_server).
        "BATCH_MAX_SIZE": "1",
    }
    with ServerProcess(env) as process:
        yield process
    log = "".join(process.log)
    assert "Traceback" not in log, log


@pytest.fixture(scope="module")
def model_name(small_model_prefix: Path) -> str:
    """MODEL_NAME is unset: the checkpoint prefix's base name."""
    return small_model_prefix.name


@pytest.fixture(scope="module")
def triton_client(server: ServerProcess) -> Iterator[Any]:
    client = triton.InferenceServerClient(
        url=f"127.0.0.1:{server.port}", connection_timeout=120.0, network_timeout=120.0
    )
    yield client
    client.close()


def predict(server: ServerProcess, jpeg: bytes, threshold: float) -> list[dict[str, Any]]:
    """What the original contract answers for this image and threshold."""
    status, payload = server.request(f"/predict?threshold={threshold}", jpeg)
    assert status == 200, payload
    prediction: list[dict[str, Any]] = payload["prediction"]
    return prediction


def image_input(images: list[bytes], binary: bool) -> Any:
    """The ``image`` input as tritonclient sends it: raw bytes in binary form, base64 in JSON."""
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:
        encoded = [base64.b64encode(image) for image in images]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def text(values: npt.NDArray[Any]) -> list[str]:
    """BYTES elements as strings (binary outputs decode to bytes, JSON ones to str)."""
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def assert_same_as_predict(result: Any, index: int, prediction: list[dict[str, Any]]) -> None:
    """Image ``index`` of a v2 result holds exactly /predict's detections, then padding."""
    count = len(prediction)
    assert int(result.as_numpy("num_detections")[index]) == count
    classes = result.as_numpy("classes")[index]
    probabilities = result.as_numpy("probabilities")[index]
    boxes = result.as_numpy("boxes")[index]
    assert probabilities.dtype == np.float32 and boxes.dtype == np.int32
    assert text(classes[:count]) == [p["objectClass"] for p in prediction]
    # The same float32 scores, to the bit.
    expected = np.array([p["probability"] for p in prediction], dtype=np.float32)
    assert probabilities[:count].tobytes() == expected.tobytes()
    assert boxes[:count].tolist() == [[p["x"], p["y"], p["width"], p["height"]] for p in prediction]
    assert text(classes[count:]) == [""] * (len(classes) - count)
    assert not probabilities[count:].any() and not boxes[count:].any()


# ------------------------------------------------------------------ tritonclient


def test_health_metadata_and_repository_through_tritonclient(
    triton_client: Any, model_name: str
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(model_name)
    assert triton_client.is_model_ready(model_name, model_version="1")
    assert not triton_client.is_model_ready("no_such_model")
    server = triton_client.get_server_metadata()
    assert server["name"] == "predictor"
    assert {"binary_tensor_data", "model_repository", "model_configuration", "statistics"} <= set(
        server["extensions"]
    )
    metadata = triton_client.get_model_metadata(model_name)
    assert metadata == {
        "name": model_name,
        "versions": ["1"],
        "platform": "mxnet_gluoncv_ssd",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}],
        "outputs": [
            {"name": "num_detections", "datatype": "INT32", "shape": [-1]},
            {"name": "classes", "datatype": "BYTES", "shape": [-1, -1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, -1]},
            {"name": "boxes", "datatype": "INT32", "shape": [-1, -1, 4]},
        ],
    }
    assert triton_client.get_model_metadata(model_name, model_version="1") == metadata
    assert triton_client.get_model_repository_index() == [
        {"name": model_name, "version": "1", "state": "READY"}
    ]
    with pytest.raises(triton.InferenceServerException) as unknown:
        triton_client.get_model_metadata("no_such_model")
    assert unknown.value.status() == "404"
    assert "no_such_model" in unknown.value.message()


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_binary_infer_answers_what_predict_answers(
    server: ServerProcess, triton_client: Any, model_name: str, threshold: float
) -> None:
    """tritonclient's defaults: the image as binary data, every output as binary data."""
    found = 0
    for number, jpeg in enumerate(jpegs()):
        result = triton_client.infer(
            model_name,
            [image_input([jpeg], binary=True)],
            request_id=f"request-{number}",
            parameters={"threshold": threshold},
        )
        response = result.get_response()
        assert response["id"] == f"request-{number}"
        assert (response["model_name"], response["model_version"]) == (model_name, "1")
        assert [o["name"] for o in response["outputs"]] == list(OUTPUT_NAMES)
        assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
        prediction = predict(server, jpeg, threshold)
        assert_same_as_predict(result, 0, prediction)
        found += len(prediction)
    if threshold == 0.0:
        # Every candidate box the network keeps has a positive score: the
        # comparison above covered real detections, not only empty answers.
        assert found > 0


def test_json_infer_answers_what_predict_answers(
    server: ServerProcess, triton_client: Any, model_name: str
) -> None:
    """The pure JSON form: base64 strings in, JSON data out."""
    for jpeg in jpegs():
        result = triton_client.infer(
            model_name,
            [image_input([jpeg], binary=False)],
            outputs=[triton.InferRequestedOutput(name, binary_data=False) for name in OUTPUT_NAMES],
            parameters={"threshold": 0.0},
        )
        outputs = {o["name"]: o for o in result.get_response()["outputs"]}
        assert all("data" in o and "parameters" not in o for o in outputs.values())
        prediction = predict(server, jpeg, 0.0)
        assert_same_as_predict(result, 0, prediction)
        # In JSON the probabilities are /predict's numbers themselves.
        count = len(prediction)
        assert outputs["probabilities"]["data"][:count] == [p["probability"] for p in prediction]


def test_several_images_in_one_request_each_as_predict_answers(
    server: ServerProcess, triton_client: Any, model_name: str
) -> None:
    images = jpegs()
    result = triton_client.infer(
        model_name, [image_input(images, binary=True)], parameters={"threshold": 0.2}
    )
    counts = result.as_numpy("num_detections")
    rows = max(int(c) for c in counts)
    assert result.as_numpy("classes").shape == (len(images), rows)
    assert result.as_numpy("boxes").shape == (len(images), rows, 4)
    for index, jpeg in enumerate(images):
        assert_same_as_predict(result, index, predict(server, jpeg, 0.2))


def test_requested_outputs_are_answered_in_their_order_and_form(
    server: ServerProcess, triton_client: Any, model_name: str
) -> None:
    jpeg = jpegs()[0]
    result = triton_client.infer(
        model_name,
        [image_input([jpeg], binary=True)],
        outputs=[
            triton.InferRequestedOutput("boxes", binary_data=False),
            triton.InferRequestedOutput("classes", binary_data=True),
        ],
    )
    outputs = result.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["boxes", "classes"]
    assert "data" in outputs[0] and "binary_data_size" in outputs[1]["parameters"]
    prediction = predict(server, jpeg, 0.5)  # no threshold given: PROBABILITY_MORE
    assert text(result.as_numpy("classes")[0]) == [p["objectClass"] for p in prediction]
    assert result.as_numpy("boxes")[0].tolist() == [
        [p["x"], p["y"], p["width"], p["height"]] for p in prediction
    ]
    assert result.as_numpy("probabilities") is None


def test_triton_config_and_statistics_say_what_the_server_really_did(
    small_model_prefix: Path,
) -> None:
    """Triton's model-configuration and statistics extensions, read by tritonclient itself."""
    env = {
        "MODEL_PREFIX": str(small_model_prefix),
        "MODEL_EDGE": str(SMALL_EDGE),
        "PREPROCESS_WORKERS": "2",
        "BATCH_MAX_SIZE": "4",
        "BATCH_MAX_DELAY_MS": "7",
        "BATCH_BACKLOG_DELAY_MS": "40",
        "QUEUE_MAX": "16",
    }
    with ServerProcess(env) as process:
        client = triton.InferenceServerClient(
            url=f"127.0.0.1:{process.port}", connection_timeout=120.0, network_timeout=120.0
        )
        try:
            name = small_model_prefix.name
            config = client.get_model_config(name)
            assert config["max_batch_size"] == 16, "a request carries up to QUEUE_MAX images"
            assert config["input"] == [
                {"name": "image", "data_type": "TYPE_STRING", "format": "FORMAT_NONE", "dims": [1]}
            ]
            assert [o["name"] for o in config["output"]] == [
                "num_detections",
                "classes",
                "probabilities",
                "boxes",
            ]
            batching = config["dynamic_batching"]
            assert batching["preferred_batch_size"] == [4]
            assert batching["max_queue_delay_microseconds"] == 7000
            assert config["parameters"]["batch_backlog_delay_ms"] == {"string_value": "40"}
            assert batching["default_queue_policy"]["max_queue_size"] == 16
            assert config["instance_group"] == [{"name": name, "kind": "KIND_CPU", "count": 1}]
            assert client.get_model_config(name, model_version="1") == config
            assert "statistics" in client.get_server_metadata()["extensions"]

            empty = client.get_inference_statistics(name)["model_stats"][0]
            assert empty["inference_stats"]["success"]["count"] == 0

            jpegs = [encode_jpeg(scene(40 + i, 480, 360)) for i in range(5)]
            for jpeg in jpegs[:3]:
                client.infer(name, [image_input([jpeg], binary=True)])
            # perf_analyzer's batched shape: [N, 1].
            batched = triton.InferInput("image", [2, 1], "BYTES")
            batched.set_data_from_numpy(np.array([[jpegs[3]], [jpegs[4]]], dtype=np.object_))
            result = client.infer(name, [batched])
            assert result.as_numpy("num_detections").shape == (2,)
            with pytest.raises(triton_utils.InferenceServerException):
                client.infer(name, [image_input([b"not a jpeg"], binary=True)])

            stats = client.get_inference_statistics(name)["model_stats"][0]
            inference = stats["inference_stats"]
            assert (stats["name"], stats["version"]) == (name, "1")
            assert inference["success"]["count"] == 4, "requests answered"
            assert inference["fail"]["count"] == 1, "the request that was not a JPEG"
            assert stats["inference_count"] == 5, "images through a forward pass"
            assert 2 <= stats["execution_count"] <= 5
            for part in ("queue", "compute_input", "compute_infer", "compute_output"):
                assert inference[part]["count"] == 5, part
                assert inference[part]["ns"] > 0, part
            assert inference["success"]["ns"] >= inference["compute_input"]["ns"] // 5
            assert (
                sum(b["batch_size"] * b["compute_infer"]["count"] for b in stats["batch_stats"])
                == 5
            )
            assert stats["last_inference"] > 0
            everything = client.get_inference_statistics()["model_stats"]
            assert [m["name"] for m in everything] == [name]
        finally:
            client.close()


def test_infer_of_an_unknown_model_is_404(triton_client: Any) -> None:
    with pytest.raises(triton.InferenceServerException) as refused:
        triton_client.infer("no_such_model", [image_input([jpegs()[1]], binary=True)])
    assert refused.value.status() == "404"


# ------------------------------------------------------------------ malformed requests


def raw(
    server: ServerProcess,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    """One request over a real socket: status, headers, JSON body."""
    request = urllib.request.Request(
        server.url + path, data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def binary_request(header: dict[str, Any], data: bytes) -> tuple[bytes, dict[str, str]]:
    encoded = json.dumps(header).encode()
    return encoded + data, {HEADER_LENGTH: str(len(encoded))}


def bytes_element(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


def image_tensor(**fields: Any) -> dict[str, Any]:
    return {"name": "image", "datatype": "BYTES", "shape": [1], **fields}


JPEG_BYTES = encode_jpeg(scene(33, 320, 240))
B64 = base64.b64encode(JPEG_BYTES).decode()
GOOD_BINARY = bytes_element(JPEG_BYTES)


def json_request(header: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps(header).encode(), {"Content-Type": "application/json"}


MALFORMED: dict[str, tuple[tuple[bytes, dict[str, str]], str]] = {
    "wrong datatype": (
        json_request({"inputs": [image_tensor(datatype="FP32", data=[B64])]}),
        "datatype 'FP32'; expected 'BYTES'",
    ),
    "shape says 2, data holds 1": (
        json_request({"inputs": [image_tensor(shape=[2], data=[B64])]}),
        "'data' holds 1 elements; shape [2]",
    ),
    "shape [N, 2]": (
        json_request({"inputs": [image_tensor(shape=[1, 2], data=[[B64, B64]])]}),
        "expected [N] or [N, 1]",
    ),
    "shape says 1, binary data holds 2": (
        binary_request(
            {"inputs": [image_tensor(parameters={"binary_data_size": 2 * len(GOOD_BINARY)})]},
            GOOD_BINARY * 2,
        ),
        "more than the 1 elements",
    ),
    "more images than QUEUE_MAX": (
        json_request({"inputs": [image_tensor(shape=[65], data=[B64] * 65)]}),
        "at most 64 images per request",
    ),
    "no inputs": (json_request({"id": "x"}), "missing input 'image'"),
    "empty inputs": (json_request({"inputs": []}), "missing input 'image'"),
    "input under another name": (
        json_request({"inputs": [image_tensor(name="IMAGE", data=[B64])]}),
        "unknown input 'IMAGE'",
    ),
    "input without data": (json_request({"inputs": [image_tensor()]}), "has no data"),
    "binary_data_size larger than the body": (
        binary_request(
            {"inputs": [image_tensor(parameters={"binary_data_size": len(GOOD_BINARY) + 10})]},
            GOOD_BINARY,
        ),
        f"binary_data_size {len(GOOD_BINARY) + 10} is more than the {len(GOOD_BINARY)} bytes",
    ),
    "binary_data_size smaller than the body": (
        binary_request(
            {"inputs": [image_tensor(parameters={"binary_data_size": len(GOOD_BINARY) - 10})]},
            GOOD_BINARY,
        ),
        "declares",
    ),
    "bytes left over after the inputs": (
        binary_request(
            {"inputs": [image_tensor(parameters={"binary_data_size": len(GOOD_BINARY)})]},
            GOOD_BINARY + b"extra",
        ),
        "5 bytes after the JSON header are not claimed",
    ),
    "binary_data_size without the header length": (
        json_request({"inputs": [image_tensor(parameters={"binary_data_size": 10})]}),
        f"needs the {HEADER_LENGTH} header",
    ),
    "header length beyond the body": (
        (b'{"inputs": []}', {HEADER_LENGTH: "999"}),
        f"{HEADER_LENGTH}: '999'",
    ),
    "header length not a number": ((b'{"inputs": []}', {HEADER_LENGTH: "ten"}), HEADER_LENGTH),
    "header length cutting the JSON short": (
        (b'{"inputs": [' + GOOD_BINARY, {HEADER_LENGTH: "12"}),
        "not valid JSON",
    ),
    "binary data without a header length": (
        (json.dumps({"inputs": []}).encode() + GOOD_BINARY, {}),
        "not UTF-8",
    ),
    "not JSON": ((b"inputs=image", {"Content-Type": "application/json"}), "not valid JSON"),
    "JSON that is not an object": (json_request([1, 2]), "must be a JSON object"),
    "NaN in the JSON": (
        (b'{"inputs": [], "parameters": {"threshold": NaN}}', {}),
        "not valid JSON",
    ),
    "threshold above 1": (
        json_request({"inputs": [image_tensor(data=[B64])], "parameters": {"threshold": 1.5}}),
        "threshold: expected a number between 0 and 1",
    ),
    "threshold not a number": (
        json_request({"inputs": [image_tensor(data=[B64])], "parameters": {"threshold": "a"}}),
        "threshold: expected a number between 0 and 1",
    ),
    "threshold a boolean": (
        json_request({"inputs": [image_tensor(data=[B64])], "parameters": {"threshold": True}}),
        "threshold",
    ),
    "image not base64": (
        json_request({"inputs": [image_tensor(data=["not base64!"])]}),
        "element 1 is not base64",
    ),
    "another content type": (
        json_request({"inputs": [image_tensor(data=[B64], parameters={"content_type": "str"})]}),
        "content_type 'str'",
    ),
    "unknown output": (
        json_request({"inputs": [image_tensor(data=[B64])], "outputs": [{"name": "masks"}]}),
        "unknown output 'masks'",
    ),
    "id not a string": (json_request({"id": 7, "inputs": []}), "'id' must be a string"),
    "empty body": ((b"", {}), "the body is empty"),
    "an image that is not a JPEG": (
        json_request({"inputs": [image_tensor(data=[base64.b64encode(b"GIF89a...").decode()])]}),
        "JPEG",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_infer_requests_are_400_json(
    server: ServerProcess, model_name: str, case: str
) -> None:
    (body, headers), expected = MALFORMED[case]
    status, _, payload = raw(server, f"/v2/models/{model_name}/infer", body, headers)
    assert status == 400, payload
    assert set(payload) == {"error"}
    assert expected in payload["error"], payload["error"]


def test_unknown_models_versions_and_methods_are_4xx_json(
    server: ServerProcess, model_name: str
) -> None:
    body, headers = json_request({"inputs": [image_tensor(data=[B64])]})
    cases = [
        ("/v2/models/other/infer", body, 404, "unknown model 'other'"),
        (f"/v2/models/{model_name}/versions/2/infer", body, 404, "no version '2'"),
        ("/v2/models/other", None, 404, "unknown model"),
        ("/v2/models/other/ready", None, 404, "unknown model"),
        ("/v2/models", None, 404, "not found"),
        (f"/v2/models/{model_name}/infer", None, 405, "method GET not allowed"),
        (f"/v2/repository/models/{model_name}/load", b"", 400, "cannot load models"),
    ]
    for path, data, expected_status, expected in cases:
        status, _, payload = raw(server, path, data, headers if data else None)
        assert status == expected_status, (path, payload)
        assert expected in payload["error"], (path, payload)


def test_the_server_stays_healthy_after_malformed_requests(
    server: ServerProcess, triton_client: Any, model_name: str
) -> None:
    for (body, headers), _ in MALFORMED.values():
        raw(server, f"/v2/models/{model_name}/infer", body, headers)
    assert raw(server, "/v2/health/ready")[0] == 200
    assert raw(server, "/v2/health/live")[2] == {"live": True}
    result = triton_client.infer(model_name, [image_input([JPEG_BYTES], binary=True)])
    assert_same_as_predict(result, 0, predict(server, JPEG_BYTES, 0.5))
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as response:
        metrics = response.read().decode()
    route = 'route="/v2/models/{name}/infer"'
    assert f'predictor_requests_total{{{route},status="400"}}' in metrics
    assert f'predictor_requests_total{{{route},status="200"}}' in metrics


def test_json_answers_carry_no_header_length_and_binary_ones_do(
    server: ServerProcess, model_name: str
) -> None:
    path = f"/v2/models/{model_name}/infer"
    body, headers = json_request({"id": "plain", "inputs": [image_tensor(data=[B64])]})
    status, answer_headers, payload = raw(server, path, body, headers)
    assert status == 200 and payload["id"] == "plain"
    assert answer_headers["Content-Type"].startswith("application/json")
    assert HEADER_LENGTH not in answer_headers
    assert "Server-Timing" in answer_headers and "infer;dur=" in answer_headers["Server-Timing"]
    body, headers = binary_request(
        {
            "inputs": [image_tensor(parameters={"binary_data_size": len(GOOD_BINARY)})],
            "outputs": [{"name": "num_detections", "parameters": {"binary_data": True}}],
        },
        GOOD_BINARY,
    )
    request = urllib.request.Request(server.url + path, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = response.read()
        length = int(response.headers[HEADER_LENGTH])
    header = json.loads(answer[:length])
    (output,) = header["outputs"]
    assert output["parameters"]["binary_data_size"] == len(answer) - length == 4
    (count,) = struct.unpack("<i", answer[length:])
    assert count == len(predict(server, JPEG_BYTES, 0.5))


# ------------------------------------------------------------------ in-process: settings


async def client_with(
    aiohttp_client: ClientFactory, base: Settings, detectors: list[Detector], **changes: object
) -> Client:
    return await aiohttp_client(create_app(settings_with(base, **changes), detectors))


def triton_body(images: list[bytes], **options: Any) -> tuple[bytes, dict[str, str]]:
    """A request body exactly as tritonclient encodes it."""
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [image_input(images, binary=True)], **options
    )
    return body, {HEADER_LENGTH: str(json_size)}


def triton_result(body: bytes, headers: Any) -> Any:
    length = headers.get(HEADER_LENGTH)
    return triton.InferenceServerClient.parse_response_body(
        body, header_length=int(length) if length is not None else None
    )


async def test_api_key_guards_infer_only(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, api_key=KEY)
    name = small_settings.served_model_name
    body, headers = triton_body([JPEG_BYTES])
    async with client.post(f"/v2/models/{name}/infer", data=body, headers=headers) as response:
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert "API key" in (await response.json())["error"]
    keyed = {**headers, "Authorization": f"Bearer {KEY}"}
    async with client.post(f"/v2/models/{name}/infer", data=body, headers=keyed) as response:
        assert response.status == 200
        result = triton_result(await response.read(), response.headers)
        assert result.as_numpy("num_detections").shape == (1,)
    for path in ("/v2", "/v2/health/live", "/v2/health/ready", f"/v2/models/{name}/ready"):
        async with client.get(path) as response:
            assert response.status == 200, path
    async with client.post("/v2/repository/index") as response:
        assert response.status == 200


async def test_model_name_setting_names_the_routes(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, model_name="digits")
    async with client.get("/v2/models/digits") as response:
        assert (await response.json())["name"] == "digits"
    async with client.get(f"/v2/models/{small_settings.model_prefix.name}/ready") as response:
        assert response.status == 404
    async with client.post("/v2/repository/index", json={"ready": True}) as response:
        assert await response.json() == [{"name": "digits", "version": "1", "state": "READY"}]
    async with client.post("/v2/repository/index", data=b"[") as response:
        assert response.status == 400


async def test_declared_body_over_the_limit_is_413_before_reading(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, max_body_bytes=4096)
    name = small_settings.served_model_name
    body, headers = triton_body([encode_jpeg(scene(34, 640, 480))])
    assert len(body) > 4096
    async with client.post(f"/v2/models/{name}/infer", data=body, headers=headers) as response:
        assert response.status == 413
        assert "larger than 4096 bytes" in (await response.json())["error"]


async def test_full_queue_is_503_for_the_whole_request(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors, queue_max=3)
    batcher = client.app[REGISTRY_KEY].default.batcher
    name = small_settings.served_model_name
    held = [batcher.admit(), batcher.admit()]  # two places taken by other requests
    body, headers = triton_body([JPEG_BYTES, JPEG_BYTES])
    async with client.post(f"/v2/models/{name}/infer", data=body, headers=headers) as response:
        assert response.status == 503
        assert int(response.headers["Retry-After"]) >= 1
        assert "queue is full" in (await response.json())["error"]
    # All or none: the image that would have fitted gave its place back.
    assert batcher.queue_depth == 2
    for admission in held:
        admission.release()
    async with client.post(f"/v2/models/{name}/infer", data=body, headers=headers) as response:
        assert response.status == 200
        result = triton_result(await response.read(), response.headers)
        assert result.as_numpy("num_detections").shape == (2,)
    assert batcher.queue_depth == 0


async def test_request_past_its_deadline_is_504(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    # 1 ms is less than decoding alone takes: no image can make it.
    client = await client_with(aiohttp_client, small_settings, detectors, request_timeout_ms=1.0)
    name = small_settings.served_model_name
    for images in ([JPEG_BYTES], [JPEG_BYTES, JPEG_BYTES]):
        body, headers = triton_body(images)
        async with client.post(f"/v2/models/{name}/infer", data=body, headers=headers) as answer:
            assert answer.status == 504
            assert "timed out after REQUEST_TIMEOUT_MS=1" in (await answer.json())["error"]


async def test_a_bad_image_among_several_names_it(
    aiohttp_client: ClientFactory, small_settings: Settings, detectors: list[Detector]
) -> None:
    client = await client_with(aiohttp_client, small_settings, detectors)
    name = small_settings.served_model_name
    body, headers = triton_body([JPEG_BYTES, b"\xff\xd8 not really a JPEG"])
    async with client.post(f"/v2/models/{name}/infer", data=body, headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"].startswith("image 2 of 2: ")
    assert client.app[REGISTRY_KEY].default.batcher.queue_depth == 0


# ------------------------------------------------------------------ the codec alone


def test_parse_reads_what_tritonclient_writes() -> None:
    images = [JPEG_BYTES, b"second"]
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [image_input(images, binary=True)],
        outputs=[triton.InferRequestedOutput("boxes", binary_data=False)],
        request_id="r1",
        parameters={"threshold": 0.25},
    )
    parsed = parse_infer_request(body, str(json_size), max_images=8)
    assert parsed.images == tuple(images)
    assert (parsed.request_id, parsed.threshold) == ("r1", 0.25)
    assert parsed.outputs == (RequestedOutput("boxes", binary=False),)
    body, json_size = triton.InferenceServerClient.generate_request_body(
        [image_input(images, binary=False)]
    )
    assert json_size is None
    parsed = parse_infer_request(body, None, max_images=8)
    assert parsed.images == tuple(images)
    assert all(o.binary for o in parsed.outputs), "no outputs named: binary_data_output"
    with pytest.raises(V2RequestError, match="at most 1 images"):
        parse_infer_request(body, None, max_images=1)


def test_encode_is_what_tritonclient_reads() -> None:
    detections = [
        [Detection("7", 0.9959417, 1, 2, 30, 40), Detection("circle", 0.5, 5, 6, 7, 8)],
        [],
        [Detection("Ünïcode", 0.25, 0, 0, 1, 1)],
    ]
    for binary in (True, False):
        outputs = [RequestedOutput(name, binary) for name in OUTPUT_NAMES]
        body, length = encode_infer_response("m", "id-9", detections, outputs)
        assert (length is None) is not binary
        result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
        assert result.get_response()["id"] == "id-9"
        assert result.as_numpy("num_detections").tolist() == [2, 0, 1]
        assert [text(row) for row in result.as_numpy("classes")] == [
            ["7", "circle"],
            ["", ""],
            ["Ünïcode", ""],
        ]
        probabilities = result.as_numpy("probabilities").astype(np.float32)
        assert (
            probabilities.tolist()
            == np.array([[0.9959417, 0.5], [0, 0], [0.25, 0]], dtype=np.float32).tolist()
        )
        assert result.as_numpy("boxes").tolist() == [
            [[1, 2, 30, 40], [5, 6, 7, 8]],
            [[0, 0, 0, 0], [0, 0, 0, 0]],
            [[0, 0, 1, 1], [0, 0, 0, 0]],
        ]
    body, length = encode_infer_response("m", None, [[]], [RequestedOutput("classes", True)])
    result = triton.InferenceServerClient.parse_response_body(body, header_length=length)
    assert "id" not in result.get_response()
    assert result.as_numpy("classes").shape == (1, 0)


# ------------------------------------------------------------------ MODEL_NAME


def test_model_name_defaults_to_the_checkpoint_prefix_base_name() -> None:
    assert Settings.from_env(environ={}).served_model_name == "coco"
    named = Settings.from_env(environ={"MODEL_PREFIX": "/srv/models/resnet50_ssd_model"})
    assert named.served_model_name == "resnet50_ssd_model"
    chosen = Settings.from_env(environ={"MODEL_NAME": "detector-v1.2", "MODEL_PREFIX": "/m/x"})
    assert chosen.served_model_name == "detector-v1.2"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"MODEL_NAME": "two words"}, "MODEL_NAME='two words'"),
        ({"MODEL_NAME": "a/b"}, "MODEL_NAME='a/b'"),
        ({"MODEL_NAME": "x" * 129}, "MODEL_NAME="),
        ({"MODEL_PREFIX": "/m/my model"}, "MODEL_NAME is not set and MODEL_PREFIX's base name"),
        ({"REST_ENTRY_POINT": "/v2/models/x/infer"}, "REST_ENTRY_POINT="),
        ({"REST_ENTRY_POINT": "/v2"}, "REST_ENTRY_POINT="),
    ],
)
def test_bad_model_names_and_v2_paths_stop_start_up(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as error:
        Settings.from_env(environ=environ)
    assert str(error.value).startswith(named), str(error.value)
    assert Settings.from_env(environ={**environ, "MODEL_NAME": "ok", "REST_ENTRY_POINT": "/p"})


@pytest.mark.parametrize(
    ("devices", "instances"),
    [
        ((Device("cpu", 0),), [{"kind": "KIND_CPU", "count": 1}]),
        ((Device("cpu", 0), Device("cpu", 1)), [{"kind": "KIND_CPU", "count": 2}]),
        # One replica per GPU, as MODEL_CONTEXT_GPU=0,2 loads them (no GPU needed to say so).
        ((Device("gpu", 0), Device("gpu", 2)), [{"kind": "KIND_GPU", "count": 1, "gpus": [0, 2]}]),
    ],
)
def test_model_config_states_the_replicas_devices(
    devices: tuple[Device, ...], instances: list[dict[str, object]]
) -> None:
    serving = ServingConfig(
        max_images=4,
        batch_max_size=8,
        batch_max_delay_ms=5.0,
        queue_max=64,
        request_timeout_ms=10000.0,
        devices=devices,
        parameters={},
    )
    config = model_config("digits", serving)
    assert config["instance_group"] == [{"name": "digits", **one} for one in instances]
