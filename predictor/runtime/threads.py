"""CPU threads: the forward pass's OpenMP team, and the pool that decodes beside it.

`configure_openmp` sizes the team (MODEL_CPU_THREADS). MXNet, unless told
otherwise, runs each operator on half the CPUs it sees, on the assumption
that every core has two hyperthreads. On the 2-core benchmark machine (no
hyperthreads) all cores make the forward pass 1.45x faster on both SSDs
(ResNet-50 SSD 512: 826 -> 559 ms per image; shipped SSD: 17.4 -> 12.1 ms at
batch 4). Whether the server gains depends on what else needs the cores:
- A network whose forward pass is nearly all the work (the ResNet-50 SSD:
  97 % of the CPU time per image) should get every core.
- Where decoding is about half the work (the shipped SSD on multi-megapixel
  photos), MXNet's default is better: one core runs the forward pass while
  the other decodes the next batch (measured at 16 clients, batch 8: 50 and
  49 requests/s at 1 thread, 44 and 43 at 2).
So the default stays MXNet's, and the setting is per deployment.

The decoding pool's threads run at a lower CPU priority (a higher nice
value) than the rest of the process (PREPROCESS_NICE). Every image must pass
through the forward pass, one batch at a time, while decoding can run ahead
on any of several threads: at a lower priority, decoding gets every cycle
the forward pass does not use (between batches, and whenever the CPU is not
saturated) and never delays it. With several OpenMP threads it also keeps the
team from waiting at a barrier for a thread that lost its core to a decoder.
Measured (2 cores, shipped SSD, 16 clients, batch 8): 53.7 requests/s at
nice 10 against 46.8 at 0.

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


OPENMP_VARIABLE = "OMP_NUM_THREADS"


def configure_openmp(threads: int) -> bool:
    """Make MXNet's operators use ``threads`` OpenMP threads; True when it can still apply.

    MXNet reads the value once, when it is loaded, so this must run before
    the first ``import mxnet`` of the process (the CLI calls it first thing).
    """
    return set_before_mxnet_loads(OPENMP_VARIABLE, threads)


def set_before_mxnet_loads(variable: str, value: int) -> bool:
    """Set MXNet's environment variable ``variable``; True when it can still apply.

    MXNet reads its variables once, when it is loaded: once it is, the value
    stays what it was (a warning says so unless it is already ``value``).
    """
    if "mxnet" in sys.modules:
        current = os.environ.get(variable)
        if current != str(value):
            log.warning(
                "MXNet is already loaded: %s stays %s, not %d",
                variable,
                current or "MXNet's default",
                value,
            )
        return current == str(value)
    os.environ[variable] = str(value)
    return True


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
