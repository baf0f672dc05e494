"""Closed-loop HTTP load: N clients, each sending the next JPEG as soon as it has an answer.

Traffic goes only to the URL given (the benchmarks pass a loopback address);
every run is bounded by a request count and a time limit.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np


@dataclass
class LoadResult:
    """What one load level produced."""

    concurrency: int
    wall_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    # CPU seconds the load generator itself used (all its threads): on a 2-core
    # machine what it takes is not there for the server under test.
    cpu_s: float = 0.0

    @property
    def ok(self) -> int:
        """Requests answered 200."""
        return self.statuses[200]

    @property
    def throughput_rps(self) -> float:
        """Successful answers per second of wall time."""
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def cpu_share(self) -> float:
        """The load generator's CPU time as a share of the machine's (every core) over the run."""
        return machine_share(self.cpu_s, self.wall_s)

    @classmethod
    def pooled(cls, runs: Sequence[LoadResult]) -> LoadResult:
        """Several runs at one concurrency as one: their requests and wall times added up."""
        pooled = cls(
            runs[0].concurrency,
            sum(run.wall_s for run in runs),
            cpu_s=sum(run.cpu_s for run in runs),
        )
        for run in runs:
            pooled.latencies_ms.extend(run.latencies_ms)
            pooled.statuses.update(run.statuses)
        return pooled

    def percentile_ms(self, q: float) -> float:
        """Latency percentile of successful requests."""
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def post(
    session: aiohttp.ClientSession, url: str, body: bytes, form_field: str | None = None
) -> Any:
    """One JPEG POSTed as the raw body, or uploaded in ``form_field`` of a multipart form."""
    if form_field is None:
        return session.post(url, data=body, headers={"Content-Type": "image/jpeg"})
    form = aiohttp.FormData()
    form.add_field(form_field, body, filename="photo.jpg", content_type="image/jpeg")
    return session.post(url, data=form)


async def drive(
    url: str,
    bodies: Sequence[bytes],
    concurrency: int,
    requests: int,
    time_limit_s: float,
    timeout_s: float = 60.0,
    form_field: str | None = None,
) -> LoadResult:
    """POST ``requests`` bodies from ``concurrency`` clients, stopping at ``time_limit_s``.

    Each JPEG is the raw body (``Content-Type: image/jpeg``), or with
    ``form_field`` an upload in that field of a multipart/form-data body, for
    servers that take files. A request that gets no answer within
    ``timeout_s`` (or whose connection fails) is counted under status 0 and
    the client goes on.
    """
    result = LoadResult(concurrency=concurrency, wall_s=0.0)
    counter = itertools.count()
    deadline = time.monotonic() + time_limit_s
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client() -> None:
            while time.monotonic() < deadline:
                index = next(counter)
                if index >= requests:
                    return
                body = bodies[index % len(bodies)]
                started = time.perf_counter()
                try:
                    async with post(session, url, body, form_field) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                result.statuses[status] += 1
                if status == 200:
                    result.latencies_ms.append(elapsed_ms)

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        result.wall_s = time.perf_counter() - started
        result.cpu_s = time.process_time() - cpu_started
    return result


def machine_share(cpu_s: float, wall_s: float) -> float:
    """CPU seconds as a share of what every core of this machine had over ``wall_s``."""
    cores = os.cpu_count() or 1
    return cpu_s / (wall_s * cores) if wall_s > 0 else 0.0
