"""The C allocator of a server that runs for weeks: fixed mmap threshold, periodic trim (glibc).

What the soak measured (BENCHMARKS.md, "Soak"; per request path with
``python -m bench.memory_paths``): the Python heap that tracemalloc sees stays
flat under every kind of request, yet the RSS crept up a few hundred KiB per
1,000 requests, in steps of megabytes. That is glibc's malloc, not a leak:

- every request allocates buffers of a few hundred KiB to tens of MiB (the
  body, the decoded photo, the resized tensor, a drawn answer), on several
  threads (the event loop, the decoding pool, MXNet's engine and OpenMP team);
- glibc serves large blocks with mmap, returned to the system when freed,
  but its *dynamic* threshold rises to the largest block freed so far (up to
  32 MiB), after which photo-sized buffers come from the per-thread heaps
  ("arenas") instead; there, freed memory is kept for reuse and a heap only
  shrinks from its top, so the holes between long-lived blocks stay
  resident, and each new arena adds its own high-water mark.

Python adds its own delay: objects in reference cycles are freed only by a
full collection, which comes rarely when millions of long-lived objects
(MXNet, the models) are tracked. The remedies make the RSS follow the live
data:

- `tune_allocator` (at start, before the models load) fixes the mmap
  threshold at `MMAP_THRESHOLD_BYTES`, which also stops its drift: buffers of
  that size and more are mmapped and go back to the system as soon as they
  are freed. It is 4 MiB, not lower: a block that is mmapped costs a page
  fault for every 4 KiB first written and an munmap (in a process whose
  threads run on several cores, one that interrupts the others) each time,
  and a request of the shipped model allocates several buffers between
  256 KiB and 4 MiB (the body, the decoded photo, the tensor). At 256 KiB
  that cost about 1.6 ms per request at one client and a tenth of the
  throughput at 16 and 64 clients, float32 and int8 alike (BENCHMARKS.md,
  "The mmap threshold");
  the trim below returns what such buffers leave free in the arenas;
- `settle_heap` (once the models are warm) freezes the start-up heap, so
  that later collections look only at what requests allocate;
- `release_free_memory`, which the server calls every
  ``MEMORY_TRIM_INTERVAL_S`` (`Settings.memory_trim_interval_s`, 10 s) on a
  worker thread, collects cyclic garbage and then returns the free pages
  inside the arenas (``malloc_trim(0)``: glibc >= 2.8 trims the whole heap,
  not only its top).

Elsewhere (musl, macOS) the C library has neither mallopt nor malloc_trim,
and the allocator keeps its defaults.

MXNet keeps one more high-water mark of its own: its temporary workspaces.
The operators that need scratch memory on the CPU take it from one of
``MXNET_CPU_TEMP_COPY`` workspaces that MXNet shares between them (its
default: 4), and a workspace grows to the largest request it has served and
never shrinks. The server's network is re-planned at every change of batch
size, and each time its operators are handed the next workspaces in turn, so
over thousands of requests every workspace grows to the largest scratch any
operator needs at the largest batch. On the shipped model that was about
50 MiB of RSS, reached in steps over the first 10,000 or so requests: the
creep that the soak measured (BENCHMARKS.md, "Soak"). One forward pass at a
time needs one workspace: `configure_temp_space` gives MXNet as many as there
are CPU replicas (`Settings.cpu_temp_workspaces`), before MXNet loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from functools import cache

from predictor.runtime.threads import set_before_mxnet_loads

log = logging.getLogger(__name__)

# MXNet's variable: how many temporary workspaces its CPU operators share.
TEMP_COPY_VARIABLE = "MXNET_CPU_TEMP_COPY"

# mallopt parameters (glibc's malloc.h).
_M_MMAP_THRESHOLD = -3
# Blocks of this size and more are mmapped and returned when freed: full-size
# decoded photos and the largest bodies; smaller ones are reused from the
# arenas without page faults (see the module's docstring).
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    """The C library, when it is glibc (it has mallopt and malloc_trim); else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    return libc


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold (see the module's docstring); False where it is not glibc."""
    libc = _glibc()
    if libc is None:
        log.info("not glibc: the allocator keeps its defaults")
        return False
    if libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) failed: the allocator keeps its defaults")
        return False
    return True


def settle_heap() -> None:
    """Once the models are loaded and warmed: collect, then freeze what is alive.

    Python frees objects in reference cycles (a request's exception and its
    traceback, futures and their callbacks) only when its cyclic collector
    runs, and it runs a full collection only once the objects that survived
    earlier ones have grown by a quarter. The models, MXNet and the libraries
    are millions of such objects, so garbage could pile up for a long time
    before that. `gc.freeze` moves everything alive now out of the
    collector's sight: the quarter is then counted over what the server
    allocated since, and every collection skips the frozen millions.
    """
    gc.collect()
    gc.freeze()


def release_free_memory() -> bool:
    """Collect cyclic garbage, then give free heap pages back (``malloc_trim(0)``).

    True when the C heap gave pages back. Cheap after `settle_heap` (the
    collection sees only what was allocated since).
    """
    gc.collect()
    libc = _glibc()
    return bool(libc.malloc_trim(0)) if libc is not None else False


def configure_temp_space(workspaces: int) -> bool:
    """Give MXNet ``workspaces`` temporary workspaces for its CPU operators (see above).

    True when it can still apply: MXNet reads the number once, when it is
    loaded, so this must run before the process's first ``import mxnet``.
    """
    return set_before_mxnet_loads(TEMP_COPY_VARIABLE, workspaces)
