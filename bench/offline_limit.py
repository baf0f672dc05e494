"""The offline limit (`bench.bench_server.measure_offline`) in a process of its own.

MXNet reads its OpenMP thread count once, when it is loaded, so a limit for
a server run with MODEL_CPU_THREADS must be measured in a fresh process with
the same setting. Nothing here imports MXNet before `configure_openmp`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from predictor.runtime.threads import configure_openmp

ROOT = Path(__file__).resolve().parent.parent


def measure_offline_with_threads(
    threads: int,
    prefix: Path,
    edge: int,
    files: list[Path],
    workers: int,
    repeats: int,
    batches: tuple[int, ...],
    dtype: str | None,
    confirm_repeats: int,
    engine: str = "mxnet",
    replicas: int = 1,
) -> dict[str, Any]:
    """`measure_offline` in a child process whose forward passes use ``threads`` threads
    (on ``engine`` and ``replicas``, the server's MODEL_ENGINE and MODEL_CPU_REPLICAS)."""
    request = {
        "engine": engine,
        "replicas": replicas,
        "threads": threads,
        "prefix": str(prefix),
        "edge": edge,
        "files": [str(path) for path in files],
        "workers": workers,
        "repeats": repeats,
        "batches": list(batches),
        "dtype": dtype,
        "confirm_repeats": confirm_repeats,
    }
    done = subprocess.run(
        [sys.executable, "-m", "bench.offline_limit"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the offline measurement failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    return result


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    request = json.loads(sys.stdin.read())
    configure_openmp(int(request["threads"]))
    from bench.bench_server import measure_offline

    result = measure_offline(
        Path(request["prefix"]),
        int(request["edge"]),
        [Path(name) for name in request["files"]],
        int(request["workers"]),
        int(request["repeats"]),
        tuple(int(batch) for batch in request["batches"]),
        request["dtype"],
        int(request["confirm_repeats"]),
        engine=request["engine"],
        engine_threads=int(request["threads"]),
        replicas=int(request["replicas"]),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
