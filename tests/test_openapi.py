"""``/openapi.json`` tells the truth, and the server survives being fuzzed from it.

One real server (`tests.support.server_process`) with ``API_KEY`` set (so the
bearer scheme and the 401s are documented), two models (so ``?model=`` and the
per-model v2 paths have two values), a 1 MiB body limit and a 1 s body
deadline (so that 413 and 408 are cheap to provoke).

- Every documented (route, method, status) is produced against the running
  server by a request made for it, and its body matches the documented schema;
  the few that only load or a failing device produce are named with the test
  that does (`COVERED_ELSEWHERE`), and the set of documented triples must be
  exactly the recipes plus those.
- schemathesis generates requests from the description (valid and invalid,
  a bounded number per operation): no 5xx, every answer's status, content
  type, headers and body as documented, and the server is ready afterwards.
"""

from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from jsonschema import Draft202012Validator
from schemathesis.checks import CheckFunction
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.support.server_process import ServerProcess
from tests.support.v2 import v2_binary_request

from .conftest import encode_jpeg, scene

API_KEY = "openapi-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY_BYTES = 1024 * 1024
BODY_TIMEOUT_S = 1.0
MODELS = ("digits", "other")
EXAMPLES_PER_OPERATION = 40
# Every other check of schemathesis runs. "A schema-valid request is accepted
# (2xx)" cannot hold here: a schema cannot say "a decodable JPEG", so generated
# image bodies are random bytes, rightly answered 400 (and loading models is
# refused by design, with 400 as Triton does).
EXCLUDED_CHECKS: list[CheckFunction] = [positive_data_acceptance]

# Statuses a request alone cannot provoke on a healthy server, and the test that does.
COVERED_ELSEWHERE = {
    500: "test_robustness.py::test_a_failing_forward_pass_* (a forward pass that raises)",
    503: "test_robustness.py::test_storm_* (a full queue); readiness: test_robustness.py",
    504: "test_robustness.py::test_storm_* (REQUEST_TIMEOUT_MS shorter than a batch)",
}


@pytest.fixture(scope="module")
def server(small_model_prefix: Path) -> Iterator[ServerProcess]:
    env = {
        "MODELS": ",".join(f"{name}={small_model_prefix}" for name in MODELS),
        "PREPROCESS_WORKERS": "2",
        "API_KEY": API_KEY,
        "MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "QUEUE_MAX": "16",
    }
    with ServerProcess(env) as process:
        yield process
    assert process.process.returncode == 0, "".join(process.log)
    assert "Traceback" not in "".join(process.log)


@pytest.fixture(scope="module")
def description(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(server.url + "/openapi.json", timeout=30) as response:
        assert response.status == 200
        document: dict[str, Any] = json.loads(response.read())
    return document


# ------------------------------------------------------------------ requests for each status


class Answer:
    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body


def call(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    request = urllib.request.Request(
        server.url + path, data=body, headers=headers or {}, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return Answer(response.status, response.headers.get_content_type(), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.headers.get_content_type(), error.read())


def raw(server: ServerProcess, request: bytes, wait_s: float = 0.0) -> Answer:
    """A hand-written request (a body that never completes, an odd Expect header)."""
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    content_type = next(
        (
            line.split(":", 1)[1].split(";")[0].strip()
            for line in lines[1:]
            if line.lower().startswith("content-type:")
        ),
        "",
    )
    return Answer(status, content_type, body)


def jpeg() -> bytes:
    return encode_jpeg(scene(21))


def v2_json(images: int = 1) -> bytes:
    data = [base64.b64encode(jpeg()).decode()] * images
    return json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [images], "data": data}]}
    ).encode()


def v2_binary() -> tuple[bytes, dict[str, str]]:
    return v2_binary_request(jpeg())


def stalled_body(path: str) -> bytes:
    """Headers promising 1000 bytes, then 10 of them: the body deadline passes."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789"
    ).encode()


def odd_expect(path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
        "Content-Type: image/jpeg\r\nExpect: 200-ok\r\nContent-Length: 4\r\n\r\nabcd"
    ).encode()


class Recipe(Protocol):
    """A request that should get one documented status."""

    def __call__(self, *, server: ServerProcess) -> Answer: ...


def call_as(
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    authorized: bool = True,
    server: ServerProcess | None = None,
) -> Answer:
    """`call` with the server last, for `functools.partial`."""
    assert server is not None
    return call(server, method, path, body, {**headers, **(AUTH if authorized else {})})


def raw_as(request: bytes, server: ServerProcess) -> Answer:
    return raw(server, request)


IMAGE = {"Content-Type": "image/jpeg", **AUTH}
JSON_AUTH = {"Content-Type": "application/json", **AUTH}
TOO_BIG = b"\xff\xd8" + b"\x00" * MAX_BODY_BYTES


def recipes() -> dict[tuple[str, str, int], Recipe]:
    """For each documented (path, method, status), a request that gets it."""
    table: dict[tuple[str, str, int], Recipe] = {}
    infer_paths = {
        "/v2/models/{name}/infer": "/v2/models/other/infer",
        "/v2/models/{name}/versions/{version}/infer": "/v2/models/digits/versions/1/infer",
    }
    for template, path in (("/predict", "/predict"), *infer_paths.items()):
        good: Recipe
        if template == "/predict":

            def good(server: ServerProcess) -> Answer:
                return call(server, "POST", "/predict?model=other&threshold=0.2", jpeg(), IMAGE)

            bad_path, bad_body, bad_headers = "/predict", b"hello", {"Content-Type": "text/plain"}
            missing = "/predict?model=nope"
        else:

            def good(server: ServerProcess, path: str = path) -> Answer:
                body, headers = v2_binary()
                return call(server, "POST", path, body, {**headers, **AUTH})

            bad_path, bad_body, bad_headers = path, b"{", {"Content-Type": "application/json"}
            missing = path.replace("digits", "nope").replace("other", "nope")
        table[(template, "post", 200)] = good
        table[(template, "post", 400)] = partial(call_as, "POST", bad_path, bad_body, bad_headers)
        table[(template, "post", 401)] = partial(
            call_as, "POST", path, jpeg(), {"Content-Type": "image/jpeg"}, False
        )
        table[(template, "post", 404)] = partial(call_as, "POST", missing, jpeg(), IMAGE)
        table[(template, "post", 408)] = partial(raw_as, stalled_body(path))
        table[(template, "post", 413)] = partial(call_as, "POST", path, TOO_BIG, IMAGE)
        table[(template, "post", 417)] = partial(raw_as, odd_expect(path))
    get = {
        "/health": "/health",
        "/ready": "/ready",
        "/metrics": "/metrics",
        "/info": "/info",
        "/openapi.json": "/openapi.json",
        "/": "/",
        "/static/{name}": "/static/app.js",
        "/v2": "/v2",
        "/v2/health/live": "/v2/health/live",
        "/v2/health/ready": "/v2/health/ready",
        "/v2/models/{name}": "/v2/models/other",
        "/v2/models/{name}/versions/{version}": "/v2/models/digits/versions/1",
        "/v2/models/{name}/ready": "/v2/models/digits/ready",
        "/v2/models/{name}/versions/{version}/ready": "/v2/models/other/versions/1/ready",
        "/v2/models/{name}/config": "/v2/models/digits/config",
        "/v2/models/{name}/versions/{version}/config": "/v2/models/other/versions/1/config",
        "/v2/models/{name}/stats": "/v2/models/other/stats",
        "/v2/models/{name}/versions/{version}/stats": "/v2/models/digits/versions/1/stats",
        "/v2/models/stats": "/v2/models/stats",
    }
    for template, path in get.items():
        table[(template, "get", 200)] = partial(call_as, "GET", path, None, {})
        if template.startswith("/v2/models/{name}"):
            missing = path.replace("digits", "nope").replace("other", "nope")
            table[(template, "get", 404)] = partial(call_as, "GET", missing, None, {})
    table[("/static/{name}", "get", 404)] = partial(call_as, "GET", "/static/secret.txt", None, {})
    index = "/v2/repository/index"
    table[(index, "post", 200)] = partial(call_as, "POST", index, b'{"ready": true}', JSON_AUTH)
    table[(index, "post", 400)] = partial(call_as, "POST", index, b'{"ready": "yes"}', JSON_AUTH)
    table[(index, "post", 408)] = partial(raw_as, stalled_body(index))
    table[(index, "post", 413)] = partial(call_as, "POST", index, TOO_BIG, JSON_AUTH)
    control = "/v2/repository/models/{name}/{action}"
    table[(control, "post", 400)] = partial(
        call_as, "POST", "/v2/repository/models/digits/load", b"", AUTH
    )
    table[(control, "post", 404)] = partial(
        call_as, "POST", "/v2/repository/models/a/b/load", b"", AUTH
    )
    return table


def documented(description: dict[str, Any]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every (path, method, status) of the description, with its response object."""
    found = {}
    for path, operations in description["paths"].items():
        for method, operation in operations.items():
            for status, response in operation["responses"].items():
                found[(path, method, int(status))] = response
    return found


def test_every_route_the_server_answers_is_documented(
    server: ServerProcess, description: dict[str, Any]
) -> None:
    assert description["openapi"] == "3.1.0"
    paths = set(description["paths"])
    # The server's own routes, in OpenAPI's path syntax.
    served = {
        "/predict", "/health", "/ready", "/metrics", "/info", "/openapi.json", "/",
        "/static/{name}", "/v2", "/v2/health/live", "/v2/health/ready",
        "/v2/models/{name}", "/v2/models/{name}/ready", "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}", "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/versions/{version}/infer", "/v2/repository/index",
        "/v2/repository/models/{name}/{action}",
        "/v2/models/{name}/config", "/v2/models/{name}/versions/{version}/config",
        "/v2/models/{name}/stats", "/v2/models/{name}/versions/{version}/stats",
        "/v2/models/stats",
    }  # fmt: skip
    assert paths == served
    model = next(p for p in description["paths"]["/predict"]["post"]["parameters"])
    assert {p["name"] for p in description["paths"]["/predict"]["post"]["parameters"]} == {
        "threshold",
        "render",
        "model",
    }, model
    name = description["paths"]["/v2/models/{name}/infer"]["post"]["parameters"][0]
    assert name["schema"]["enum"] == list(MODELS)


def test_every_documented_route_and_status_is_what_the_server_answers(
    server: ServerProcess, description: dict[str, Any]
) -> None:
    docs = documented(description)
    table = recipes()
    elsewhere = {key for key in docs if key[2] in COVERED_ELSEWHERE}
    assert set(docs) == set(table) | elsewhere, (
        "undocumented recipes: "
        f"{sorted(set(table) - set(docs))}; documented without a recipe: "
        f"{sorted(set(docs) - set(table) - elsewhere)}"
    )
    components = description["components"]
    for key, recipe in sorted(table.items()):
        answer = recipe(server=server)
        assert answer.status == key[2], (key, answer.status, answer.body[:300])
        content = docs[key].get("content", {})
        assert answer.content_type in content, (key, answer.content_type, list(content))
        schema = content[answer.content_type]["schema"]
        if answer.content_type == "application/json":
            Draft202012Validator({**schema, "components": components}).validate(
                json.loads(answer.body)
            )


# ------------------------------------------------------------------ fuzzing


def fuzz_operation(operation: Any, mode: schemathesis.GenerationMode) -> None:
    """Up to `EXAMPLES_PER_OPERATION` generated requests to one operation, each validated.

    schemathesis's own pytest plugin (``from_fixture``) does not run under
    pytest 9 (it sets a node attribute pytest 9 removed), so its strategies
    drive a plain hypothesis test here, one per operation and mode.
    """

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate],
    )
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=AUTH, timeout=60, excluded_checks=EXCLUDED_CHECKS)

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid: the operation has no parameters and no body.
        assert mode == schemathesis.GenerationMode.NEGATIVE, operation.path


def test_fuzzing_from_the_description_finds_no_5xx_and_no_undocumented_answer(
    server: ServerProcess,
) -> None:
    """Valid and invalid requests for every operation: no 5xx, every answer as documented."""
    api = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures = []
    operations = 0
    for result in api.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            try:
                fuzz_operation(operation, mode)
            except BaseException as exc:  # schemathesis's FailureGroup is a BaseExceptionGroup
                if isinstance(exc, KeyboardInterrupt):
                    raise
                failures.append(
                    f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}"
                )
    assert operations >= 18  # every route but /openapi.json itself, which schemathesis skips
    assert not failures, "\n\n".join(failures)


def test_the_server_is_ready_and_correct_after_the_fuzzing(server: ServerProcess) -> None:
    started = time.monotonic()
    assert call(server, "GET", "/ready").status == 200
    answer = call(server, "POST", "/predict", jpeg(), IMAGE)
    assert answer.status == 200 and "prediction" in json.loads(answer.body)
    assert time.monotonic() - started < 30
    assert not [line for line in server.log if " ERROR " in line or "Traceback" in line]
