"""NVIDIA's perf_analyzer as a second load generator, against predictor's v2 endpoint.

perf_analyzer is Triton's own C++ load generator: it takes less CPU from a
2-core machine than `bench.loadgen`'s Python clients, and it is what a Triton
user already trusts. It speaks the Open Inference Protocol only, so it can
drive predictor (``/v2/models/NAME/infer``) but none of the peers. Each JPEG
goes as a ``[1, 1]`` BYTES tensor (its ``b64`` input data: a 4-byte
little-endian length, then the JPEG), round-robin over the photos.

Installed by `make perf-analyzer` (the binary inside the tritonclient wheel,
tools/perf_analyzer/requirements.txt). Traffic goes only to the loopback port
given; every level is bounded by its window size and trial count.
"""

from __future__ import annotations

import base64
import csv
import json
import os
import resource
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from bench.loadgen import machine_share

ROOT = Path(__file__).resolve().parent.parent
PERF_DIR = ROOT / "build" / "perf-analyzer"
PERF_ANALYZER = PERF_DIR / "bin" / "perf_analyzer"
# Windows per level: perf_analyzer reports the average of its last three windows.
_TRIALS = 3


class PerfAnalyzerError(RuntimeError):
    """perf_analyzer is missing, failed, or wrote no result."""


def cuda_runtime_dir() -> Path:
    """The folder of ``libcudart.so.12`` from the ``nvidia-cuda-runtime-cu12`` wheel.

    perf_analyzer links it although no GPU is used. Raises PerfAnalyzerError if absent.
    """
    found = sorted(PERF_DIR.glob("lib/python3*/site-packages/nvidia/cuda_runtime/lib"))
    if not found:
        raise PerfAnalyzerError(f"no CUDA runtime wheel under {PERF_DIR}: run `make perf-analyzer`")
    return found[0]


def available() -> bool:
    """Whether `make perf-analyzer` has installed the binary and its CUDA runtime."""
    try:
        cuda_runtime_dir()
    except PerfAnalyzerError:
        return False
    return PERF_ANALYZER.is_file() and (PERF_DIR / ".installed").is_file()


def write_input_data(bodies: Sequence[bytes], path: Path, input_name: str = "image") -> Path:
    """perf_analyzer's ``--input-data`` file: one request per JPEG, sent round-robin."""
    entries = [
        {
            input_name: {
                "b64": base64.b64encode(struct.pack("<I", len(body)) + body).decode(),
                "shape": [1],
            }
        }
        for body in bodies
    ]
    path.write_text(json.dumps({"data": entries}), encoding="utf-8")
    return path


@dataclass(frozen=True)
class PerfAnalyzerResult:
    """One concurrency level as perf_analyzer measured it (client side)."""

    concurrency: int
    throughput_rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    # perf_analyzer's own CPU time over its run, as a share of every core's (see
    # `bench.loadgen.machine_share`); 0 when not measured.
    cpu_share: float = 0.0


def run_level(
    port: int,
    model: str,
    input_data: Path,
    concurrency: int,
    requests: int,
    timeout_s: float,
) -> PerfAnalyzerResult:
    """``requests`` requests (three windows) from ``concurrency`` clients on 127.0.0.1:port.

    Raises PerfAnalyzerError with perf_analyzer's own message if it fails.
    """
    window = max(concurrency * 2, requests // _TRIALS)
    report = input_data.with_name(f"perf_analyzer_c{concurrency}.csv")
    report.unlink(missing_ok=True)
    command = [
        str(PERF_ANALYZER),
        "-m",
        model,
        "-u",
        f"127.0.0.1:{port}",
        "-i",
        "http",
        "--input-data",
        str(input_data),
        "--concurrency-range",
        f"{concurrency}:{concurrency}",
        "--measurement-mode",
        "count_windows",
        "--measurement-request-count",
        str(window),
        # Bounded: the first three windows are taken whatever their spread (the
        # benchmark's rounds, not perf_analyzer's stability search, give repeatability).
        "--stability-percentage",
        "999",
        "--max-trials",
        str(_TRIALS),
        "-f",
        str(report),
    ]
    environment = {**os.environ, "LD_LIBRARY_PATH": str(cuda_runtime_dir())}
    # Children's CPU is counted once a child is waited for, which run() does.
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    try:
        done = subprocess.run(
            command, env=environment, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise PerfAnalyzerError(f"perf_analyzer took over {timeout_s:.0f} s") from exc
    wall_s, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0 or not report.is_file():
        raise PerfAnalyzerError((done.stdout + done.stderr)[-2000:])
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return replace(parse_report(report, window * _TRIALS), cpu_share=machine_share(cpu_s, wall_s))


def parse_report(path: Path, requests: int) -> PerfAnalyzerResult:
    """The first row of perf_analyzer's ``-f`` CSV (latencies there are in microseconds)."""
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise PerfAnalyzerError(f"{path}: no measurement row")
    row = rows[0]
    return PerfAnalyzerResult(
        concurrency=int(row["Concurrency"]),
        throughput_rps=float(row["Inferences/Second"]),
        p50_ms=float(row["p50 latency"]) / 1000.0,
        p99_ms=float(row["p99 latency"]) / 1000.0,
        requests=requests,
    )
