"""Soak: many requests through a real `predictor serve`, its memory sampled throughout.

MXNet keeps tensors in its own allocator, out of Python's sight; a leak of a few
hundred kilobytes per request is invisible in a short test and fatal in a week.
This drives a real server (a child process on a loopback port) with a mix of
everything it meets in production and samples the server's resident memory
(``/proc/PID/status``, VmRSS) and, when it runs on a GPU, the device memory its
process holds (``nvidia-smi``):

- JPEGs from 1x1 to 1920x1080: baseline, progressive, grayscale, EXIF-rotated,
  12-bit lossy and 16-bit lossless (the libjpeg path); drawn answers
  (``?render=true``); v2 requests, binary and JSON; bodies that are refused
  (truncated, PNG, a malformed v2 request); thresholds.
- ``--clients`` closed-loop clients on keep-alive connections.

The first ``--warmup`` part of the requests lets caches, allocator pools and
MXNet's per-shape memory plans fill. Then the traffic pauses (`REST_S`) and
the RSS at rest is read; the same after the last request. Memory is flat
when the RSS at rest ends within ``--max-growth`` (2 %) of where it started
and the least-squares slope of the RSS sampled under load (once a second)
after the warm-up is under ``--max-slope-kib`` (20 KiB per 1,000 requests).
The RSS under load swings by tens of MiB with the photos in flight; at rest
it is what the server keeps.

    python -m bench.soak                           # `make soak`: 100,000 requests;
                                                   # rewrites BENCHMARKS.md, bench/soak.png
    python -m bench.soak --requests 2000 --warmup 0.2 --no-write
    python -m bench.soak --requests 2000 --warmup 0.2 --no-write --leak-bytes 10000
                                                   # a deliberately leaking build: must fail
    python -m bench.soak --requests 8000 --no-write --untuned --plot untuned.png
                                                   # glibc's malloc defaults, to compare

Exit status 0 when memory is flat and every answer was the expected one;
traffic goes only to the server it starts, and every run is bounded by its
request count and a time limit."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import cv2
import numpy as np

from predictor.config import SHIPPED_MODEL_EDGE, SHIPPED_MODEL_PREFIX
from predictor.data.synth import SceneConfig, render_scene
from tests.support.jpegs import extended_jpeg_12bit, lossless_jpeg, with_exif_orientation
from tests.support.server_process import ServerProcess
from tests.support.v2 import v2_binary_request

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
MARK_START = "<!-- soak:start -->"
MARK_END = "<!-- soak:end -->"
SAMPLE_EVERY_S = 1.0
# A pause without traffic before the RSS is read at rest: the requests in flight
# are done and the server's periodic trim (every 10 s) has run.
REST_S = 12.0


@dataclass(frozen=True)
class Case:
    """One request of the mix: path and query, body, and the status it must get."""

    name: str
    query: str
    body: bytes
    expected: int
    path: str = "/predict"
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "image/jpeg"),)


@dataclass
class Sample:
    """The server's memory after ``requests`` answers."""

    seconds: float
    requests: int
    rss_bytes: int
    gpu_bytes: int | None


@dataclass
class SoakReport:
    """What a soak measured."""

    requests: int
    clients: int
    warmup_requests: int
    wall_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    # Under load, one a second.
    samples: list[Sample] = field(default_factory=list)
    # At rest (REST_S without traffic) after the warm-up, and after the last request:
    # what the server holds, without the buffers of the requests in flight.
    rest_start: Sample | None = None
    rest_end: Sample | None = None

    def _after_warmup(self) -> list[Sample]:
        return [s for s in self.samples if s.requests >= self.warmup_requests]

    @property
    def rss_start(self) -> int:
        """RSS at rest when the warm-up had just ended."""
        assert self.rest_start is not None
        return self.rest_start.rss_bytes

    @property
    def rss_end(self) -> int:
        """RSS at rest after the last request."""
        assert self.rest_end is not None
        return self.rest_end.rss_bytes

    @property
    def rss_max(self) -> int:
        """Highest RSS after warm-up."""
        return max(s.rss_bytes for s in self._after_warmup())

    @property
    def growth(self) -> float:
        """(end - start) / start of the RSS at rest, from the end of the warm-up to the end."""
        return (self.rss_end - self.rss_start) / self.rss_start

    @property
    def slope_bytes_per_1000(self) -> float:
        """Least-squares slope of RSS over requests after warm-up, per 1,000 requests."""
        points = self._after_warmup()
        if len(points) < 3:
            return float("nan")
        x = np.array([s.requests for s in points], dtype=np.float64)
        y = np.array([s.rss_bytes for s in points], dtype=np.float64)
        return float(np.polyfit(x, y, 1)[0] * 1000.0)

    def rss_at(self, fraction: float) -> int:
        """RSS when ``fraction`` of the requests after warm-up had been answered."""
        points = self._after_warmup()
        target = self.warmup_requests + fraction * (points[-1].requests - self.warmup_requests)
        return next(s.rss_bytes for s in points if s.requests >= target)

    @property
    def gpu_growth_bytes(self) -> int | None:
        """Device memory held at the end minus at the end of warm-up (GPU runs only)."""
        points = self._after_warmup()
        if points[0].gpu_bytes is None or points[-1].gpu_bytes is None:
            return None
        return points[-1].gpu_bytes - points[0].gpu_bytes

    def passed(self, max_growth: float, max_slope_bytes: float) -> bool:
        """Flat memory, and every request got the status its case expects.

        Flat: after warm-up the RSS ends within ``max_growth`` (a fraction) of
        where it started, and its least-squares slope is under
        ``max_slope_bytes`` per 1,000 requests.
        """
        return (
            abs(self.growth) < max_growth
            and self.slope_bytes_per_1000 < max_slope_bytes
            and not self.unexpected
        )

    def summary(self) -> str:
        """A few lines for the terminal."""
        mib = 1024 * 1024
        lines = [
            f"{sum(self.statuses.values())} requests from {self.clients} clients in "
            f"{self.wall_s:.0f} s ({sum(self.statuses.values()) / self.wall_s:.1f}/s); "
            f"statuses {dict(sorted(self.statuses.items()))}",
            f"RSS at rest after warm-up ({self.warmup_requests} requests) "
            f"{self.rss_start / mib:.1f} MiB, at rest at the end {self.rss_end / mib:.1f} MiB, "
            f"max under load {self.rss_max / mib:.1f} MiB: "
            f"growth {100 * self.growth:+.2f} %, slope "
            f"{self.slope_bytes_per_1000 / 1024:+.1f} KiB per 1,000 requests",
            "RSS under load at 0/25/50/75/100 % of the requests after warm-up: "
            + " / ".join(f"{self.rss_at(q) / mib:.1f}" for q in (0, 0.25, 0.5, 0.75, 1))
            + " MiB",
        ]
        if self.gpu_growth_bytes is not None:
            lines.append(f"GPU memory growth after warm-up: {self.gpu_growth_bytes / mib:+.1f} MiB")
        if self.unexpected:
            lines.append(f"UNEXPECTED answers: {dict(self.unexpected)}")
        return "\n".join(lines)


def cases(seed: int = 7) -> list[Case]:
    """The request mix: mostly photos of assorted sizes, and every odd kind now and then."""
    rng = np.random.default_rng(seed)

    def picture(width: int, height: int) -> np.ndarray:  # type: ignore[type-arg]
        scene = render_scene(rng, SceneConfig(min_side=256, max_side=640)).image
        return np.asarray(cv2.resize(scene, (width, height), interpolation=cv2.INTER_AREA))

    def jpeg(image: np.ndarray, **params: int) -> bytes:  # type: ignore[type-arg]
        flags = [cv2.IMWRITE_JPEG_QUALITY, 88]
        for key, value in params.items():
            flags += [getattr(cv2, key), value]
        ok, data = cv2.imencode(".jpg", image, flags)
        assert ok
        return bytes(data.tobytes())

    mix: list[Case] = []
    for index, (width, height) in enumerate(
        [(640, 480), (1280, 720), (1920, 1080), (320, 240), (800, 600), (1024, 768)] * 2
    ):
        image = picture(width, height)
        mix.append(Case(f"photo {width}x{height}", "", jpeg(image), 200))
        if index % 3 == 0:
            mix.append(Case("threshold", "?threshold=0.2", jpeg(image), 200))
    photo = picture(640, 480)
    small = np.ascontiguousarray(picture(96, 64)[:, :, ::-1])
    png = io.BytesIO()
    ok, png_data = cv2.imencode(".png", photo)
    assert ok
    png.write(png_data.tobytes())
    mix += [
        Case("progressive", "", jpeg(photo, IMWRITE_JPEG_PROGRESSIVE=1), 200),
        Case("grayscale", "", jpeg(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)), 200),
        Case("exif-rotated", "", with_exif_orientation(jpeg(photo), 6), 200),
        Case("12-bit", "", extended_jpeg_12bit(small.astype(np.uint16) * 16), 200),
        Case("16-bit", "", lossless_jpeg(small.astype(np.uint16) * 257, 16), 200),
        Case("1x1", "", jpeg(np.full((1, 1, 3), 99, np.uint8)), 200),
        Case("drawn", "?render=true", jpeg(photo), 200),
        Case("truncated", "", jpeg(photo)[:700], 400),
        Case("png", "", png.getvalue(), 400),
        v2_binary_case(jpeg(picture(800, 600))),
        v2_json_case(jpeg(picture(1024, 768))),
        Case(
            "v2 refused",
            "",
            b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": []}]}',
            400,
            path=V2_INFER,
            headers=(("Content-Type", "application/json"),),
        ),
    ]
    return mix


V2_INFER = f"/v2/models/{Path(SHIPPED_MODEL_PREFIX).name}/infer"


def v2_binary_case(image: bytes) -> Case:
    """A v2 request with the binary tensor data extension, binary outputs asked for."""
    body, headers = v2_binary_request(image)
    return Case("v2 binary", "", body, 200, path=V2_INFER, headers=tuple(headers.items()))


def v2_json_case(image: bytes) -> Case:
    """A v2 request in JSON, the image in base64."""
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "data": [base64.b64encode(image).decode()],
                }
            ]
        }
    ).encode()
    return Case("v2 json", "", body, 200, path=V2_INFER, headers=(("Content-Type", JSON),))


JSON = "application/json"


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def gpu_bytes(pid: int) -> int | None:
    """Device memory held by ``pid`` per nvidia-smi, or None where there is no GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    try:
        output = subprocess.run(query, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    total = 0
    for line in output.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            total += int(parts[1]) * 1024 * 1024
    return total


async def drive(
    url: str,
    pid: int,
    mix: Sequence[Case],
    requests: int,
    clients: int,
    warmup_requests: int,
    time_limit_s: float,
    sample_gpu: bool,
) -> SoakReport:
    """Send ``requests`` requests from ``clients`` clients, sampling the server's memory.

    Under load the RSS is sampled every second; at the end of the warm-up and
    after the last request the traffic pauses for `REST_S` and the RSS at rest
    is read (see `SoakReport.rest_start`).
    """
    report = SoakReport(requests=requests, clients=clients, warmup_requests=warmup_requests)
    next_index = 0
    done = 0
    started = time.monotonic()
    deadline = started + time_limit_s

    def sample() -> Sample:
        return Sample(
            time.monotonic() - started,
            done,
            rss_bytes(pid),
            gpu_bytes(pid) if sample_gpu else None,
        )

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=clients), timeout=timeout
    ) as session:

        async def client(limit: int) -> None:
            nonlocal next_index, done
            while next_index < limit and time.monotonic() < deadline:
                case = mix[next_index % len(mix)]
                next_index += 1
                async with session.post(
                    url + case.path + case.query, data=case.body, headers=dict(case.headers)
                ) as response:
                    await response.read()
                    status = response.status
                report.statuses[str(status)] += 1
                if status != case.expected:
                    report.unexpected[f"{case.name}: {status}"] += 1
                done += 1

        async def sampler() -> None:
            while True:
                report.samples.append(sample())
                await asyncio.sleep(SAMPLE_EVERY_S)

        async def run(limit: int) -> None:
            sampling = asyncio.create_task(sampler())
            await asyncio.gather(*(client(limit) for _ in range(clients)))
            sampling.cancel()

        await run(warmup_requests)
        await asyncio.sleep(REST_S)
        report.rest_start = sample()
        await run(requests)
        report.wall_s = time.monotonic() - started
        await asyncio.sleep(REST_S)
        report.rest_end = sample()
    return report


def probe_env(leak_bytes: int = 0, untuned: bool = False) -> dict[str, str]:
    """Environment that instruments the server with `bench/memprobe/sitecustomize.py`.

    ``leak_bytes``: a deliberately leaking build (each /predict keeps that
    many bytes); ``untuned``: glibc's allocator defaults, as before
    `predictor.runtime.memory`. Empty when neither is asked for.
    """
    if not leak_bytes and not untuned:
        return {}
    path = [str(ROOT / "bench" / "memprobe"), os.environ.get("PYTHONPATH", "")]
    env = {"PYTHONPATH": os.pathsep.join(p for p in path if p)}
    if leak_bytes:
        env["PREDICTOR_LEAK_BYTES"] = str(leak_bytes)
    if untuned:
        env["PREDICTOR_UNTUNED_MALLOC"] = "1"
    return env


def soak(
    requests: int,
    clients: int = 8,
    warmup_fraction: float = 0.1,
    time_limit_s: float = 4 * 3600.0,
    env: dict[str, str] | None = None,
    leak_bytes: int = 0,
    untuned: bool = False,
) -> SoakReport:
    """Start a server, soak it, stop it with SIGTERM (it must exit 0); return the report."""
    server_env = {
        "MODEL_PREFIX": str(ROOT / SHIPPED_MODEL_PREFIX),
        "MODEL_EDGE": str(SHIPPED_MODEL_EDGE),
        "BATCH_MAX_SIZE": "8",
        "PREPROCESS_WORKERS": "2",
        **probe_env(leak_bytes, untuned),
        **(env or {}),
    }
    warmup = max(200, int(requests * warmup_fraction))
    with ServerProcess(server_env) as server:
        assert server.port is not None
        report = asyncio.run(
            drive(
                server.url,
                server.process.pid,
                cases(),
                requests,
                clients,
                warmup,
                time_limit_s,
                sample_gpu=server_env.get("MODEL_CONTEXT_GPU", "false").lower()
                not in ("", "false", "no", "off"),
            )
        )
        code = server.stop(signal.SIGTERM)
    if code != 0:
        raise RuntimeError(f"the server exited {code} after the soak")
    return report


def write_results(report: SoakReport, command: str, path: Path) -> None:
    """Every sample and the figures, as JSON."""
    results = {
        "command": command,
        "requests": sum(report.statuses.values()),
        "report": {
            "clients": report.clients,
            "warmup_requests": report.warmup_requests,
            "wall_s": report.wall_s,
            # Plain dicts: dataclasses.asdict would rebuild a Counter from (key, value) pairs.
            "statuses": dict(report.statuses),
            "unexpected": dict(report.unexpected),
            "rss_start": report.rss_start,
            "rss_end": report.rss_end,
            "growth": report.growth,
            "slope_bytes_per_1000": report.slope_bytes_per_1000,
        },
        "samples": [asdict(s) for s in report.samples],
        "rest": [asdict(s) for s in (report.rest_start, report.rest_end) if s is not None],
    }
    path.write_text(json.dumps(results, indent=1) + "\n")


def plot(report: SoakReport, path: Path, title: str) -> None:
    """The RSS over the requests, warm-up shaded, the fitted line after it (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 1024 * 1024
    x = np.array([s.requests for s in report.samples], dtype=np.float64)
    y = np.array([s.rss_bytes for s in report.samples], dtype=np.float64) / mib
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=110)
    axes.axvspan(0, report.warmup_requests, color="0.9", label="warm-up")
    axes.plot(x, y, lw=1.0, color="tab:blue", label="server RSS (one sample a second)")
    after = x >= report.warmup_requests
    slope, intercept = np.polyfit(x[after], y[after], 1)
    axes.plot(
        x[after],
        slope * x[after] + intercept,
        color="tab:red",
        lw=1.2,
        ls="--",
        label=f"fit after warm-up: {slope * 1000 * 1024:+.1f} KiB / 1,000 requests",
    )
    start = report.rss_start / mib
    rests = [s for s in (report.rest_start, report.rest_end) if s is not None]
    axes.plot(
        [s.requests for s in rests],
        [s.rss_bytes / mib for s in rests],
        "o",
        color="tab:green",
        label="at rest (after the warm-up, at the end)",
    )
    axes.axhspan(
        start * 0.98,
        start * 1.02,
        color="tab:green",
        alpha=0.12,
        label="±2 % of the RSS after warm-up",
    )
    axes.set_xlabel("requests answered")
    axes.set_ylabel("RSS (MiB)")
    axes.set_title(title)
    axes.set_ylim(min(y[after].min(), start * 0.98) - 20, max(y.max(), start * 1.02) + 20)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def write_section(
    report: SoakReport, command: str, max_growth: float, max_slope_bytes: float
) -> None:
    """Rewrite the soak section of BENCHMARKS.md, bench/soak-results.json and bench/soak.png."""
    mib = 1024 * 1024
    total = sum(report.statuses.values())
    gpu = report.gpu_growth_bytes
    passed = report.passed(max_growth, max_slope_bytes)
    plot(report, ROOT / "bench" / "soak.png", f"`{command}`: server RSS")
    section = "\n".join(
        [
            MARK_START,
            "## Soak: memory under sustained load",
            "",
            f"Measured {time.strftime('%Y-%m-%d')} with `{command}` (`make soak`) on "
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}; the machine was shared with other work, "
            "so the rate is not a speed figure (see the section above for those).",
            f"Model `{SHIPPED_MODEL_PREFIX}` on the CPU, `BATCH_MAX_SIZE=8`, "
            f"{report.clients} keep-alive clients; the mix of `bench/soak.py` (photos "
            "320x240 to 1920x1080, progressive, grayscale, EXIF-rotated, 12- and 16-bit, "
            "1x1, drawn answers, v2 binary and JSON requests, refused bodies).",
            "",
            "| requests | duration | RSS at rest after warm-up | at rest at the end "
            "| max under load | growth | slope under load |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {total:,} ({report.warmup_requests:,} warm-up) | {report.wall_s / 60:.1f} min "
            f"| {report.rss_start / mib:.1f} MiB | {report.rss_end / mib:.1f} MiB "
            f"| {report.rss_max / mib:.1f} MiB | **{100 * report.growth:+.2f} %** "
            f"| **{report.slope_bytes_per_1000 / 1024:+.1f} KiB / 1,000 requests** |",
            "",
            "![RSS of the server over the soak](bench/soak.png)",
            "",
            f"At rest means {REST_S:g} s without traffic (the requests in flight done, the "
            "server's periodic trim run); the slope is the least-squares fit of the samples "
            "taken under load after the warm-up. RSS under load at 0, 25, 50, 75 and 100 % "
            "of the requests after the warm-up: "
            + ", ".join(f"{report.rss_at(q) / mib:.1f}" for q in (0, 0.25, 0.5, 0.75, 1))
            + " MiB. Every sample (one a second) is in `bench/soak-results.json`.",
            "",
            f"Statuses: {', '.join(f'{k}: {v:,}' for k, v in sorted(report.statuses.items()))}"
            f"{'' if not report.unexpected else f'; unexpected: {dict(report.unexpected)}'}.",
            f"Target: after warm-up the RSS ends within {100 * max_growth:g} % of where it "
            f"started and its slope is under {max_slope_bytes / 1024:g} KiB per 1,000 requests "
            f"({'met' if passed else 'NOT met'}). "
            + (
                f"GPU memory growth: {gpu / mib:+.1f} MiB."
                if gpu is not None
                else "GPU memory: not measured (no GPU on this machine; `bench/soak.py` "
                "samples it with nvidia-smi when `MODEL_CONTEXT_GPU` is set)."
            ),
            MARK_END,
        ]
    )
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text(encoding="utf-8")
    if MARK_START in text:
        before, rest = text.split(MARK_START, 1)
        after = rest.split(MARK_END, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text, encoding="utf-8")
    write_results(report, command, ROOT / "bench" / "soak-results.json")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit 1 when the memory grew or an answer was wrong."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the requests")
    parser.add_argument(
        "--max-growth", type=float, default=0.02, help="|end - start| / start after warm-up"
    )
    parser.add_argument(
        "--max-slope-kib", type=float, default=20.0, help="KiB per 1,000 requests after warm-up"
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--results", type=Path, help="write the samples here (JSON)")
    parser.add_argument("--plot", type=Path, help="draw the RSS curve here (PNG)")
    parser.add_argument(
        "--leak-bytes",
        type=int,
        default=0,
        help="run a deliberately leaking build: each /predict keeps this many bytes",
    )
    parser.add_argument(
        "--untuned", action="store_true", help="glibc's malloc defaults (no mmap threshold, trim)"
    )
    args = parser.parse_args(argv)
    report = soak(
        args.requests, args.clients, args.warmup, leak_bytes=args.leak_bytes, untuned=args.untuned
    )
    print(report.summary())
    max_slope = args.max_slope_kib * 1024
    command = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.results is not None:
        write_results(report, command.strip(), args.results)
    if args.plot is not None:
        plot(report, args.plot, f"`{command.strip()}`: server RSS")
    if not args.no_write:
        write_section(report, command.strip(), args.max_growth, max_slope)
    return 0 if report.passed(args.max_growth, max_slope) else 1


if __name__ == "__main__":
    sys.exit(main())
