"""`make bench-compare`: predictor against the model servers of its field and a naive server.

One run, one machine, the same checkpoint and the same JPEGs for everyone:

1. ``offline``: the limit, as in `make bench`: decode + preprocess + forward
   in one process without HTTP, at several batch sizes, serially and with
   decoding overlapped; the best rate is the limit.
2. ``predictor``: `predictor serve` with ``BATCH_MAX_SIZE`` = the best
   offline batch and ``BATCH_MAX_DELAY_MS=5`` (and its default
   ``BATCH_BACKLOG_DELAY_MS``, the longer wait under a backlog). The limit
   is measured again just before and just after its levels under each load
   generator, and its efficiency (throughput / limit) is judged against
   those: over a whole run this shared machine's speed drifts by more than
   the target's margin.
3. ``naive``: `bench.naive_server`, one synchronous forward per request.
4. The peers, each in its own venv under ``bench/.work``, started and stopped
   by the benchmark, each with its own batching at the same batch size (and
   the same delay where it has that setting) and one model replica per CPU
   core: ``mms`` (MXNet Model Server 1.1.11, `bench.mms`), ``torchserve``
   (TorchServe 0.12, `bench.torchserve`), ``bentoml`` (BentoML 1.4 adaptive
   batching, `bench.bentoml_peer`) and ``rayserve`` (Ray Serve 2.60
   ``@serve.batch``, `bench.rayserve`).

Every peer is measured in two views (`bench.peer_handler`): ``same_handler``,
where its handler calls predictor's own decoding and post-processing, so only
the serving machinery differs; and ``as_deployed``, where its handler decodes
and resizes as the peer's own object-detection example does (full-size
decoding), as a user of that server would write it. The naive server exists
in the same-handler view only. predictor's rows are ``as_deployed`` (it is
deployed with its own decoding, which is also the same-handler view's, so
its rows are the reference of both); the offline rows are ``same_handler``
(predictor's handler without a server: the ceiling of that view).
`parse_contenders` reads ``--contenders`` (``mms`` = both views,
``mms:as_deployed`` = one).

Each server runs alone in a child process on loopback and is driven by
closed-loop clients from this process (`bench.loadgen`) at concurrency 1, 4,
16 and 64, with a fixed request count and a time bound per level, after a
warm-up. Models: the shipped SSD 300, and GluonCV's ``ssd_512_resnet50_v1``
(COCO, exported with ``--random-init``: the same compute as the trained one).
With ``--int8`` the shipped model is also served and measured offline as a
``predictor quantize`` checkpoint (rows with ``dtype`` int8).

predictor is also driven by NVIDIA's perf_analyzer (`bench.perf_analyzer_load`)
on its v2 endpoint, right after `bench.loadgen`'s levels in the same server
process: a second load generator whose C++ clients take less of the two cores.
The peers do not speak the Open Inference Protocol, so only predictor has
those rows; every row says which generator made it (``load_generator``).

Writes ``bench/compare.json`` (one row per model, contender, view, dtype,
concurrency and load generator), ``bench/compare.png`` and the section of
``BENCHMARKS.md`` between its markers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.bench_server import (
    LIMIT_SECONDS,
    machine,
    measure_offline,
    passes_lasting,
    write_markdown,
)
from bench.bentoml_peer import BentoMLServer
from bench.loadgen import LoadResult, drive
from bench.mms import ModelServer
from bench.offline_limit import measure_offline_with_threads
from bench.peer_handler import VIEWS
from bench.peer_venv import PeerServer
from bench.perf_analyzer_load import PerfAnalyzerError, PerfAnalyzerResult, run_level
from bench.perf_analyzer_load import available as perf_analyzer_available
from bench.perf_analyzer_load import write_input_data as write_perf_analyzer_data
from bench.plain_model import MODEL_CODES
from bench.rayserve import RayServe
from bench.torchserve import TorchServe
from predictor.config import SHIPPED_COCO_PREFIX, SHIPPED_MODEL_EDGE, SHIPPED_MODEL_PREFIX
from tests.support.photos import make_photos
from tests.support.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / ".work"
MARK_START = "<!-- bench_compare:start -->"
MARK_END = "<!-- bench_compare:end -->"
PEERS: dict[str, type[PeerServer]] = {
    "mms": ModelServer,
    "torchserve": TorchServe,
    "bentoml": BentoMLServer,
    "rayserve": RayServe,
}
CONTENDERS = ("predictor", "naive", *PEERS)
# The one view of the contenders that are not peers (see the module's docstring).
OWN_VIEW = {"predictor": "as_deployed", "naive": "same_handler", "offline": "same_handler"}
BATCH_DELAY_MS = 5
# Which load generator made a row: ours (every contender) or perf_analyzer (predictor's v2).
LOADGEN = "bench.loadgen"
PERF_ANALYZER = "perf_analyzer"
# predictor's model name on the v2 route, for perf_analyzer.
V2_MODEL_NAME = "bench"
RESNET_PREFIX = WORK / "resnet50" / "resnet50_ssd_model"
INT8_PREFIX = WORK / "int8" / "ssd300_digits_shapes-int8"


@dataclass(frozen=True)
class Contender:
    """One server of the comparison in one view (`bench.peer_handler.VIEWS`)."""

    name: str
    view: str

    def __str__(self) -> str:
        return self.name if OWN_VIEW.get(self.name) == self.view else f"{self.name}:{self.view}"


def parse_contenders(text: str) -> tuple[Contender, ...]:
    """``--contenders``: comma-separated names, each with an optional ``:VIEW`` (a peer: both).

    Raises `ValueError` naming what is accepted for an unknown name or view.
    """
    chosen: list[Contender] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, view = item.partition(":")
        if name not in CONTENDERS:
            raise ValueError(f"contender {name!r}: expected one of {', '.join(CONTENDERS)}")
        allowed = (OWN_VIEW[name],) if name in OWN_VIEW else VIEWS
        if view and view not in allowed:
            raise ValueError(f"{name} has no view {view!r}: {', '.join(allowed)}")
        for one in (view,) if view else allowed:
            if Contender(name, one) not in chosen:
                chosen.append(Contender(name, one))
    if not chosen:
        raise ValueError("no contender given")
    return tuple(chosen)


@dataclass(frozen=True)
class ModelCase:
    """One model of the comparison and how hard to load it."""

    name: str
    prefix: Path
    edge: int
    levels: dict[int, int]  # concurrency -> request count
    time_limit_s: float  # per level
    warmup_requests: int
    offline_batches: tuple[int, ...]
    offline_photos: int
    offline_repeats: int
    offline_confirm: int  # passes re-measuring the best offline configuration
    # Passes over all contenders, each in a rotated order; a contender's runs at
    # one level are pooled, so that a slow stretch of a shared machine does not
    # fall on one contender only.
    rounds: int = 1
    # MODEL_CPU_THREADS for predictor and its offline limit; None: MXNet's default.
    cpu_threads: int | None = None
    # MODEL_CPU_REPLICAS for predictor's servers and its offline limit (each replica on a
    # thread of its own, as in the server).
    cpu_replicas: int = 1
    # MODEL_ENGINE for predictor and its offline limit.
    engine: str = "mxnet"
    # How long each measurement of the limit around predictor's levels lasts, about: as
    # long as a level, so that the efficiency's denominator is no noisier than its
    # numerator. 0: the scan's confirmation passes only (``offline_confirm``).
    limit_seconds: float = LIMIT_SECONDS


SMALL = ModelCase(
    name="ssd300_digits_shapes",
    prefix=ROOT / SHIPPED_MODEL_PREFIX,
    edge=SHIPPED_MODEL_EDGE,
    levels={1: 150, 4: 300, 16: 600, 64: 900},
    time_limit_s=40.0,
    warmup_requests=40,
    offline_batches=(1, 2, 4, 8),
    offline_photos=24,
    offline_repeats=2,
    offline_confirm=8,
    rounds=2,
    # With its crop verifier the forward pass is more than half the work per image, so one
    # forward thread leaves the decoding core idle part of the time: one replica per core,
    # each on one thread, as the peers run one worker per core. Measured 2026-11-30 on
    # 2 cores at 16 clients, 3 rounds alternating (req/s): batch 2 39.2 (40.1, 37.3, 40.1)
    # against 35.7 (38.4, 34.1, 34.7) with one replica; batch 4 40.2 against 39.7; the
    # server's CPU 92 % of both cores against 86 % (/tmp scratch scripts). With OpenVINO
    # running the convolutional trunk, the same setting served 54.4 and 59.6 req/s against
    # 45.9 and 45.3 on MXNet (2026-11-30, 16 clients, two rounds in rotated order).
    cpu_threads=1,
    cpu_replicas=os.cpu_count() or 1,
    engine="openvino",
)
RESNET = ModelCase(
    name="ssd_512_resnet50_v1_coco",
    prefix=RESNET_PREFIX,
    edge=512,
    levels={1: 8, 4: 16, 16: 32, 64: 64},
    time_limit_s=120.0,
    warmup_requests=4,
    offline_batches=(1, 2, 4),
    offline_photos=6,
    offline_repeats=1,
    offline_confirm=2,
    rounds=2,
    # Its forward pass is 97 % of the work. On MXNet alone one replica on every core served it
    # best (two replicas of one thread: 1.6-1.8 req/s against 2.6); with OpenVINO running the
    # convolutional trunk, one replica per core on one thread each does. Measured 2026-11-30 on
    # 2 cores at 16 clients, batch 2, two rounds in rotated order (req/s): openvino, 2 replicas
    # x 1 thread 4.52 and 4.24; openvino, 1 x 2 3.75 and 4.10; mxnet, 1 x 2 4.03 and 3.39.
    cpu_threads=1,
    cpu_replicas=os.cpu_count() or 1,
    engine="openvino",
)


COCO = ModelCase(
    name="coco_nanodet",
    prefix=ROOT / SHIPPED_COCO_PREFIX,
    edge=416,
    levels={1: 40, 4: 80, 16: 160, 64: 240},
    time_limit_s=60.0,
    warmup_requests=8,
    offline_batches=(1, 2, 4),
    offline_photos=12,
    offline_repeats=1,
    offline_confirm=3,
    rounds=2,
    # Its forward pass is most of the work (about 50 ms of 70 per image with the load-time
    # rewrites): one replica per core, each on one thread. Measured 2026-11-30 on 2 cores at
    # 16 clients, batch 2, two rounds: 19.1 and 18.9 req/s so, against 16.7 and 15.9 with
    # one replica on both cores, 16.6 and 17.6 with two replicas on both cores each, 13.7
    # and 14.4 with one replica on one core (one replica on both cores answers one client
    # fastest: 13.0 and 11.5 req/s against 9.9 and 9.4). With OpenVINO running the trunk,
    # the same setting: 24.0 and 21.7 req/s against 15.0 and 15.5 on MXNet (2026-11-30,
    # /tmp scratch, two rounds).
    cpu_threads=1,
    cpu_replicas=os.cpu_count() or 1,
    engine="openvino",
)


class NaiveServer:
    """`bench.naive_server` in a child process on a loopback port."""

    _LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+)/predict")

    def __init__(self, prefix: Path, edge: int, model_code: str) -> None:
        command = [sys.executable, "-m", "bench.naive_server", "--model", str(prefix)]
        command += ["--model-code", model_code]
        self.process = subprocess.Popen(
            [*command, "--edge", str(edge)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port: int | None = None
        self.log: list[str] = []
        ready = threading.Event()

        def read() -> None:
            assert self.process.stderr is not None
            for line in self.process.stderr:
                self.log.append(line)
                match = self._LISTENING.search(line)
                if match and self.port is None:
                    self.port = int(match.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(600) or self.port is None:
            self.stop()
            raise RuntimeError("the naive server did not start:\n" + "".join(self.log))

    @property
    def url(self) -> str:
        """Its detection endpoint."""
        return f"http://127.0.0.1:{self.port}/predict"

    def stop(self) -> None:
        """Terminate it and wait."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass(frozen=True)
class Endpoint:
    """Where a contender takes JPEGs: its URL, and the multipart field if it takes uploads."""

    url: str
    form_field: str | None = None
    v2_port: int | None = None
    """The loopback port of an Open Inference Protocol route (predictor only)."""


@contextmanager
def contender(
    who: Contender, case: ModelCase, prefix: Path, batch: int, dtype: str, model_code: str
) -> Iterator[Endpoint]:
    """Start one contender's server; yield its endpoint; always stop it."""
    name = who.name
    if name == "predictor":
        env = {
            "MODEL_PREFIX": str(prefix),
            "MODEL_EDGE": str(case.edge),
            "MODEL_DTYPE": dtype,
            "BATCH_MAX_SIZE": str(batch),
            "BATCH_MAX_DELAY_MS": str(BATCH_DELAY_MS),
            # Nothing may be refused or timed out: every contender answers everything.
            "QUEUE_MAX": "1024",
            "REQUEST_TIMEOUT_MS": "3600000",
            "MODEL_NAME": V2_MODEL_NAME,
        }
        if case.cpu_threads is not None:
            env["MODEL_CPU_THREADS"] = str(case.cpu_threads)
        if case.cpu_replicas > 1:
            env["MODEL_CPU_REPLICAS"] = str(case.cpu_replicas)
        if case.engine != "mxnet":
            env["MODEL_ENGINE"] = case.engine
        with ServerProcess(env) as server:
            yield Endpoint(server.url + "/predict", v2_port=server.port)
    elif name == "naive":
        naive = NaiveServer(prefix, case.edge, model_code)
        try:
            yield Endpoint(naive.url)
        finally:
            naive.stop()
    elif name in PEERS:
        peer = PEERS[name](
            prefix, case.edge, batch, BATCH_DELAY_MS, view=who.view, model_code=model_code
        )
        with peer:
            yield Endpoint(peer.url, peer.form_field)
        if peer.leftovers:
            print(f"  {who}: processes left running: {peer.leftovers}", file=sys.stderr)
    else:
        raise ValueError(name)


def run_levels(
    endpoint: Endpoint, bodies: list[bytes], case: ModelCase, label: str
) -> list[LoadResult]:
    """Warm up, then one closed-loop run per concurrency level."""
    timeout_s = case.time_limit_s * 4
    url, field = endpoint.url, endpoint.form_field
    asyncio.run(drive(url, bodies, 4, case.warmup_requests, case.time_limit_s, timeout_s, field))
    results = []
    for concurrency, requests in case.levels.items():
        result = asyncio.run(
            drive(url, bodies, concurrency, requests, case.time_limit_s, timeout_s, field)
        )
        failed = {status: n for status, n in result.statuses.items() if status != 200}
        print(
            f"  {label:>30} c={concurrency:3d}: {result.throughput_rps:6.2f} req/s, "
            f"p50 {result.percentile_ms(50):8.1f} ms, p99 {result.percentile_ms(99):8.1f} ms, "
            f"{sum(result.statuses.values())} requests, "
            f"load generator CPU {result.cpu_share:.1%}"
            + (f", non-200: {failed}" if failed else ""),
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    return results


def perf_analyzer_levels(
    endpoint: Endpoint, input_data: Path, case: ModelCase, label: str
) -> list[PerfAnalyzerResult]:
    """perf_analyzer at every concurrency level on a running predictor's v2 route."""
    assert endpoint.v2_port is not None, "only predictor has a v2 route"
    results = []
    for concurrency, requests in case.levels.items():
        result = run_level(
            endpoint.v2_port,
            V2_MODEL_NAME,
            input_data,
            concurrency,
            requests,
            case.time_limit_s * 6,
        )
        print(
            f"  {label + ' (perf_analyzer)':>30} c={concurrency:3d}: "
            f"{result.throughput_rps:6.2f} req/s, p50 {result.p50_ms:8.1f} ms, "
            f"p99 {result.p99_ms:8.1f} ms, {result.requests} requests, "
            f"load generator CPU {result.cpu_share:.1%}",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    return results


def perf_analyzer_rows(
    case: ModelCase, dtype: str, runs: list[list[PerfAnalyzerResult]]
) -> list[dict[str, Any]]:
    """predictor's rows as perf_analyzer measured them: each figure the mean over rounds."""
    rows = []
    for level in zip(*runs, strict=True):
        rows.append(
            {
                "model": case.name,
                "contender": "predictor",
                "view": OWN_VIEW["predictor"],
                "dtype": dtype,
                "concurrency": level[0].concurrency,
                "throughput_rps": round(sum(r.throughput_rps for r in level) / len(level), 3),
                "p50_ms": round(sum(r.p50_ms for r in level) / len(level), 1),
                "p99_ms": round(sum(r.p99_ms for r in level) / len(level), 1),
                "load_generator": PERF_ANALYZER,
                "loadgen_cpu_share": round(sum(r.cpu_share for r in level) / len(level), 3),
            }
        )
    return rows


def rows_for(
    case: ModelCase, who: Contender, dtype: str, results: list[LoadResult]
) -> list[dict[str, Any]]:
    """compare.json rows of one contender in one view."""
    return [
        {
            "model": case.name,
            "contender": who.name,
            "view": who.view,
            "dtype": dtype,
            "concurrency": r.concurrency,
            "throughput_rps": round(r.throughput_rps, 3),
            "p50_ms": round(r.percentile_ms(50), 1),
            "p99_ms": round(r.percentile_ms(99), 1),
            "load_generator": LOADGEN,
            # The load generator's own CPU, as a share of the machine's: not the server's.
            "loadgen_cpu_share": round(r.cpu_share, 3),
        }
        for r in results
    ]


def offline_rows(case: ModelCase, dtype: str, offline: dict[str, Any]) -> list[dict[str, Any]]:
    """The offline limit as rows: the same rate at every level, p50 = one image alone."""
    return [
        {
            "model": case.name,
            "contender": "offline",
            "view": OWN_VIEW["offline"],
            "dtype": dtype,
            "concurrency": concurrency,
            "throughput_rps": round(offline["limit_rps"], 3),
            "p50_ms": round(offline["single_image_ms"], 1),
            "p99_ms": None,
            "load_generator": None,
            "loadgen_cpu_share": None,
        }
        for concurrency in case.levels
    ]


def rotated(items: list[Any], round_index: int) -> list[Any]:
    """``items`` in the order they run in this round: each round starts one later.

    Both the contenders and predictor's two load generators are rotated: what
    runs later meets a machine (and, for the generators, a server that has
    already served thousands of requests, after a limit measurement) in
    another state, and in one fixed order that would always fall on the same
    one.
    """
    shift = round_index % len(items)
    return items[shift:] + items[:shift]


def measure_case(
    case: ModelCase,
    prefix: Path,
    dtype: str,
    files: list[Path],
    contenders: tuple[Contender, ...],
    details: dict[str, Any],
    baseline_model: str,
    perf_data: Path | None = None,
) -> list[dict[str, Any]]:
    """Offline limit, then each contender's server under load.

    With ``perf_data`` (perf_analyzer's input file), predictor is driven by
    perf_analyzer too, in the same server process; which generator goes first
    alternates by round (``rotated``).
    """
    print(f"{case.name} ({dtype}): offline limit ...", file=sys.stderr, flush=True)

    def limit(batches: tuple[int, ...], confirm: int = case.offline_confirm) -> dict[str, Any]:
        """The offline limit over ``batches``, with this case's forward-pass threads; the
        best configuration confirmed over ``confirm`` passes."""
        settings: dict[str, Any] = {
            "prefix": prefix,
            "edge": case.edge,
            "files": files[: case.offline_photos],
            "workers": os.cpu_count() or 1,
            "repeats": case.offline_repeats,
            "batches": batches,
            "dtype": dtype,
            "confirm_repeats": confirm,
            "engine": case.engine,
            "replicas": case.cpu_replicas,
        }
        if case.cpu_threads is None:
            return measure_offline(**settings)
        return measure_offline_with_threads(case.cpu_threads, **settings)

    offline = limit(case.offline_batches)
    print(
        f"  limit {offline['limit_rps']:.2f} images/s ({offline['limit_mode']}), "
        f"single image {offline['single_image_ms']:.1f} ms",
        file=sys.stderr,
        flush=True,
    )
    details[f"{case.name}/{dtype}"] = {
        "offline": offline,
        "batch": offline["best_batch"],
        "levels": case.levels,
        "time_limit_s": case.time_limit_s,
        "rounds": case.rounds,
        "cpu_threads": case.cpu_threads,
        "cpu_replicas": case.cpu_replicas,
        "engine": case.engine,
    }
    bodies = [path.read_bytes() for path in files]
    runs: dict[Contender, list[list[LoadResult]]] = {who: [] for who in contenders}
    perf_runs: list[list[PerfAnalyzerResult]] = []
    # predictor's efficiency is set against the limit measured just before and
    # just after its own levels, per load generator and round: over the whole
    # run this shared machine's speed drifts by more than the target's margin.
    around: dict[str, list[list[float]]] = {LOADGEN: [], PERF_ANALYZER: []}

    photos = len(files[: case.offline_photos])
    around_passes = passes_lasting(
        case.limit_seconds, photos, offline["limit_rps"], case.offline_confirm
    )
    details[f"{case.name}/{dtype}"]["limit_passes_around"] = around_passes

    def best_limit(when: str) -> float:
        """The limit's best configuration (mode and batch) measured again, now."""
        rate = float(limit((offline["best_batch"],), around_passes)["limit_rps"])
        print(f"  limit {when} {rate:.2f} images/s", file=sys.stderr, flush=True)
        return rate

    for round_index in range(case.rounds):
        for who in rotated(list(contenders), round_index):
            batch = offline["best_batch"]
            label = f"{who} {dtype}"
            with contender(who, case, prefix, batch, dtype, baseline_model) as endpoint:
                if who.name != "predictor":
                    runs[who].append(run_levels(endpoint, bodies, case, label))
                    continue
                generators = [LOADGEN] if perf_data is None else [LOADGEN, PERF_ANALYZER]
                limits = [best_limit("before predictor's levels")]
                for generator in rotated(generators, round_index):
                    if generator == LOADGEN:
                        runs[who].append(run_levels(endpoint, bodies, case, label))
                    else:
                        assert perf_data is not None
                        try:
                            perf_runs.append(perf_analyzer_levels(endpoint, perf_data, case, label))
                        except PerfAnalyzerError as exc:
                            # Hours of other figures are not thrown away for it: reported instead.
                            print(f"  perf_analyzer failed: {exc}", file=sys.stderr, flush=True)
                            details[f"{case.name}/{dtype}"]["perf_analyzer_error"] = str(exc)[-500:]
                            perf_data = None
                            continue
                    limits.append(best_limit(f"after {generator}'s levels"))
                    around[generator].append(limits[-2:])
    details[f"{case.name}/{dtype}"]["limits_around_predictor"] = {
        generator: limits for generator, limits in around.items() if limits
    }
    # This shared machine's speed drifts over the contenders' runs: the limit's
    # configuration is measured again after them, and the limit is the mean of both.
    offline["limit_before_rps"] = offline["limit_rps"]
    offline["limit_after_rps"] = best_limit("after the servers' runs")
    offline["limit_rps"] = (offline["limit_before_rps"] + offline["limit_after_rps"]) / 2
    rows = offline_rows(case, dtype, offline)
    for who in contenders:
        results = [LoadResult.pooled(level_runs) for level_runs in zip(*runs[who], strict=True)]
        rows += rows_for(case, who, dtype, results)
        details[f"{case.name}/{dtype}"][str(who)] = {
            str(r.concurrency): {"requests": sum(r.statuses.values()), "statuses": r.statuses}
            for r in results
        }
    if perf_runs:
        rows += perf_analyzer_rows(case, dtype, perf_runs)
    return rows


def ensure_resnet() -> None:
    """Export the random-init ResNet-50 SSD once (GluonCV builds it; nothing is downloaded)."""
    if Path(f"{RESNET_PREFIX}-symbol.json").is_file():
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "export",
            "--zoo",
            "ssd_512_resnet50_v1_coco",
            "--random-init",
            "--out",
            str(RESNET_PREFIX),
        ],
        check=True,
        cwd=ROOT,
    )


def ensure_int8(calib: Path, images: int) -> None:
    """Quantize the shipped model into bench/.work (`predictor quantize`), every run:
    the checkpoint may have changed since the last one."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "predictor",
            "quantize",
            "--model",
            str(SMALL.prefix),
            "--calib",
            str(calib),
            "--out",
            str(INT8_PREFIX),
            "--images",
            str(images),
            "--edge",
            str(SMALL.edge),
        ],
        check=True,
        cwd=ROOT,
    )


# ------------------------------------------------------------------ output

VIEW_TITLES = {
    "same_handler": "Same handler: every contender decodes and post-processes with predictor's "
    "code, so only the serving machinery differs",
    "as_deployed": "As deployed: each peer decodes and resizes as its own object-detection "
    "example does (full-size decoding), predictor as it ships",
}


def find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The row with these fields, if measured."""
    for row in rows:
        if all(row.get(key) == value for key, value in match.items()):
            return row
    return None


def row_label(row: dict[str, Any]) -> str:
    """A contender's name in a table: the view is added for a peer's rows."""
    who = str(row["contender"])
    return who if who in OWN_VIEW else f"{who} ({row['view'].replace('_', ' ')})"


def by_our_load_generator(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows every contender has: those `bench.loadgen` measured, and the offline limit."""
    return [r for r in rows if r.get("load_generator") != PERF_ANALYZER]


def verdicts(all_rows: list[dict[str, Any]], details: dict[str, Any] | None = None) -> list[str]:
    """The issue's targets, each with the measured figures and met / NOT met.

    ``details`` (per "MODEL/DTYPE") holds the limits measured around predictor's
    levels, where a run measured them: its efficiency is judged against those.
    """
    lines = []
    rows = by_our_load_generator(all_rows)

    def at(model: str, who: str, concurrency: int, view: str = "") -> dict[str, Any] | None:
        view = view or OWN_VIEW.get(who, "same_handler")
        return find(
            rows, model=model, contender=who, view=view, dtype="float32", concurrency=concurrency
        )

    for case in (SMALL, COCO, RESNET):
        lines.extend(_peer_targets(rows, case.name))
        lines.extend(_bfloat16_against_peers(rows, case.name))
        ours1, naive1 = at(case.name, "predictor", 1), at(case.name, "naive", 1)
        if ours1 and naive1 and naive1["p99_ms"] > 0:
            ratio = ours1["p99_ms"] / naive1["p99_ms"]
            lines.append(
                f"- {case.name}, 1 client: p99 predictor {ours1['p99_ms']:.0f} ms, naive "
                f"{naive1['p99_ms']:.0f} ms (**{ratio:.2f}x**); target <= 1.2x: "
                f"{'met' if ratio <= 1.2 else 'NOT met'}."
            )
    for case in (SMALL, COCO, RESNET):
        mine = [r for r in rows if r["model"] == case.name and r["dtype"] == "float32"]
        ours16 = at(case.name, "predictor", 16)
        ratios = [
            f"{row_label(other)} {ours16['throughput_rps'] / other['throughput_rps']:.2f}x"
            for other in mine
            if ours16
            and other["concurrency"] == 16
            and other["contender"] in PEERS
            and other["throughput_rps"] > 0
        ]
        if ours16 and ratios:
            lines.append(
                f"- {case.name}, concurrency 16: predictor's throughput against each peer: "
                + ", ".join(ratios)
                + "."
            )
        beaten = []
        for other in mine:
            ours_row = at(case.name, "predictor", other["concurrency"])
            if ours_row is None or other["contender"] in ("predictor", "offline"):
                continue
            if other["throughput_rps"] > ours_row["throughput_rps"]:
                beaten.append(
                    f"{row_label(other)} at concurrency {other['concurrency']} "
                    f"({other['throughput_rps']:.2f} vs {ours_row['throughput_rps']:.2f})"
                )
        if mine:
            lines.append(
                f"- {case.name}: no contender faster than predictor at any concurrency: "
                + ("met." if not beaten else "NOT met: " + ", ".join(beaten) + ".")
            )
        lines.extend(_efficiency_targets(all_rows, case.name, details or {}))
    return lines


def _limit_bracket(offline: dict[str, Any]) -> str:
    """``; the mean of B before the servers' runs and A after them``, when both were measured."""
    if "limit_after_rps" not in offline:
        return ""  # measured before the limit was measured twice
    return (
        f"; the mean of {offline['limit_before_rps']:.2f} measured before the servers' runs "
        f"and {offline['limit_after_rps']:.2f} after them"
    )


def _efficiency_targets(
    rows: list[dict[str, Any]], model: str, details: dict[str, Any]
) -> list[str]:
    """predictor's throughput over the offline limit at 16 and 64 clients: per dtype and
    load generator, with the share of the machine the load generator itself took.

    The limit is the mean of those measured just before and after predictor's
    levels under that load generator (every round's), where the run measured
    them; else the run's limit (before and after all the servers).
    """
    lines = []
    for dtype in sorted({r["dtype"] for r in rows if r["model"] == model}, reverse=True):
        run_limit = find(rows, model=model, contender="offline", dtype=dtype)
        detail = details.get(f"{model}/{dtype}", {})
        around = detail.get("limits_around_predictor", {})
        passes = detail.get("limit_passes_around")
        each = "" if passes is None else f", each over {passes} passes of the photos"
        for generator in (LOADGEN, PERF_ANALYZER):
            measured = [rate for pair in around.get(generator, []) for rate in pair]
            if measured:
                limit_rps = sum(measured) / len(measured)
                rates = " / ".join(f"{r:.1f}" for r in measured)
                which = f"the limit around its levels{each}, {rates}"
            elif run_limit is not None:
                limit_rps, which = run_limit["throughput_rps"], "offline limit"
            else:
                continue
            for clients in (16, 64):
                ours = find(
                    rows,
                    model=model,
                    contender="predictor",
                    dtype=dtype,
                    concurrency=clients,
                    load_generator=generator,
                )
                if ours is None:
                    continue
                efficiency = ours["throughput_rps"] / limit_rps
                share = ours.get("loadgen_cpu_share")
                took = "" if share is None else f"; the load generator took {share:.1%} of the CPU"
                lines.append(
                    f"- {model} {dtype}, {clients} clients, driven by {generator}: efficiency "
                    f"(predictor / {which}) **{efficiency:.2f}**{took}; target >= 0.9: "
                    f"{'met' if efficiency >= 0.9 else 'NOT met'}."
                )
    return lines


# Issue 17's targets at 16 clients: predictor's throughput against the best peer, per view.
PEER_TARGETS = {"as_deployed": 1.5, "same_handler": 1.2}


def _peers_at_16(rows: list[dict[str, Any]], model: str, view: str) -> list[dict[str, Any]]:
    """The peers' float32 rows at 16 clients in ``view`` (bench.loadgen's)."""
    return [
        row
        for row in rows
        if row["model"] == model
        and row["dtype"] == "float32"
        and row["concurrency"] == 16
        and row["contender"] in PEERS
        and row["view"] == view
        and row["throughput_rps"] > 0
    ]


def _peer_targets(rows: list[dict[str, Any]], model: str) -> list[str]:
    """At 16 clients, per view: predictor against the best peer measured, and the lowest p99."""
    ours = find(
        rows,
        model=model,
        contender="predictor",
        view="as_deployed",
        dtype="float32",
        concurrency=16,
    )
    lines = []
    for view, target in PEER_TARGETS.items():
        peers = _peers_at_16(rows, model, view)
        if ours is None or not peers:
            continue
        best = max(peers, key=lambda row: row["throughput_rps"])
        ratio = ours["throughput_rps"] / best["throughput_rps"]
        lowest_p99 = min(row["p99_ms"] for row in peers)
        measured = ", ".join(sorted(str(row["contender"]) for row in peers))
        lines.append(
            f"- {model}, 16 clients, {view.replace('_', ' ')} (peers measured: {measured}): "
            f"predictor {ours['throughput_rps']:.1f} req/s = **{ratio:.2f}x** the best, "
            f"{row_label(best)} {best['throughput_rps']:.1f}; target >= {target}x: "
            f"{'met' if ratio >= target else 'NOT met'}. p99 {ours['p99_ms']:.0f} ms against "
            f"the peers' lowest {lowest_p99:.0f}: "
            f"{'lowest' if ours['p99_ms'] <= lowest_p99 else 'NOT the lowest'}."
        )
    return lines


def _bfloat16_against_peers(rows: list[dict[str, Any]], model: str) -> list[str]:
    """predictor in bfloat16 against the best float32 peer at 16 clients, per view: reported
    beside the targets, not as one of them (the peers compute in float32)."""
    ours = find(rows, model=model, contender="predictor", dtype="bfloat16", concurrency=16)
    lines = []
    for view in PEER_TARGETS:
        peers = _peers_at_16(rows, model, view)
        if ours is None or not peers:
            continue
        best = max(peers, key=lambda row: row["throughput_rps"])
        ratio = ours["throughput_rps"] / best["throughput_rps"]
        lines.append(
            f"- {model}, 16 clients, {view.replace('_', ' ')}, predictor in **bfloat16** "
            f"against float32 peers (other numerics: beside the targets, not one of them): "
            f"{ours['throughput_rps']:.1f} req/s = **{ratio:.2f}x** "
            f"{row_label(best)} {best['throughput_rps']:.1f}; p99 {ours['p99_ms']:.0f} ms against "
            f"the peers' lowest {min(row['p99_ms'] for row in peers):.0f}."
        )
    return lines


def peer_versions() -> str:
    """The peers' releases, as pinned for their venvs: "MMS 1.1.11, TorchServe 0.12.0, ..."."""
    names = {
        "mms": "MMS",
        "torchserve": "TorchServe",
        "bentoml": "BentoML",
        "rayserve": "Ray Serve",
    }
    return ", ".join(
        f"{names[name]} {server.venv.packages[0].split('==')[1]}" for name, server in PEERS.items()
    )


def method_text(meta: dict[str, Any]) -> str:
    """The set-up paragraph of the section: what ran, how, with which settings."""
    model_code = (
        "The naive server and the peers run the checkpoint as MXNet's documentation shows "
        "(`bench/plain_model.py`: `SymbolBlock.imports`, hybridized with static memory), "
        "predictor with its load-time graph rewrites (`predictor/runtime/graph.py`). "
        if meta["baseline_model"] == "plain"
        else "The naive server and the peers run the checkpoint through predictor's own model "
        "code, graph rewrites included. "
    )
    return (
        f"Every contender gets the same {meta['photos']} JPEGs, from 640x480 to 4000x3000; "
        "closed-loop clients in the benchmark's own process, each server alone in its own "
        "process (tree) on loopback, after a warm-up. predictor and the peers batch up to the "
        f"best offline batch size: predictor, MMS and TorchServe wait at most {BATCH_DELAY_MS} ms "
        "for a batch (predictor up to its default `BATCH_BACKLOG_DELAY_MS`, 50 ms, while a "
        "whole further batch is admitted and decoding, a wait the peers have no setting for), "
        f"Ray Serve's `@serve.batch` {BATCH_DELAY_MS} ms (`batch_wait_timeout_s`), "
        "BentoML's adaptive batcher decides its own wait (it has no delay setting). Peers "
        f"({peer_versions()}) each run in their own venv under `bench/.work`, started and "
        f"stopped by the benchmark, with {os.cpu_count() or 1} model replicas (one per core: "
        "MMS's and TorchServe's default workers, BentoML's `workers` and Ray Serve's "
        "`num_replicas`); MMS and TorchServe run `bench/model_server_handler.py`, BentoML "
        "`bench/bentoml_service.py` (files uploaded as multipart/form-data, as its image APIs "
        "take them), Ray Serve `bench/rayserve_app.py`. The naive server runs one synchronous "
        "forward per request (`bench/naive_server.py`). Two views of every peer "
        "(`bench/peer_handler.py`): **same handler**, where it calls predictor's decoding and "
        "post-processing; **as deployed**, where it decodes at full size and resizes with the "
        "library of its own object-detection example (MMS: `mx.image.imdecode` + "
        "`mx.image.imresize`; TorchServe and Ray Serve: `PIL.Image.open` + bilinear resize; "
        "BentoML: `cv2.imdecode` + `cv2.resize`). "
        + model_code
        + "Offline: predictor's decode + forward without HTTP, the best of batch sizes and "
        "serial or overlapped decoding, that best re-measured on its own (p50 there = one "
        "image alone)."
    )


def _threads_reason(detail: dict[str, Any]) -> str:
    """Why predictor ran with the forward-pass threads ``detail`` records."""
    if detail.get("cpu_replicas", 1) > 1:
        return "one core per forward pass, one replica per core"
    return "every core: its documented setting for a forward-bound network"


def render_section(
    all_rows: list[dict[str, Any]], details: dict[str, Any], meta: dict[str, Any]
) -> str:
    """The BENCHMARKS.md section: set-up, one table per model and view, the targets."""
    rows = by_our_load_generator(all_rows)
    lines = [
        "## Side by side: predictor, the model servers of its field, a naive server, "
        "the offline limit",
        "",
        method_text(meta),
        "",
        "![throughput and latency vs concurrency](bench/compare.png)",
        "",
    ]
    for key, detail in details.items():
        model, dtype = key.split("/")
        when = detail.get("measured")
        lines += [
            f"### {model}, {dtype}",
            "",
            (
                f"Measured {when['date']} with `{when['command']}` on {when['machine']}. "
                if when
                else ""
            )
            + f"Offline limit **{detail['offline']['limit_rps']:.2f} images/s** "
            f"({detail['offline']['limit_mode']}{_limit_bracket(detail['offline'])}); "
            "batch size for the servers: "
            f"{detail['batch']}; per level at most {detail['time_limit_s']:g} s"
            + (
                f"; {detail['rounds']} rounds over the contenders in rotated order, "
                "each contender's runs at a level pooled (requests and times added)."
                if detail.get("rounds", 1) > 1
                else "."
            )
            + (
                f" predictor and its offline limit run with "
                f"`MODEL_CPU_THREADS={detail['cpu_threads']}` ({_threads_reason(detail)}); "
                "the naive server and the peers run MXNet's default threads, as they do out "
                "of the box."
                if detail.get("cpu_threads")
                else ""
            )
            + (
                f" predictor's server runs `MODEL_CPU_REPLICAS={detail['cpu_replicas']}` (one "
                "replica per core, as the peers run one worker per core)"
                + (
                    ", and so does its offline limit (each replica on a thread of its own)."
                    if detail["offline"].get("replicas", 1) == detail["cpu_replicas"]
                    else "; the offline limit is one replica's, so the efficiency can exceed 1."
                )
                if detail.get("cpu_replicas", 1) > 1
                else ""
            )
            + (
                f" predictor and its offline limit run `MODEL_ENGINE={detail['engine']}` "
                f"(OpenVINO runs the convolutional trunk in {dtype}, MXNet the rest in float32)."
                if detail.get("engine", "mxnet") != "mxnet"
                else ""
            ),
            "",
        ]
        mine = [r for r in rows if (r["model"], r["dtype"]) == (model, dtype)]
        for view in VIEWS[::-1]:  # same_handler first: the comparison issue 17 began with
            others = [r for r in mine if r.get("view") == view and r["contender"] in PEERS]
            if view == "same_handler":
                others += [r for r in mine if r["contender"] == "naive"]
            if not others:
                continue
            lines += [
                f"{VIEW_TITLES[view]}:",
                "",
                "| concurrency | contender | requests | throughput (req/s) | p50 (ms) | p99 (ms) |",
                "|---:|---|---:|---:|---:|---:|",
            ]
            for concurrency in map(int, detail["levels"]):  # str keys once saved as JSON
                chosen = [r for r in mine if r["contender"] == "predictor"] + others
                if view == "same_handler":
                    chosen += [r for r in mine if r["contender"] == "offline"]
                order = {name: index for index, name in enumerate((*CONTENDERS, "offline"))}
                chosen.sort(key=lambda r: order[r["contender"]])
                for row in (r for r in chosen if r["concurrency"] == concurrency):
                    label = row_label(row)
                    count = (
                        detail.get(contender_key(row), {})
                        .get(str(concurrency), {})
                        .get("requests", "")
                        if row["contender"] != "offline"
                        else ""
                    )
                    p99 = "" if row["p99_ms"] is None else f"{row['p99_ms']:.1f}"
                    lines.append(
                        f"| {concurrency} | {label} | {count} | {row['throughput_rps']:.2f} | "
                        f"{row['p50_ms']:.1f} | {p99} |"
                    )
            lines.append("")
        lines += load_generator_table(all_rows, model, dtype)
        if "perf_analyzer_error" in detail:
            lines += [f"perf_analyzer failed here: `{detail['perf_analyzer_error']}`", ""]
    lines += ["Targets:", "", *verdicts(all_rows, details), ""]
    return "\n".join(lines)


def load_generator_table(rows: list[dict[str, Any]], model: str, dtype: str) -> list[str]:
    """predictor under both load generators, side by side; nothing if perf_analyzer did not run."""
    driven = [
        r
        for r in rows
        if (r["model"], r["dtype"], r.get("load_generator")) == (model, dtype, PERF_ANALYZER)
    ]
    if not driven:
        return []
    lines = [
        "predictor under two load generators: `bench.loadgen` (Python clients, `/predict`) "
        "and NVIDIA's perf_analyzer (C++ clients, `/v2/models/NAME/infer`):",
        "",
        "| concurrency | bench.loadgen (req/s) | p50 | p99 | its CPU | "
        "perf_analyzer (req/s) | p50 | p99 | its CPU |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for theirs in sorted(driven, key=lambda r: r["concurrency"]):
        ours = find(
            rows,
            model=model,
            dtype=dtype,
            contender="predictor",
            concurrency=theirs["concurrency"],
            load_generator=LOADGEN,
        )
        left = (
            f"{ours['throughput_rps']:.2f} | {ours['p50_ms']:.1f} | {ours['p99_ms']:.1f} | "
            + _share(ours)
            if ours
            else " | | | "
        )
        lines.append(
            f"| {theirs['concurrency']} | {left} | {theirs['throughput_rps']:.2f} | "
            f"{theirs['p50_ms']:.1f} | {theirs['p99_ms']:.1f} | {_share(theirs)} |"
        )
    return [
        *lines,
        "",
        '"Its CPU": the load generator\'s own CPU time over the level, as a share of '
        "both cores: what it takes is not there for the server.",
        "",
    ]


def _share(row: dict[str, Any]) -> str:
    """A row's load generator CPU share as a percentage; empty for rows measured without it."""
    share = row.get("loadgen_cpu_share")
    return "" if share is None else f"{share:.1%}"


def contender_key(row: dict[str, Any]) -> str:
    """The key of a row's contender in the run's details (`Contender`'s text)."""
    return str(Contender(row["contender"], row.get("view", "same_handler")))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Throughput, p50 and p99 against concurrency: one row of panels per model and dtype.

    One colour per contender; a peer's same-handler view is a solid line, its
    as-deployed view a dotted one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    driven = [r for r in rows if r.get("load_generator") == PERF_ANALYZER]
    rows = by_our_load_generator(rows)
    keys = sorted({(r["model"], r["dtype"]) for r in rows}, key=lambda k: (k[1], k[0]))
    figure, axes = plt.subplots(len(keys), 3, figsize=(15, 4 * len(keys)), squeeze=False)
    styles: dict[str, dict[str, Any]] = {
        "predictor": {"color": "tab:blue", "marker": "o"},
        "naive": {"color": "tab:green", "marker": "^"},
        "mms": {"color": "tab:orange", "marker": "s"},
        "torchserve": {"color": "tab:red", "marker": "D"},
        "bentoml": {"color": "tab:purple", "marker": "v"},
        "rayserve": {"color": "tab:brown", "marker": "P"},
        "offline": {"color": "black", "linestyle": "--"},
    }
    for line, (model, dtype) in enumerate(keys):
        for who, style in styles.items():
            for view in VIEWS:
                mine = sorted(
                    (
                        r
                        for r in rows
                        if (r["model"], r["dtype"], r["contender"], r.get("view"))
                        == (model, dtype, who, view)
                    ),
                    key=lambda r: r["concurrency"],
                )
                if not mine:
                    continue
                look = dict(style)
                if view == "as_deployed" and who in PEERS:
                    look["linestyle"] = ":"
                xs = [r["concurrency"] for r in mine]
                for column, field in enumerate(("throughput_rps", "p50_ms", "p99_ms")):
                    ys = [r[field] for r in mine]
                    if any(y is None for y in ys):
                        continue
                    axes[line][column].plot(xs, ys, label=row_label(mine[0]), **look)
        theirs = sorted(
            (r for r in driven if (r["model"], r["dtype"]) == (model, dtype)),
            key=lambda r: r["concurrency"],
        )
        for column, field in enumerate(("throughput_rps", "p50_ms", "p99_ms")) if theirs else ():
            axes[line][column].plot(
                [r["concurrency"] for r in theirs],
                [r[field] for r in theirs],
                label="predictor (perf_analyzer, v2)",
                color="tab:blue",
                linestyle="--",
                marker="x",
            )
        for column, title in enumerate(("throughput (req/s)", "p50 latency (ms)", "p99 (ms)")):
            axis = axes[line][column]
            axis.set_xscale("log", base=2)
            axis.set_xticks([1, 4, 16, 64])
            axis.set_xticklabels(["1", "4", "16", "64"])
            axis.set_xlabel("concurrent clients")
            axis.set_title(f"{model} {dtype}: {title}", fontsize=9)
            if column:
                axis.set_yscale("log")
            else:
                axis.set_ylim(bottom=0)
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default="small,coco,resnet50", help="comma-separated: small, coco, resnet50"
    )
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)}; a peer is measured in both "
        f"views unless one is named, e.g. torchserve:as_deployed ({', '.join(VIEWS)})",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also predictor on the int8 digits model (alone with --models '')",
    )
    parser.add_argument(
        "--bfloat16",
        action="store_true",
        help="also predictor in bfloat16 (MODEL_DTYPE=bfloat16 on OpenVINO) on each model, "
        "right after that model's float32 contenders",
    )
    parser.add_argument(
        "--baseline-model",
        choices=MODEL_CODES,
        default="plain",
        help="how the peers and the naive server run the checkpoint (bench/plain_model.py)",
    )
    parser.add_argument(
        "--calib", type=Path, default=ROOT / "build" / "datasets" / "train", help="for --int8"
    )
    parser.add_argument("--calib-images", type=int, default=300)
    parser.add_argument("--photos", type=int, default=24, help="distinct JPEGs to send")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: proves the tooling")
    parser.add_argument(
        "--rounds",
        type=int,
        help="passes over the contenders, in place of each model's own (2); fewer take less time "
        "but let a slow stretch of a shared machine fall on fewer contenders",
    )
    parser.add_argument(
        "--no-perf-analyzer",
        action="store_true",
        help="skip the second load generator (perf_analyzer on predictor's v2 route)",
    )
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="drop the stored figures of models and dtypes this run does not measure "
        "(by default they are kept, and the section shows every model measured so far)",
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "compare.json")
    parser.add_argument(
        "--details",
        type=Path,
        default=ROOT / "bench" / "compare-details.json",
        help="per model and dtype: when and how it was measured, its offline limit, counts",
    )
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "compare.png")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()

    cases = {"small": SMALL, "coco": COCO, "resnet50": RESNET}
    chosen = [cases[name.strip()] for name in args.models.split(",") if name.strip()]
    try:
        contenders = parse_contenders(args.contenders)
    except ValueError as exc:
        parser.error(str(exc))
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")

    def adjust(case: ModelCase) -> ModelCase:
        case = shrink(case) if args.smoke else case
        return case if args.rounds is None else replace(case, rounds=args.rounds)

    chosen = [adjust(case) for case in chosen]
    files = make_photos(WORK / "photos", args.photos)
    perf_data = None
    if not args.no_perf_analyzer and any(who.name == "predictor" for who in contenders):
        if not perf_analyzer_available():
            parser.error(
                "perf_analyzer is not installed: `make perf-analyzer`, or --no-perf-analyzer"
            )
        perf_data = write_perf_analyzer_data(
            [path.read_bytes() for path in files], WORK / "perf_analyzer_input.json"
        )
    store = Results.load(args.json, args.details, fresh=args.fresh)
    measured = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "command": command_line(sys.argv[1:], smoke=args.smoke),
    }

    def measure(case: ModelCase, prefix: Path, dtype: str, who: tuple[Contender, ...]) -> None:
        details: dict[str, Any] = {}
        model_code = args.baseline_model
        rows = measure_case(case, prefix, dtype, files, who, details, model_code, perf_data)
        for detail in details.values():
            detail["measured"] = measured
        # Saved model by model: an interrupted run keeps what it finished.
        store.replace(rows, details)
        store.save(args.json, args.details)

    for case in chosen:
        if case.prefix == RESNET_PREFIX:
            ensure_resnet()
        measure(case, case.prefix, "float32", contenders)
        if args.bfloat16:
            brief = replace(case, engine="openvino")
            measure(
                brief, case.prefix, "bfloat16", (Contender("predictor", OWN_VIEW["predictor"]),)
            )
    if args.int8:
        ensure_int8(args.calib, args.calib_images)
        # The digits model's loads and rounds, as this run sets them (--smoke, --rounds).
        small = replace(adjust(SMALL), engine="mxnet")  # OpenVINO runs float32 and bfloat16
        measure(small, INT8_PREFIX, "int8", (Contender("predictor", OWN_VIEW["predictor"]),))
    meta = {"photos": len(files), "baseline_model": args.baseline_model}
    plot(store.rows, args.png)
    section = render_section(store.rows, store.details, meta)
    write_markdown(args.markdown, section, MARK_START, MARK_END)
    print(f"wrote {args.json}, {args.details}, {args.png} and {args.markdown}", file=sys.stderr)
    for line in verdicts(store.rows, store.details):
        print(line, file=sys.stderr)


# Options that only say where results go: left out of the command a section quotes.
_OUTPUT_OPTIONS = ("--json", "--details", "--png", "--markdown")


def command_line(argv: list[str], smoke: bool = False) -> str:
    """The command that reproduces a run, as a section quotes it."""
    if smoke:
        return "python -m bench.compare --smoke"
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _OUTPUT_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(option + "=" for option in _OUTPUT_OPTIONS)):
            kept.append(arg)
    if kept in ([], ["--int8"]):
        return "make bench-compare"
    return "python -m bench.compare " + shlex.join(kept)


@dataclass
class Results:
    """Every model and dtype measured so far: compare.json's rows and each one's details.

    A run replaces what it measures and keeps the rest, so that the section
    can show models measured by different runs, each with its own date and
    command (a full `make bench-compare` takes hours).
    """

    rows: list[dict[str, Any]]
    details: dict[str, Any]  # "MODEL/DTYPE" -> offline limit, settings, counts, "measured"

    @classmethod
    def load(cls, rows_path: Path, details_path: Path, fresh: bool = False) -> Results:
        """What earlier runs stored (nothing with ``fresh``, or where no file is)."""
        if fresh:
            return cls([], {})
        rows = json.loads(rows_path.read_text(encoding="utf-8")) if rows_path.is_file() else []
        details = (
            json.loads(details_path.read_text(encoding="utf-8")) if details_path.is_file() else {}
        )
        return cls(rows, details)

    def replace(self, rows: list[dict[str, Any]], details: dict[str, Any]) -> None:
        """A run's figures for some models and dtypes, in place of any stored for them."""
        measured = {(row["model"], row["dtype"]) for row in rows}
        kept = [row for row in self.rows if (row["model"], row["dtype"]) not in measured]
        self.rows = kept + rows
        self.details = {
            **{key: value for key, value in self.details.items() if key not in details},
            **details,
        }

    def save(self, rows_path: Path, details_path: Path) -> None:
        """Write both files."""
        rows_path.write_text(json.dumps(self.rows, indent=1) + "\n", encoding="utf-8")
        details_path.write_text(json.dumps(self.details, indent=1) + "\n", encoding="utf-8")


def shrink(case: ModelCase) -> ModelCase:
    """A few seconds per level: for proving the tooling, never for figures."""
    return replace(
        case,
        levels={c: max(2, min(n, c * 2)) for c, n in case.levels.items() if c <= 4},
        time_limit_s=5.0,
        warmup_requests=2,
        offline_batches=(1, 2),
        offline_photos=2,
        offline_repeats=1,
        offline_confirm=1,
        rounds=1,
        limit_seconds=0.0,
    )


if __name__ == "__main__":
    main()
