"""Where the memory goes, request path by request path: tracemalloc snapshots diffed, and RSS.

A real `predictor serve` (a child process on a loopback port), instrumented
by `bench/memprobe/sitecustomize.py`: tracemalloc runs from the start, and
SIGUSR2 makes the server write a snapshot. For each path of the issue
(``/predict`` JSON, drawn answers, v2 binary and JSON, refused bodies, 504s,
cancelled requests), one after the other on the same server: ``--warmup``
requests, a snapshot and the RSS, ``--requests`` more, a snapshot and the RSS
again. The Python heap's growth (the sum of tracemalloc's differences, and
its largest lines) says whether Python objects pile up; the RSS growth beside
it, whether memory the Python heap does not account for does (MXNet's
allocator, glibc's arenas).

    python -m bench.memory_paths                   # the allocator as predictor sets it
    python -m bench.memory_paths --untuned         # glibc's defaults, to compare
    python -m bench.memory_paths --json out.json

504s come from a second server whose ``REQUEST_TIMEOUT_MS`` is 1 ms (every
image misses its deadline). Traffic goes to 127.0.0.1 only, bounded by count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from bench.soak import (
    ROOT,
    V2_INFER,
    Case,
    cases,
    probe_env,
    rss_bytes,
    v2_binary_case,
    v2_json_case,
)
from predictor.config import SHIPPED_MODEL_EDGE, SHIPPED_MODEL_PREFIX
from tests.support.server_process import ServerProcess

KIB = 1024


@dataclass
class PathReport:
    """One path's growth between its two snapshots."""

    path: str
    requests: int
    statuses: dict[str, int]
    python_heap_bytes: int
    python_blocks: int
    rss_bytes: int
    garbage_objects: int
    top: list[str]

    def row(self) -> str:
        """A Markdown table row."""
        per = 1000 / self.requests
        return (
            f"| {self.path} | {self.requests:,} | "
            f"{', '.join(f'{k}: {v}' for k, v in sorted(self.statuses.items()))} | "
            f"{self.python_heap_bytes * per / KIB:+.1f} | {self.python_blocks * per:+.0f} | "
            f"{self.rss_bytes * per / KIB:+.1f} | {self.garbage_objects:,} |"
        )


def snapshot(pid: int, folder: Path, number: int) -> tuple[tracemalloc.Snapshot, int]:
    """Ask the server for snapshot ``number``; it, and the garbage objects collected before it."""
    os.kill(pid, signal.SIGUSR2)
    done = folder / f"snapshot-{number}.done"
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no snapshot (is bench/memprobe on PYTHONPATH?)")
        time.sleep(0.1)
    while not (garbage := done.read_text()):
        time.sleep(0.05)
    return tracemalloc.Snapshot.load(str(folder / f"snapshot-{number}.pickle")), int(garbage)


Sender = Callable[[int], Awaitable[str]]


def http_sender(session: aiohttp.ClientSession, base: str, mix: Sequence[Case]) -> Sender:
    """Sends the ``index``-th case of ``mix``; returns the status."""

    async def send(index: int) -> str:
        case = mix[index % len(mix)]
        async with session.post(
            base + case.path + case.query, data=case.body, headers=dict(case.headers)
        ) as response:
            await response.read()
            return str(response.status)

    return send


def cancelling_sender(port: int, mix: Sequence[Case]) -> Sender:
    """Sends a whole request and hangs up before the answer (the server cancels its handler)."""

    async def send(index: int) -> str:
        case = mix[index % len(mix)]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST {case.path}{case.query} HTTP/1.1\r\nHost: x\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in case.headers
        )
        writer.write(f"{head}Content-Length: {len(case.body)}\r\n\r\n".encode() + case.body)
        await writer.drain()
        await asyncio.sleep(0.005)
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # RST, as a client that crashed would
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        writer.close()
        return "cancelled"

    return send


async def drive(send: Sender, count: int, clients: int) -> dict[str, int]:
    """``count`` requests from ``clients`` concurrent senders; statuses counted."""
    statuses: dict[str, int] = {}
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            status = await send(index)
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return statuses


def measure(
    server: ServerProcess,
    folder: Path,
    label: str,
    make_sender: Callable[[aiohttp.ClientSession], Sender],
    warmup: int,
    requests: int,
    clients: int,
    counter: list[int],
    settle_s: float,
) -> PathReport:
    """Warm the path up, snapshot, run it, snapshot; the differences."""
    pid = server.process.pid

    async def run(count: int) -> dict[str, int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            return await drive(make_sender(session), count, clients)

    asyncio.run(run(warmup))
    # The server works through what it was sent (abandoned images still queued for
    # decoding included) and its periodic collection and trim run.
    time.sleep(settle_s)
    counter[0] += 1
    before, _ = snapshot(pid, folder, counter[0])
    rss_before = rss_bytes(pid)
    statuses = asyncio.run(run(requests))
    time.sleep(settle_s)
    counter[0] += 1
    after, garbage = snapshot(pid, folder, counter[0])
    rss_after = rss_bytes(pid)
    differences = after.compare_to(before, "lineno")
    top = [
        f"{d.size_diff / KIB:+.1f} KiB in {d.count_diff:+d} blocks: "
        f"{d.traceback[0].filename.split('site-packages/')[-1]}:{d.traceback[0].lineno}"
        for d in differences[:5]
    ]
    report = PathReport(
        label,
        requests,
        statuses,
        sum(d.size_diff for d in differences),
        sum(d.count_diff for d in differences),
        rss_after - rss_before,
        garbage,
        top,
    )
    print(report.row(), flush=True)
    for line in top:
        print("    ", line, flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--untuned", action="store_true", help="glibc's malloc defaults")
    parser.add_argument("--json", type=Path, help="write the reports here")
    parser.add_argument("--settle-s", type=float, default=12.0, help="pause before each snapshot")
    parser.add_argument("--only", help="only the paths whose label contains this")
    args = parser.parse_args(argv)
    mix = cases()
    photos = [c for c in mix if c.expected == 200 and c.path == "/predict" and not c.query]
    drawn = [Case(c.name, "?render=true", c.body, 200) for c in photos]
    v2_binary = [v2_binary_case(c.body) for c in photos]
    v2_json = [v2_json_case(c.body) for c in photos]
    refused = [c for c in mix if c.expected == 400] + [
        Case("over the limit", "", b"\xff\xd8" + b"\0" * (2 * 1024 * 1024), 413),
        Case("not json", "", b"{", 400, path=V2_INFER, headers=(("Content-Type", "x/y"),)),
    ]
    env = {
        "MODEL_PREFIX": str(ROOT / SHIPPED_MODEL_PREFIX),
        "MODEL_EDGE": str(SHIPPED_MODEL_EDGE),
        "BATCH_MAX_SIZE": "8",
        "PREPROCESS_WORKERS": "2",
        "MAX_BODY_BYTES": str(2 * 1024 * 1024),
    }
    reports: list[PathReport] = []
    with tempfile.TemporaryDirectory() as tmp:
        for deadline_ms, paths in (
            (
                None,
                [
                    ("`/predict` JSON", photos),
                    ("`/predict?render=true` (drawn)", drawn),
                    ("v2 binary", v2_binary),
                    ("v2 JSON", v2_json),
                    ("refused bodies (400, 413)", refused),
                    ("cancelled (client hangs up)", photos),
                ],
            ),
            (1, [("504 (deadline passed)", photos)]),
        ):
            folder = Path(tmp) / f"server-{deadline_ms}"
            folder.mkdir()
            server_env = {
                **env,
                **probe_env(untuned=args.untuned),
                "PREDICTOR_MEMPROBE_DIR": str(folder),
            }
            server_env["PYTHONPATH"] = os.pathsep.join(
                [str(ROOT / "bench" / "memprobe"), os.environ.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep)
            if deadline_ms is not None:
                server_env["REQUEST_TIMEOUT_MS"] = str(deadline_ms)
            counter = [0]
            with ServerProcess(server_env) as server:
                assert server.port is not None
                port = server.port
                for label, path_mix in paths:
                    if args.only and args.only not in label:
                        continue

                    def sender(
                        session: aiohttp.ClientSession,
                        path_mix: Sequence[Case] = path_mix,
                        label: str = label,
                        port: int = port,
                    ) -> Sender:
                        if label.startswith("cancelled"):
                            return cancelling_sender(port, path_mix)
                        return http_sender(session, server.url, path_mix)

                    reports.append(
                        measure(
                            server,
                            folder,
                            label,
                            sender,
                            args.warmup,
                            args.requests,
                            args.clients,
                            counter,
                            args.settle_s,
                        )
                    )
                code = server.stop()
                if code != 0 or "Traceback" in "".join(server.log):
                    print("".join(server.log[-50:]), file=sys.stderr)
                    return 1
    print()
    print(
        "| path | requests | statuses | Python heap, KiB / 1,000 | blocks / 1,000 "
        "| RSS, KiB / 1,000 | cyclic garbage at the end |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for report in reports:
        print(report.row())
    if args.json is not None:
        args.json.write_text(
            json.dumps({"untuned": args.untuned, "reports": [asdict(r) for r in reports]}, indent=1)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
