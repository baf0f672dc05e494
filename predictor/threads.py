"""The thread pool that decodes and resizes images, beside the forward pass.

Its threads run at a lower CPU priority (a higher nice value) than the rest of
the process. On a CPU the forward pass runs as a team of OpenMP threads that
meet at a barrier after every layer: when a decoding thread takes a core from
one of them, the others spin at the barrier until it gets the core back, so
both cores are spent on one core's work. At a lower priority decoding still
gets every cycle the forward pass does not use (between batches, and whenever
the CPU is not saturated), and gives way to it otherwise. Measured on the
ResNet-50 SSD 512 (2 cores): see BENCHMARKS.md.

Linux only: there, a thread's nice value is its own. Elsewhere the priority
is left as it is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


def preprocess_pool(workers: int, nice: int, name: str = "preprocess") -> ThreadPoolExecutor:
    """``workers`` threads, each ``nice`` steps below the caller's priority (0: the same)."""
    return ThreadPoolExecutor(
        max_workers=workers,
        thread_name_prefix=name,
        initializer=lower_priority,
        initargs=(nice,),
    )


def lower_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by ``nice``; True when it took effect.

    Raising one's own nice value needs no privilege. Failure is logged, not
    raised: a thread at normal priority decodes correctly, only less politely.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return False
    thread = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, thread)
        os.setpriority(os.PRIO_PROCESS, thread, min(19, current + nice))
    except OSError as exc:
        log.warning("could not lower the priority of a preprocessing thread: %s", exc)
        return False
    return True
