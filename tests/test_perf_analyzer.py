"""NVIDIA's perf_analyzer, unchanged, against a real server's v2 endpoint.

perf_analyzer reads the model's configuration and metadata (Triton's
model-configuration extension), sends the image tensor as ``[1, 1]`` BYTES
(its ``b64`` input data: a 4-byte little-endian length, then the JPEG), and
checks the server's statistics extension against what it sent. It is
installed by `make perf-analyzer` (the binary inside the tritonclient wheel);
where that cannot be had the test skips loudly, except in CI, where it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from bench.perf_analyzer_load import (
    PERF_ANALYZER,
    available,
    cuda_runtime_dir,
    run_level,
    write_input_data,
)
from tests.support.server_process import ServerProcess

from .conftest import REPO_ROOT, encode_jpeg, known_objects


@pytest.fixture(scope="module")
def perf_analyzer() -> Path:
    if not available():
        made = subprocess.run(
            ["make", "-s", "-C", str(REPO_ROOT), "perf-analyzer"],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if made.returncode != 0:
            message = f"perf_analyzer unavailable: {(made.stderr or made.stdout)[-800:]}"
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message)
            pytest.skip(f"*** {message} ***")
    return PERF_ANALYZER


def test_perf_analyzer_runs_against_the_v2_endpoint(
    perf_analyzer: Path, small_model_prefix: Path, tmp_path: Path
) -> None:
    data = write_input_data([encode_jpeg(known_objects().image)], tmp_path / "input.json")
    env = {"MODEL_PREFIX": str(small_model_prefix), "MODEL_NAME": "digits"}
    with ServerProcess({**env, "PREPROCESS_WORKERS": "2"}) as server:
        result = subprocess.run(
            [
                str(perf_analyzer),
                "-m",
                "digits",
                "-u",
                f"127.0.0.1:{server.port}",
                "-i",
                "http",
                "--input-data",
                str(data),
                "--concurrency-range",
                "2",
                # A bounded run: windows of 20 requests, at most 3 of them, stable or not
                # (speed is measured by the benchmarks, not here).
                "--measurement-mode",
                "count_windows",
                "--measurement-request-count",
                "20",
                "--stability-percentage",
                "999",
                "--max-trials",
                "3",
            ],
            env={**os.environ, "LD_LIBRARY_PATH": str(cuda_runtime_dir())},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        status, stats = server.request("/v2/models/digits/stats")
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-3000:]
    # perf_analyzer's own reading of the statistics extension: every request it sent.
    sent, served = (
        int(found.group(1)) if (found := re.search(pattern, report)) else -1
        for pattern in (r"Client:\s+Request count: (\d+)", r"Successful request count: (\d+)")
    )
    # The server's count is the difference of two /stats reads around the window, so
    # a request in flight at either edge may be counted too: at most one per client.
    assert sent >= 20 and sent <= served <= sent + 2, report[-3000:]
    assert "compute infer" in report, "the server-side breakdown comes from /stats"
    assert status == 200
    success = stats["model_stats"][0]["inference_stats"]["success"]["count"]
    assert success >= sent


def test_perf_analyzer_as_the_benchmarks_load_generator(
    perf_analyzer: Path, small_model_prefix: Path, tmp_path: Path
) -> None:
    """`make bench-compare`'s second load generator: two JPEGs round-robin, its CSV parsed."""
    bodies = [encode_jpeg(known_objects().image), encode_jpeg(known_objects().image[:, ::-1])]
    data = write_input_data(bodies, tmp_path / "input.json")
    env = {"MODEL_PREFIX": str(small_model_prefix), "MODEL_NAME": "digits"}
    with ServerProcess(env) as server:
        assert server.port is not None
        result = run_level(server.port, "digits", data, 2, 30, timeout_s=300)
        status, stats = server.request("/v2/models/digits/stats")
    assert status == 200
    assert result.concurrency == 2 and result.requests == 30
    assert result.throughput_rps > 0 and 0 < result.p50_ms <= result.p99_ms
    # Its own CPU (a child process's, counted once it is waited for): some, never all of it.
    assert 0 < result.cpu_share < 1
    assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= result.requests
