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
MXNet's per-shape memory plans fill. After it, and then every
``--rest-every`` requests and after the last one, the traffic pauses and the
RSS is read *at rest*: once the server has used no CPU for a second (every
answer written, nothing left to do) and has run its periodic collection and
trim (``predictor_memory_trims_total`` on /metrics went up; a server that
does not trim is given `REST_S`); the last ``--clients`` requests before
each rest are the mix's first photo, one at a time, so that what the last
forward passes leave allocated is the same at every rest. At rest the RSS
is what the server keeps; under load (sampled once a second) it also holds
the bodies, photos and tensors of the requests in flight, tens of MiB that
come and go with the load's level. Memory is flat when, after the warm-up,

- the RSS at rest ends less than ``--max-growth`` (2 %) above where it started
  and above its lowest reading at rest (a one-off release after the warm-up
  must not hide a leak that follows it; a fall is not a failure), and
- the least-squares slope of the RSS at rest over the requests is under
  ``--max-slope-kib`` (20 KiB per 1,000 requests).

The slope of the samples under load is still computed, plotted and written
(``slope_under_load_bytes_per_1000``), for comparison only. At each rest the
RSS is also split by kind of mapping (`rss_by_kind`: glibc's main heap, its
other arenas, other anonymous memory, files), which says where a growth is.

    python -m bench.soak --requests 100000 --rest-every 10000
                                                   # `make soak`; rewrites BENCHMARKS.md,
                                                   # bench/soak.png, bench/soak-results.json
    python -m bench.soak --requests 20000 --warmup 0.125 --rest-every 2500 --no-write \\
        --server-env MALLOC_ARENA_MAX=2            # a setting of the server's, to compare
    python -m bench.soak --requests 2000 --warmup 0.2 --no-write --leak-bytes 10000
                                                   # a deliberately leaking build: must fail
    python -m bench.soak --requests 8000 --no-write --untuned --plot untuned.png
                                                   # glibc's malloc defaults, to compare

``--results`` (and `make soak`, bench/soak-results.json) writes JSON: the
command, ``requests``, ``report`` (the figures; ``slope_bytes_per_1000`` is
the judged slope, fitted at rest since issue 15, and
``slope_under_load_bytes_per_1000`` the one fitted before), ``samples``
(under load) and ``rest`` (every sample at rest, the first after the
warm-up, the last after the last request; before issue 15 only those two).

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
import re
import shutil
import signal
import subprocess
import sys
import textwrap
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
# At rest: the server counts as idle once it has used less than IDLE_CPU_S of
# CPU time in IDLE_WINDOW_S (it answered every request; a busy server uses a
# core), waiting IDLE_TIMEOUT_S at most.
IDLE_WINDOW_S = 1.0
IDLE_CPU_S = 0.05
IDLE_TIMEOUT_S = 30.0
# Then it must finish one periodic trim (its interval plus this much, at most);
# a server that does not trim (MEMORY_TRIM_INTERVAL_S=0) is left alone for REST_S.
TRIM_MARGIN_S = 5.0
REST_S = 12.0
# Longer than any rest (IDLE_TIMEOUT_S + the trim's interval + TRIM_MARGIN_S).
CLIENT_KEEPALIVE_S = 60.0
# The server's own default (predictor.config.Settings.memory_trim_interval_s).
DEFAULT_TRIM_INTERVAL_S = 10.0
_TRIMS = re.compile(r"^predictor_memory_trims_total\s+([0-9.e+]+)$", re.MULTILINE)
# glibc's arenas other than the main heap are mappings of HEAP_MAX_SIZE
# (2 * DEFAULT_MMAP_THRESHOLD_MAX: 64 MiB on 64-bit), aligned to it, the part not
# yet used or given back mapped PROT_NONE.
GLIBC_HEAP_MAX = 64 * 1024 * 1024


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
    """The server's memory after ``requests`` answers.

    ``rss_by_kind`` (samples at rest only): the RSS split by kind of mapping,
    see `rss_by_kind`; ``waited_s``: how long the pause before it lasted.
    """

    seconds: float
    requests: int
    rss_bytes: int
    gpu_bytes: int | None
    rss_by_kind: dict[str, int] | None = None
    waited_s: float | None = None

    @property
    def private_bytes(self) -> int | None:
        """The RSS less mapped files (at rest only): what the process itself allocated.

        File pages (the libraries' code, mostly) are shared and come and go with
        the machine's page cache, not with what the server keeps.
        """
        if self.rss_by_kind is None:
            return None
        return self.rss_bytes - self.rss_by_kind["file"]


def _fit_per_1000(points: Sequence[Sample], private: bool = False) -> float:
    """Least-squares slope of the RSS (``private``: less files) over requests, per 1,000.

    NaN with fewer than 2 points.
    """
    if len(points) < 2:
        return float("nan")
    x = np.array([s.requests for s in points], dtype=np.float64)
    y = np.array(
        [(s.private_bytes or 0) if private else s.rss_bytes for s in points], dtype=np.float64
    )
    return float(np.polyfit(x, y, 1)[0] * 1000.0)


@dataclass
class SoakReport:
    """What a soak measured."""

    requests: int
    clients: int
    warmup_requests: int
    rest_every: int = 0
    # Wall time of the whole run; load_s: of its parts under load (no pauses).
    wall_s: float = 0.0
    load_s: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    # Under load, one a second.
    samples: list[Sample] = field(default_factory=list)
    # At rest: after the warm-up, every `rest_every` requests, after the last
    # request. What the server holds, without the buffers of requests in flight.
    rests: list[Sample] = field(default_factory=list)

    def _after_warmup(self) -> list[Sample]:
        return [s for s in self.samples if s.requests >= self.warmup_requests]

    def rests_after_warmup(self) -> list[Sample]:
        """The samples at rest from the end of the warm-up on."""
        return [s for s in self.rests if s.requests >= self.warmup_requests]

    @property
    def rest_start(self) -> Sample | None:
        """At rest when the warm-up had just ended."""
        points = self.rests_after_warmup()
        return points[0] if points else None

    @property
    def rest_end(self) -> Sample | None:
        """At rest after the last request."""
        return self.rests[-1] if self.rests else None

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
        """Highest RSS under load after warm-up."""
        return max(s.rss_bytes for s in self._after_warmup())

    @property
    def growth(self) -> float:
        """(end - start) / start of the RSS at rest, from the end of the warm-up to the end."""
        return (self.rss_end - self.rss_start) / self.rss_start

    @property
    def rise_from_lowest(self) -> float:
        """(end - lowest) / lowest of the RSS at rest after warm-up.

        What a leak adds after the server last gave memory back: in the builder image
        the first rest once held 40-60 MiB that every later rest had released, and from
        that higher start a leaking build ended only +2.8 % (tests/test_soak.py).
        """
        lowest = min(s.rss_bytes for s in self.rests_after_warmup())
        return (self.rss_end - lowest) / lowest

    @property
    def slope_bytes_per_1000(self) -> float:
        """The judged slope: least-squares fit of the RSS at rest after warm-up, per 1,000."""
        return _fit_per_1000(self.rests_after_warmup())

    @property
    def slope_under_load_bytes_per_1000(self) -> float:
        """Least-squares fit of the RSS sampled under load after warm-up (not judged)."""
        points = self._after_warmup()
        return _fit_per_1000(points) if len(points) >= 3 else float("nan")

    @property
    def private_slope_bytes_per_1000(self) -> float:
        """The fit at rest of the RSS less mapped files (`Sample.private_bytes`), per 1,000."""
        return _fit_per_1000(self.rests_after_warmup(), private=True)

    @property
    def late_slope_bytes_per_1000(self) -> float:
        """The fit at rest over the second half of the requests after warm-up.

        Close to `slope_bytes_per_1000` for a steady growth (a leak); well
        below it when the growth levels off.
        """
        points = self.rests_after_warmup()
        if not points:
            return float("nan")
        middle = (points[0].requests + points[-1].requests) / 2
        return _fit_per_1000([s for s in points if s.requests >= middle])

    def rss_at(self, fraction: float) -> int:
        """RSS under load when ``fraction`` of the requests after warm-up had been answered."""
        points = self._after_warmup()
        target = self.warmup_requests + fraction * (points[-1].requests - self.warmup_requests)
        return next(s.rss_bytes for s in points if s.requests >= target)

    @property
    def gpu_growth_bytes(self) -> int | None:
        """Device memory held at rest at the end minus after warm-up (GPU runs only)."""
        start, end = self.rest_start, self.rest_end
        if start is None or end is None or start.gpu_bytes is None or end.gpu_bytes is None:
            return None
        return end.gpu_bytes - start.gpu_bytes

    def passed(self, max_growth: float, max_slope_bytes: float) -> bool:
        """Flat memory, and every request got the status its case expects.

        Flat: after warm-up the RSS at rest ends less than ``max_growth`` (a
        fraction) above where it started and above its lowest rest, and its
        least-squares slope is under ``max_slope_bytes`` per 1,000 requests.
        """
        return (
            self.growth < max_growth
            and self.rise_from_lowest < max_growth
            and self.slope_bytes_per_1000 < max_slope_bytes
            and not self.unexpected
        )

    def summary(self) -> str:
        """A few lines for the terminal."""
        mib = 1024 * 1024
        answered = sum(self.statuses.values())
        lines = [
            f"{answered} requests from {self.clients} clients in {self.wall_s:.0f} s "
            f"({self.load_s:.0f} s under load, {answered / max(self.load_s, 1e-9):.1f}/s); "
            f"statuses {dict(sorted(self.statuses.items()))}",
            f"RSS at rest after warm-up ({self.warmup_requests} requests) "
            f"{self.rss_start / mib:.1f} MiB, at rest at the end {self.rss_end / mib:.1f} MiB, "
            f"max under load {self.rss_max / mib:.1f} MiB: growth {100 * self.growth:+.2f} % "
            f"(above the lowest rest {100 * self.rise_from_lowest:+.2f} %), "
            f"slope at rest {self.slope_bytes_per_1000 / 1024:+.1f} KiB per 1,000 requests "
            f"(second half {self.late_slope_bytes_per_1000 / 1024:+.1f}; less files "
            f"{self.private_slope_bytes_per_1000 / 1024:+.1f}; under load "
            f"{self.slope_under_load_bytes_per_1000 / 1024:+.1f})",
            "RSS at rest (less files): "
            + ", ".join(
                f"{s.requests}: {s.rss_bytes / mib:.1f} ({(s.private_bytes or 0) / mib:.1f})"
                for s in self.rests
            )
            + " MiB",
            "RSS under load at 0/25/50/75/100 % of the requests after warm-up: "
            + " / ".join(f"{self.rss_at(q) / mib:.1f}" for q in (0, 0.25, 0.5, 0.75, 1))
            + " MiB",
        ]
        start, end = self.rest_start, self.rest_end
        if start and end and start.rss_by_kind and end.rss_by_kind:
            lines.append(
                "At rest, end minus start, by kind: "
                + ", ".join(
                    f"{kind} {(end.rss_by_kind.get(kind, 0) - value) / 1024:+.0f} KiB"
                    if kind != "arena_count"
                    else f"arenas {value} -> {end.rss_by_kind.get(kind, 0)}"
                    for kind, value in start.rss_by_kind.items()
                )
            )
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


def rss_by_kind(pid: int) -> dict[str, int]:
    """The resident memory of ``pid`` by kind of mapping (``/proc/PID/smaps``, Linux).

    ``heap``: glibc's main arena (brk); ``arenas``: its other arenas (64 MiB
    mappings aligned to 64 MiB, see `GLIBC_HEAP_MAX`), ``arena_count`` of them;
    ``anonymous``: other private memory (mmapped blocks, MXNet's pools, thread
    stacks); ``file``: mapped files (code of the libraries, the model);
    ``other``: the rest ([stack], [vdso]...). The sizes add up to about VmRSS.
    """
    mappings: list[tuple[int, int, str, str, int]] = []
    header = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        match = header.match(line)
        if match:
            start, end = int(match.group(1), 16), int(match.group(2), 16)
            mappings.append((start, end, match.group(3), match.group(4).strip(), 0))
        elif line.startswith("Rss:") and mappings:
            start, end, perms, name, _ = mappings[-1]
            mappings[-1] = (start, end, perms, name, int(line.split()[1]) * 1024)
    kinds = {"heap": 0, "arenas": 0, "arena_count": 0, "anonymous": 0, "file": 0, "other": 0}
    for index, (start, end, _perms, name, rss) in enumerate(mappings):
        if name == "[heap]":
            kinds["heap"] += rss
        elif name.startswith("/"):
            kinds["file"] += rss
        elif name and not name.startswith("[anon"):
            kinds["other"] += rss
        elif start % GLIBC_HEAP_MAX == 0 and (
            end - start == GLIBC_HEAP_MAX
            or (
                index + 1 < len(mappings)
                and mappings[index + 1][0] == end
                and mappings[index + 1][2].startswith("---")
                and mappings[index + 1][1] - start >= GLIBC_HEAP_MAX
            )
        ):
            kinds["arenas"] += rss
            kinds["arena_count"] += 1
        else:
            kinds["anonymous"] += rss
    return kinds


def copy_smaps(pid: int, path: Path) -> None:
    """Write ``/proc/PID/smaps`` to ``path`` (for a diff by mapping between two rests)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(Path(f"/proc/{pid}/smaps").read_text())


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) that ``pid`` has used so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # Fields 14 and 15 of proc(5), utime and stime; fields[0] is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rest_points(requests: int, warmup: int, every: int) -> list[int]:
    """Where the soak pauses: the warm-up's end, multiples of ``every``, the end."""
    inside = range(every, requests, every) if every > 0 else range(0)
    return sorted({warmup, requests, *(n for n in inside if n > warmup)})


async def trims_done(session: aiohttp.ClientSession, url: str) -> int | None:
    """The server's count of periodic trims (/metrics), or None when it has none."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    match = _TRIMS.search(text)
    return int(float(match.group(1))) if match else None


async def wait_until_idle(pid: int, timeout_s: float = IDLE_TIMEOUT_S) -> bool:
    """Wait until ``pid`` uses under `IDLE_CPU_S` of CPU in `IDLE_WINDOW_S`; False: timed out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        await asyncio.sleep(IDLE_WINDOW_S)
        if cpu_seconds(pid) - before < IDLE_CPU_S:
            return True
    return False


async def wait_for_trim(session: aiohttp.ClientSession, url: str, trim_interval_s: float) -> bool:
    """Wait until the server has finished a periodic trim from now on; False if it did not."""
    before = await trims_done(session, url) if trim_interval_s > 0 else None
    if before is None:
        await asyncio.sleep(REST_S)
        return False
    deadline = time.monotonic() + trim_interval_s + TRIM_MARGIN_S
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        now = await trims_done(session, url)
        if now is not None and now > before:
            return True
    return False


async def drive(
    url: str,
    pid: int,
    mix: Sequence[Case],
    requests: int,
    clients: int,
    warmup_requests: int,
    time_limit_s: float,
    sample_gpu: bool,
    rest_every: int = 0,
    trim_interval_s: float = DEFAULT_TRIM_INTERVAL_S,
    smaps_dir: Path | None = None,
) -> SoakReport:
    """Send ``requests`` requests from ``clients`` clients, sampling the server's memory.

    Under load the RSS is sampled every second. At each of `rest_points` the
    traffic pauses until the server is idle and has trimmed (see the module's
    docstring), and the RSS at rest is read (`SoakReport.rests`), with a copy
    of ``/proc/PID/smaps`` in ``smaps_dir`` when it is given.
    """
    report = SoakReport(
        requests=requests,
        clients=clients,
        warmup_requests=warmup_requests,
        rest_every=rest_every,
    )
    next_index = 0
    done = 0
    started = time.monotonic()
    deadline = started + time_limit_s

    def sample(waited_s: float | None = None) -> Sample:
        return Sample(
            time.monotonic() - started,
            done,
            rss_bytes(pid),
            gpu_bytes(pid) if sample_gpu else None,
            rss_by_kind(pid) if waited_s is not None else None,
            waited_s,
        )

    timeout = aiohttp.ClientTimeout(total=120)
    # The clients' connections stay open through a rest (aiohttp's own default closes
    # them after 15 s idle, which a rest can reach: a reused connection could then be
    # closing under a request); below the server's KEEPALIVE_TIMEOUT_S, 75 s.
    connector = aiohttp.TCPConnector(limit=clients, keepalive_timeout=CLIENT_KEEPALIVE_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(limit: int, closing: bool = False) -> None:
            nonlocal next_index, done
            while next_index < limit and time.monotonic() < deadline:
                case = mix[0] if closing else mix[next_index % len(mix)]
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
            began = time.monotonic()
            sampling = asyncio.create_task(sampler())
            closing_from = max(next_index, limit - clients)
            await asyncio.gather(*(client(closing_from) for _ in range(clients)))
            # The last requests before a rest are the same every time: the mix's first
            # photo, one at a time (the last forward passes are of one image), so that
            # what they leave allocated does not depend on where the pause fell.
            await client(limit, closing=True)
            sampling.cancel()
            report.load_s += time.monotonic() - began

        async def rest() -> Sample:
            began = time.monotonic()
            await wait_until_idle(pid)
            await wait_for_trim(session, url, trim_interval_s)
            point = sample(time.monotonic() - began)
            if smaps_dir is not None:
                copy_smaps(pid, smaps_dir / f"smaps-{done:07d}.txt")
            return point

        for limit in rest_points(requests, warmup_requests, rest_every):
            await run(limit)
            report.rests.append(await rest())
            if time.monotonic() >= deadline:
                break
        report.wall_s = time.monotonic() - started
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
    rest_every: int | None = None,
    smaps_dir: Path | None = None,
) -> SoakReport:
    """Start a server, soak it, stop it with SIGTERM (it must exit 0); return the report.

    ``rest_every``: read the RSS at rest every so many requests after the
    warm-up (None: a tenth of ``requests``; 0: after the warm-up and at the
    end only). ``env`` goes to the server only.
    """
    server_env = {
        "MODEL_PREFIX": str(ROOT / SHIPPED_MODEL_PREFIX),
        "MODEL_EDGE": str(SHIPPED_MODEL_EDGE),
        "BATCH_MAX_SIZE": "8",
        "PREPROCESS_WORKERS": "2",
        **probe_env(leak_bytes, untuned),
        **(env or {}),
    }
    warmup = max(200, int(requests * warmup_fraction))
    every = max(1, requests // 10) if rest_every is None else rest_every
    trim_interval_s = float(
        server_env.get("MEMORY_TRIM_INTERVAL_S", "").strip() or DEFAULT_TRIM_INTERVAL_S
    )
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
                rest_every=every,
                trim_interval_s=trim_interval_s,
                smaps_dir=smaps_dir,
            )
        )
        code = server.stop(signal.SIGTERM)
    if code != 0:
        raise RuntimeError(f"the server exited {code} after the soak")
    return report


def write_results(report: SoakReport, command: str, path: Path) -> None:
    """Every sample and the figures, as JSON (the schema: the module's docstring)."""
    results = {
        "command": command,
        "requests": sum(report.statuses.values()),
        "report": {
            "clients": report.clients,
            "warmup_requests": report.warmup_requests,
            "rest_every": report.rest_every,
            "wall_s": report.wall_s,
            "load_s": report.load_s,
            # Plain dicts: dataclasses.asdict would rebuild a Counter from (key, value) pairs.
            "statuses": dict(report.statuses),
            "unexpected": dict(report.unexpected),
            "rss_start": report.rss_start,
            "rss_end": report.rss_end,
            "growth": report.growth,
            "slope_fit": "at rest",
            "slope_bytes_per_1000": report.slope_bytes_per_1000,
            "late_slope_bytes_per_1000": report.late_slope_bytes_per_1000,
            "private_slope_bytes_per_1000": report.private_slope_bytes_per_1000,
            "slope_under_load_bytes_per_1000": report.slope_under_load_bytes_per_1000,
        },
        "samples": [asdict(s) for s in report.samples],
        "rest": [asdict(s) for s in report.rests],
    }
    path.write_text(json.dumps(results, indent=1) + "\n")


def plot(report: SoakReport, path: Path, title: str) -> None:
    """The RSS under load and at rest over the requests, warm-up shaded, both fits (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mib = 1024 * 1024
    x = np.array([s.requests for s in report.samples], dtype=np.float64)
    y = np.array([s.rss_bytes for s in report.samples], dtype=np.float64) / mib
    figure, axes = plt.subplots(figsize=(9, 4.8), dpi=110)
    axes.axvspan(0, report.warmup_requests, color="0.9", label="warm-up")
    axes.plot(x, y, lw=0.8, color="tab:blue", alpha=0.7, label="under load (one sample a second)")
    after = x >= report.warmup_requests
    if after.sum() >= 3:
        slope, intercept = np.polyfit(x[after], y[after], 1)
        axes.plot(
            x[after],
            slope * x[after] + intercept,
            color="tab:blue",
            lw=1.0,
            ls=":",
            label=f"fit under load (not judged): {slope * 1000 * 1024:+.1f} KiB / 1,000 requests",
        )
    rests = report.rests_after_warmup()
    rx = np.array([s.requests for s in report.rests], dtype=np.float64)
    ry = np.array([s.rss_bytes for s in report.rests], dtype=np.float64) / mib
    axes.plot(
        rx,
        ry,
        "o-",
        color="tab:green",
        ms=4,
        lw=1.0,
        label="at rest: idle and trimmed"
        + (f", every {report.rest_every:,} requests" if report.rest_every else ""),
    )
    if len(rests) >= 2:
        fx = np.array([s.requests for s in rests], dtype=np.float64)
        fy = np.array([s.rss_bytes for s in rests], dtype=np.float64) / mib
        slope, intercept = np.polyfit(fx, fy, 1)
        axes.plot(
            fx,
            slope * fx + intercept,
            color="tab:red",
            lw=1.4,
            ls="--",
            label=f"fit at rest after warm-up (judged): {slope * 1000 * 1024:+.1f} KiB / 1,000",
        )
    start = report.rss_start / mib
    axes.axhspan(
        start * 0.98,
        start * 1.02,
        color="tab:green",
        alpha=0.10,
        label="±2 % of the RSS at rest after warm-up",
    )
    axes.set_xlabel("requests answered")
    axes.set_ylabel("RSS (MiB)")
    axes.set_title("\n".join(textwrap.wrap(title, 120)), fontsize=8)
    low = min(y[after].min() if after.any() else start, ry.min(), start * 0.98)
    axes.set_ylim(low - 20, max(y.max(), ry.max(), start * 1.02) + 20)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize=7)
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
            "| max under load | growth | slope at rest | slope under load (not judged) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {total:,} ({report.warmup_requests:,} warm-up) | {report.wall_s / 60:.1f} min "
            f"| {report.rss_start / mib:.1f} MiB | {report.rss_end / mib:.1f} MiB "
            f"| {report.rss_max / mib:.1f} MiB | **{100 * report.growth:+.2f} %** "
            f"| **{report.slope_bytes_per_1000 / 1024:+.1f} KiB / 1,000 requests** "
            f"| {report.slope_under_load_bytes_per_1000 / 1024:+.1f} KiB / 1,000 |",
            "",
            "![RSS of the server over the soak](bench/soak.png)",
            "",
            "At rest means: the traffic paused, the server idle (less than "
            f"{IDLE_CPU_S * 1000:g} ms of CPU in {IDLE_WINDOW_S:g} s) and one periodic "
            "collection and trim done since, the last requests before it the same photo "
            "one at a time; it is read after the warm-up, every "
            f"{report.rest_every:,} requests and after the last one, and the judged slope "
            "is the least-squares fit of those points. RSS at rest (MiB): "
            + ", ".join(
                f"{s.requests:,}: {s.rss_bytes / mib:.1f}" for s in report.rests_after_warmup()
            )
            + f"; slope over the second half {report.late_slope_bytes_per_1000 / 1024:+.1f} "
            "KiB / 1,000. Under load (one sample a second) the RSS also holds the "
            "requests in flight; at 0, 25, 50, 75 and 100 % of the requests after the "
            "warm-up: "
            + ", ".join(f"{report.rss_at(q) / mib:.1f}" for q in (0, 0.25, 0.5, 0.75, 1))
            + " MiB. Every sample is in `bench/soak-results.json`.",
            "",
            f"Statuses: {', '.join(f'{k}: {v:,}' for k, v in sorted(report.statuses.items()))}"
            f"{'' if not report.unexpected else f'; unexpected: {dict(report.unexpected)}'}.",
            f"Target: after warm-up the RSS at rest ends within {100 * max_growth:g} % of "
            f"where it started and its slope is under {max_slope_bytes / 1024:g} KiB per "
            f"1,000 requests ({'met' if passed else 'NOT met'}). "
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


def _server_setting(raw: str) -> tuple[str, str]:
    name, equals, value = raw.partition("=")
    if not equals or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {raw!r}")
    return name, value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit 1 when the memory grew or an answer was wrong."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the requests")
    parser.add_argument(
        "--rest-every",
        type=int,
        help="read the RSS at rest every so many requests (default: a tenth of --requests)",
    )
    parser.add_argument(
        "--max-growth", type=float, default=0.02, help="|end - start| / start after warm-up"
    )
    parser.add_argument(
        "--max-slope-kib",
        type=float,
        default=20.0,
        help="KiB per 1,000 requests after warm-up (fitted at rest)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    parser.add_argument("--results", type=Path, help="write the samples here (JSON)")
    parser.add_argument("--plot", type=Path, help="draw the RSS curve here (PNG)")
    parser.add_argument(
        "--smaps", type=Path, help="copy the server's /proc/PID/smaps here at every rest"
    )
    parser.add_argument(
        "--server-env",
        type=_server_setting,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server only (repeatable), e.g. MALLOC_ARENA_MAX=2",
    )
    parser.add_argument(
        "--leak-bytes",
        type=int,
        default=0,
        help="run a deliberately leaking build: each /predict keeps this many bytes",
    )
    parser.add_argument(
        "--untuned",
        action="store_true",
        help="glibc's malloc defaults (no mmap threshold, trim), MXNet's 4 workspaces",
    )
    args = parser.parse_args(argv)
    report = soak(
        args.requests,
        args.clients,
        args.warmup,
        env=dict(args.server_env),
        leak_bytes=args.leak_bytes,
        untuned=args.untuned,
        rest_every=args.rest_every,
        smaps_dir=args.smaps,
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
