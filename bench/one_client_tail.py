"""Where the 1-client p99 comes from: predictor and the naive server, photo by photo.

    python -m bench.one_client_tail [--requests 240] [--rounds 2]

One client sends the benchmark's 24 photos (640x480 to 4000x3000) in turn
to predictor and to the naive server (`bench.naive_server`), alternating
server by server over the rounds; prints each photo's median and worst
latency on both, and predictor's slowest requests with its own
`Server-Timing` (read, decode, infer). Traffic only to 127.0.0.1; bounded
by the request count. Writes bench/one_client_tail.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.compare import BATCH_DELAY_MS, SMALL, WORK, NaiveServer
from tests.support.photos import make_photos
from tests.support.server_process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
WARM_UP = 20


def one_client(url: str, bodies: list[bytes], requests: int) -> list[dict[str, Any]]:
    """``requests`` POSTs one after another, the photos in turn, after a warm-up."""
    for index in range(WARM_UP):
        _post(url, bodies[index % len(bodies)])
    answers = []
    for index in range(requests):
        photo = index % len(bodies)
        started = time.perf_counter()
        timing = _post(url, bodies[photo])
        answers.append(
            {"photo": photo, "ms": (time.perf_counter() - started) * 1000, "timing": timing}
        )
    return answers


def _post(url: str, body: bytes) -> str:
    request = urllib.request.Request(url, body, {"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return str(response.headers.get("Server-Timing", ""))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main() -> None:
    """Measure, print and write bench/one_client_tail.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    files = make_photos(WORK / "photos", 24)
    bodies = [path.read_bytes() for path in files]
    answers: dict[str, list[dict[str, Any]]] = {"predictor": [], "naive": []}
    for _ in range(args.rounds):
        env = {
            "MODEL_PREFIX": str(SMALL.prefix),
            "BATCH_MAX_SIZE": "4",
            "BATCH_MAX_DELAY_MS": str(BATCH_DELAY_MS),
        }
        with ServerProcess(env) as server:
            answers["predictor"] += one_client(server.url + "/predict", bodies, args.requests)
        naive = NaiveServer(SMALL.prefix, SMALL.edge, "plain")
        try:
            answers["naive"] += one_client(naive.url, bodies, args.requests)
        finally:
            naive.stop()
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "photos": {}, "servers": {}}
    for name, runs in answers.items():
        latencies = [run["ms"] for run in runs]
        report["servers"][name] = {
            q: round(percentile(latencies, float(q)), 1) for q in ("50", "90", "99")
        }
        print(name, report["servers"][name])
    print("photo, bytes: predictor median / worst ms, naive median / worst ms")
    for photo, body in enumerate(bodies):
        row: dict[str, Any] = {"bytes": len(body)}
        for name, runs in answers.items():
            mine = [run["ms"] for run in runs if run["photo"] == photo]
            row[name] = [round(statistics.median(mine), 1), round(max(mine), 1)]
        report["photos"][files[photo].name] = row
        print(files[photo].name, row)
    slowest = sorted(answers["predictor"], key=lambda run: -run["ms"])[:8]
    report["slowest_predictor"] = [
        {"photo": files[run["photo"]].name, "ms": round(run["ms"], 1), "timing": run["timing"]}
        for run in slowest
    ]
    print("predictor's slowest requests:")
    for run in report["slowest_predictor"]:
        print(run)
    out = ROOT / "bench" / "one_client_tail.json"
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
