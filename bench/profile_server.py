"""`make bench-profile`: where the time goes per image, offline and inside a loaded server.

1. Stages, in this process, one image at a time over the benchmark JPEGs:
   header checks, decoding (DCT-reduced where possible, and at full size for
   comparison), resize + normalise, the forward pass (batch 1 and 2), and the
   mapping to the contract's detections plus JSON. Wall and CPU time (CPU
   counts every thread, so the forward pass's CPU time exceeds its wall time
   when MXNet uses both cores).
2. A `predictor serve` under closed-loop load (16 clients), sampled by
   py-spy (installed by pip into ``bench/.work/tools``, not into the
   project's venv): the share of samples per activity of the server's Python
   threads, and the ``Server-Timing`` steps the server reported.

Writes the section of ``BENCHMARKS.md`` between its markers and
``bench/profile.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np

from bench.bench_server import machine, write_markdown
from predictor.config import SHIPPED_MODEL_EDGE, SHIPPED_MODEL_PREFIX, DeviceSpec
from predictor.detections import Placement, RawDetections, to_detections
from predictor.runtime.imaging import _checked_header, decode, to_tensor
from predictor.runtime.model import load_detectors
from tests.support.photos import make_photos
from tests.support.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
TOOLS = WORK / "tools"
MARK_START = "<!-- bench_profile:start -->"
MARK_END = "<!-- bench_profile:end -->"
# Activities of the server's Python threads, by the first matching frame
# (innermost first) of a py-spy stack.
ACTIVITIES = (
    ("forward pass (waiting for MXNet)", ("forward (predictor/runtime/model.py", "asnumpy")),
    ("JPEG decoding", ("_imdecode", "decode (predictor/runtime/imaging.py")),
    ("resize + normalise", ("to_tensor",)),
    ("JPEG header checks", ("jpeg_header", "_checked_header")),
    ("detections + JSON", ("to_detections", "json_response", "_strict_dumps", "dumps")),
    ("HTTP (aiohttp)", ("aiohttp",)),
    ("event loop waiting for I/O", ("select (selectors",)),
    ("batching and event loop", ("batching.py", "asyncio")),
)


def timed(function: Callable[[], Any], repeats: int = 3) -> tuple[float, float]:
    """Median wall and CPU milliseconds of ``function``."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        function()
        walls.append((time.perf_counter() - wall) * 1000.0)
        cpus.append((time.process_time() - cpu) * 1000.0)
    return statistics.median(walls), statistics.median(cpus)


def stages(prefix: Path, edge: int, files: list[Path]) -> dict[str, dict[str, float]]:
    """Per-image wall/CPU milliseconds of each step, averaged over ``files``."""
    detector = load_detectors(prefix, 0, edge, DeviceSpec(), 2)[0]
    sums: dict[str, list[float]] = {}

    def add(name: str, wall_cpu: tuple[float, float]) -> None:
        totals = sums.setdefault(name, [0.0, 0.0])
        totals[0] += wall_cpu[0] / len(files)
        totals[1] += wall_cpu[1] / len(files)

    for path in files:
        data = path.read_bytes()
        add("JPEG header checks", timed(partial(_checked_header, data, 2**31 - 1)))
        add("decode, DCT-reduced (served)", timed(partial(decode, data, edge, 2**31 - 1)))
        add(
            "decode, full size (not served; for comparison)",
            timed(partial(cv2.imdecode, np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)),
        )
        pixels = decode(data, edge, 2**31 - 1).pixels
        add("resize + normalise", timed(partial(to_tensor, pixels, edge)))
        tensor = to_tensor(pixels, edge)
        add("forward, batch 1", timed(partial(detector.forward, [tensor])))
        batch_2 = timed(partial(detector.forward, [tensor, tensor]))
        add("forward, batch 2 (per image)", (batch_2[0] / 2, batch_2[1] / 2))
        (raw,) = detector.forward([tensor])

        add("detections + JSON", timed(partial(answer, raw, edge, detector.classes)))
    detector.close()
    return {name: {"wall_ms": v[0], "cpu_ms": v[1]} for name, v in sums.items()}


def answer(raw: RawDetections, edge: int, classes: list[str]) -> str:
    """The JSON body the server would send for ``raw`` (for a 4000x3000 photo)."""
    found = to_detections(raw, Placement.stretched(4000, 3000, edge, edge), classes, 0.5)
    return json.dumps({"prediction": [d.to_json() for d in found]})


def ensure_py_spy() -> Path:
    """py-spy in its own venv under bench/.work (a profiling tool, not a dependency)."""
    binary = TOOLS / "bin" / "py-spy"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        pip = [str(TOOLS / "bin" / "python"), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "py-spy==0.4.3"], check=True)
    return binary


async def load(url: str, bodies: list[bytes], clients: int, seconds: float) -> list[str]:
    """Closed-loop load; returns every Server-Timing header received."""
    timings: list[str] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(offset: int) -> None:
            index = offset
            while time.monotonic() < deadline:
                body = bodies[index % len(bodies)]
                index += clients
                headers = {"Content-Type": "image/jpeg"}
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    timings.append(response.headers.get("Server-Timing", ""))

        await asyncio.gather(*(client(i) for i in range(clients)))
    return timings


def profile_server(
    prefix: Path, edge: int, bodies: list[bytes], seconds: float, clients: int
) -> dict[str, Any]:
    """py-spy samples of a loaded server, grouped by activity, and its Server-Timing steps."""
    py_spy = ensure_py_spy()
    raw = WORK / "py-spy.txt"
    env = {"MODEL_PREFIX": str(prefix), "MODEL_EDGE": str(edge), "BATCH_MAX_SIZE": "2"}
    with ServerProcess(env) as server:
        url = server.url + "/predict"
        asyncio.run(load(url, bodies, 4, 3.0))  # warm-up
        timings: list[str] = []
        loader = threading.Thread(
            target=lambda: timings.extend(asyncio.run(load(url, bodies, clients, seconds)))
        )
        loader.start()
        time.sleep(1.0)
        subprocess.run(
            [
                str(py_spy),
                "record",
                "--pid",
                str(server.process.pid),
                "--duration",
                str(int(seconds - 2)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(raw),
                "--idle",
                "--nonblocking",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        loader.join()
    activity: Counter[str] = Counter()
    for line in raw.read_text(encoding="utf-8").splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[::-1]  # innermost first
        activity[classify(frames)] += int(count)
    steps: dict[str, list[float]] = {}
    for header in timings:
        for name, value in re.findall(r"(\w+);dur=([\d.]+)", header):
            steps.setdefault(name, []).append(float(value))
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(timings),
        "samples": dict(activity.most_common()),
        "server_timing_ms": {k: statistics.mean(v) for k, v in steps.items()},
    }


def classify(frames: list[str]) -> str:
    """The activity of one sampled stack (innermost frame first)."""
    for frame in frames:
        for name, markers in ACTIVITIES:
            if any(marker in frame for marker in markers):
                return name
    idle_markers = ("_worker (concurrent/futures", "wait (threading", "_bootstrap")
    if any(marker in frame for frame in frames for marker in idle_markers):
        return "idle pool threads"
    return "other"


def render_section(report: dict[str, Any]) -> str:
    """The BENCHMARKS.md section."""
    lines = [
        "## Profile: where the time goes per image",
        "",
        f"Measured {report['date']} with `make bench-profile` on {report['machine']}, "
        f"model `{report['model']}`, {report['photos']} JPEGs from 640x480 to 4000x3000.",
        "",
        "Per image, one at a time in one process (mean over the photos of the median of 3):",
        "",
        "| step | wall (ms) | CPU (ms, all threads) |",
        "|---|---:|---:|",
    ]
    for name, figures in report["stages"].items():
        lines.append(f"| {name} | {figures['wall_ms']:.2f} | {figures['cpu_ms']:.2f} |")
    server = report["server"]
    total = sum(server["samples"].values()) or 1
    lines += [
        "",
        f"Inside `predictor serve` under {server['clients']} closed-loop clients "
        f"({server['requests']} requests in {server['seconds']:g} s), py-spy samples of "
        "the server's Python threads (event loop, decoding pool, forward thread; idle "
        "threads included, so shares are of thread-time, not of CPU):",
        "",
        "| activity | share of samples |",
        "|---|---:|",
    ]
    for name, count in server["samples"].items():
        lines.append(f"| {name} | {100 * count / total:.1f} % |")
    steps = ", ".join(f"{k} {v:.1f} ms" for k, v in server["server_timing_ms"].items())
    lines += ["", f"The server's own `Server-Timing`, mean per request: {steps}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "profile.json")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    files = make_photos(WORK / "photos", args.photos)
    prefix, edge = ROOT / SHIPPED_MODEL_PREFIX, SHIPPED_MODEL_EDGE
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "model": SHIPPED_MODEL_PREFIX,
        "photos": len(files),
        "stages": stages(prefix, edge, files),
        "server": profile_server(
            prefix, edge, [f.read_bytes() for f in files], args.seconds, args.clients
        ),
    }
    args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    write_markdown(args.markdown, render_section(report), MARK_START, MARK_END)
    print(render_section(report), file=sys.stderr)


if __name__ == "__main__":
    main()
