"""Overload: many clients at once, each sending again as soon as it has an answer.

Used by the overload test (tests/test_robustness.py) and runnable on its own
against a server of your choice on this machine:

    python -m bench.storm --url http://127.0.0.1:8080/predict --clients 256 --seconds 5

Every answer is checked as it arrives: 200 must carry the contract's JSON, 503
an error and ``Retry-After``, 504 an error; anything else, a malformed body, a
dropped connection or a request that gets no answer within ``request_timeout_s``
is counted as a problem. Traffic goes only to the URL given, and the run ends
by itself: no new request starts after ``seconds``, and every request has a
time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np


@dataclass
class StormResult:
    """What a storm produced, as the clients saw it."""

    clients: int
    wall_s: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    latencies_ms: dict[int, list[float]] = field(default_factory=dict)
    problems: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # a few problems, for the report

    @property
    def answered(self) -> int:
        """Requests that got a well-formed answer."""
        return sum(self.statuses.values())

    def percentile_ms(self, status: int, q: float) -> float:
        """Latency percentile of the answers with ``status`` (NaN without any)."""
        values = self.latencies_ms.get(status, [])
        return float(np.percentile(values, q)) if values else float("nan")

    def summary(self) -> str:
        """One line for logs and reports."""
        parts = [f"{self.answered} answers in {self.wall_s:.1f} s from {self.clients} clients"]
        parts += [f"{status}: {count}" for status, count in sorted(self.statuses.items())]
        if 200 in self.latencies_ms:
            p50, p99 = self.percentile_ms(200, 50), self.percentile_ms(200, 99)
            parts.append(f"200 p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        parts.append(f"problems: {dict(self.problems) or 'none'}")
        return "; ".join(parts)


def _problem(status: int, headers: dict[str, str], body: bytes) -> str | None:
    """Why an answer breaks the contract, or None when it is well formed."""
    if status not in (200, 503, 504):
        return f"status {status}"
    if not headers.get("Content-Type", "").startswith("application/json"):
        return f"{status} without JSON"
    try:
        payload = json.loads(body)
    except ValueError:
        return f"{status} with a malformed body"
    if status == 200:
        if not isinstance(payload, dict) or not isinstance(payload.get("prediction"), list):
            return "200 without a prediction list"
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("error"), str):
        return f"{status} without an error message"
    if status == 503 and not headers.get("Retry-After", "").isdigit():
        return "503 without Retry-After"
    return None


async def storm(
    url: str,
    bodies: Sequence[bytes],
    clients: int,
    seconds: float,
    request_timeout_s: float = 30.0,
    headers: dict[str, str] | None = None,
) -> StormResult:
    """Run ``clients`` closed-loop clients against ``url`` for ``seconds``."""
    result = StormResult(clients=clients)
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    sent_headers = {"Content-Type": "image/jpeg", **(headers or {})}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def client(index: int) -> None:
            sent = 0
            while time.monotonic() < stop_at:
                body = bodies[(index + sent * clients) % len(bodies)]
                sent += 1
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=sent_headers) as response:
                        data = await response.read()
                        status = response.status
                        got = {k: v for k, v in response.headers.items()}
                except TimeoutError:
                    result.problems["no answer in time"] += 1
                    continue
                except aiohttp.ClientError as exc:
                    result.problems[type(exc).__name__] += 1
                    if len(result.examples) < 5:
                        result.examples.append(repr(exc))
                    continue
                elapsed_ms = (time.perf_counter() - started) * 1000.0
                problem = _problem(status, got, data)
                if problem is not None:
                    result.problems[problem] += 1
                    if len(result.examples) < 5:
                        result.examples.append(f"{problem}: {data[:200]!r}")
                    continue
                result.statuses[status] += 1
                result.latencies_ms.setdefault(status, []).append(elapsed_ms)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        result.wall_s = time.perf_counter() - started
    return result


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: storm a running server with rendered photos."""
    from bench.soak import WORK
    from tests.support.photos import make_photos

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080/predict")
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("storms go to this machine only (127.0.0.0/8, localhost or [::1])")
    bodies = [path.read_bytes() for path in make_photos(WORK / "photos", 12)]
    result = asyncio.run(storm(args.url, bodies, args.clients, args.seconds))
    print(result.summary())


if __name__ == "__main__":
    main()
