"""Instruments a `predictor serve` child process for the memory benchmarks; never shipped.

`bench.memory_paths` and `bench.soak --leak-bytes` put this folder first on
the server's ``PYTHONPATH``, so Python imports this module at start-up:

- ``PREDICTOR_MEMPROBE_DIR=DIR``: start tracemalloc; on SIGUSR2 collect
  cyclic garbage (so that only reachable memory counts), write a
  snapshot (``DIR/snapshot-N.pickle``, N counting from 1) and then the file
  ``DIR/snapshot-N.done``.
- ``PREDICTOR_UNTUNED_MALLOC=1``: the server as before
  `predictor.runtime.memory` (glibc's defaults, no frozen heap, no periodic
  collection and trim, MXNet's default number of temporary workspaces), to
  compare;
- ``PREDICTOR_LEAK_BYTES=N``: a deliberately leaking build of the detection
  handler: every ``POST /predict`` keeps N bytes for ever (to show that the
  short soak in ``make test`` catches a leak).

Neither variable is read by predictor itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import tracemalloc
from pathlib import Path
from typing import Any

_directory = os.environ.get("PREDICTOR_MEMPROBE_DIR")
_leak_bytes = int(os.environ.get("PREDICTOR_LEAK_BYTES", "0") or 0)

if _directory:
    _folder = Path(_directory)
    tracemalloc.start(8)
    _count = 0

    def _dump(signum: int, frame: Any) -> None:
        global _count
        _count += 1
        path = _folder / f"snapshot-{_count}.pickle"
        # Only what is reachable counts: cyclic garbage waiting for the collector is
        # not a leak (how many objects it was is written to the .done file).
        garbage = gc.collect()
        tracemalloc.take_snapshot().dump(str(path))
        # The snapshot's own garbage must not count as the server's: collect it and
        # give its pages back before the benchmark reads the RSS.
        gc.collect()
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
        path.with_suffix(".done").write_text(str(garbage))

    signal.signal(signal.SIGUSR2, _dump)

if _leak_bytes > 0:
    from predictor.http import predict as _predict

    _kept: list[bytes] = []
    _original = _predict.PredictRoute.predict

    async def _leaking(self: Any, request: Any, timing: Any) -> Any:
        _kept.append(os.urandom(_leak_bytes))  # random: pages really touched, never shared
        return await _original(self, request, timing)

    _predict.PredictRoute.predict = _leaking  # type: ignore[method-assign]

if os.environ.get("PREDICTOR_UNTUNED_MALLOC") == "1":
    from predictor.runtime import memory as _memory

    def _untouched() -> bool:
        return False

    def _nothing() -> None:
        return None

    def _mxnets_default(workspaces: int) -> bool:
        return False

    _memory.tune_allocator = _untouched
    _memory.release_free_memory = _untouched
    _memory.settle_heap = _nothing
    _memory.configure_temp_space = _mxnets_default
