"""The preprocessing pool runs below the forward pass's priority (`predictor.runtime.threads`)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from predictor.runtime.memory import TEMP_COPY_VARIABLE, configure_temp_space
from predictor.runtime.threads import (
    OPENMP_VARIABLE,
    configure_openmp,
    lower_priority,
    preprocess_pool,
)
from tests.support.server_process import ServerProcess

from .conftest import SMALL_EDGE, encode_jpeg, scene

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's"
)


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_pool_threads_are_lowered_and_the_caller_is_not() -> None:
    before = own_nice()
    with preprocess_pool(2, 5) as pool:
        seen = set(pool.map(lambda _: own_nice(), range(20)))
    assert seen == {min(19, before + 5)}
    assert own_nice() == before


def test_nothing_changes_at_zero_and_the_value_stops_at_19() -> None:
    with preprocess_pool(1, 0) as pool:
        assert pool.submit(own_nice).result() == own_nice()

    def lowered_twice() -> int:
        assert lower_priority(15)
        assert lower_priority(15)
        return own_nice()

    worker = preprocess_pool(1, 0)
    assert worker.submit(lowered_twice).result() == 19
    worker.shutdown()


def thread_nice_values(pid: int) -> dict[int, int]:
    """Nice value of every thread of process ``pid``, from /proc (field 19 of stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        values[int(task.name)] = int(fields[16])
    return values


@pytest.mark.parametrize("nice", [7, 0])
def test_the_server_decodes_at_preprocess_nice(small_model_prefix: Path, nice: int) -> None:
    env = {
        "MODEL_PREFIX": str(small_model_prefix),
        "MODEL_EDGE": str(SMALL_EDGE),
        "BATCH_MAX_SIZE": "2",
        "PREPROCESS_WORKERS": "2",
        "PREPROCESS_NICE": str(nice),
    }
    with ServerProcess(env) as server:
        for seed in range(4):  # the pool starts its threads on demand
            status, payload = server.request("/predict", encode_jpeg(scene(seed)))
            assert status == 200, payload
        values = thread_nice_values(server.process.pid)
    base = values[server.process.pid]
    lowered = [tid for tid, value in values.items() if value == min(19, base + nice)]
    others = [tid for tid, value in values.items() if value == base]
    if nice:
        assert 1 <= len(lowered) <= 2, values
        assert server.process.pid in others  # the event loop's thread keeps its priority
    else:
        assert set(values.values()) == {base}


# Runs in a fresh interpreter: MXNet reads its OpenMP setting once, when loaded.
_THREADS_AFTER_A_FORWARD = """
import os, sys
from pathlib import Path
from predictor.runtime.threads import configure_openmp
if sys.argv[1] != "default":
    assert configure_openmp(int(sys.argv[1]))
import mxnet as mx
data = mx.nd.ones((1, 64, 96, 96))
weight = mx.nd.ones((64, 64, 3, 3))
mx.nd.Convolution(data, weight, kernel=(3, 3), num_filter=64, no_bias=True).wait_to_read()
print(len(list(Path("/proc/self/task").iterdir())))
"""


def threads_after_a_forward(setting: str) -> int:
    unset = (OPENMP_VARIABLE, "MXNET_OMP_MAX_THREADS")
    env = {name: value for name, value in os.environ.items() if name not in unset}
    done = subprocess.run(
        [sys.executable, "-c", _THREADS_AFTER_A_FORWARD, setting],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def test_model_cpu_threads_sizes_mxnets_openmp_team() -> None:
    """More OpenMP threads asked for, more threads in the process after a convolution."""
    one, two, three = (threads_after_a_forward(n) for n in ("1", "2", "3"))
    assert one < two < three, (one, two, three)


def test_openmp_cannot_be_resized_once_mxnet_is_loaded(caplog: pytest.LogCaptureFixture) -> None:
    import mxnet  # noqa: F401  (loaded here, as in every test process)

    wanted = 7 if os.environ.get(OPENMP_VARIABLE) != "7" else 5
    assert not configure_openmp(wanted)
    assert "already loaded" in caplog.text
    assert os.environ.get(OPENMP_VARIABLE) != str(wanted)


_TEMP_SPACE_BEFORE_MXNET = """
import os, sys
from predictor.runtime.memory import TEMP_COPY_VARIABLE, configure_temp_space
assert configure_temp_space(int(sys.argv[1]))
import mxnet
print(os.environ[TEMP_COPY_VARIABLE])
"""


def test_mxnets_temp_workspaces_are_set_before_it_loads() -> None:
    env = {name: value for name, value in os.environ.items() if name != TEMP_COPY_VARIABLE}
    done = subprocess.run(
        [sys.executable, "-c", _TEMP_SPACE_BEFORE_MXNET, "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.strip().splitlines()[-1] == "2"


def test_temp_workspaces_cannot_change_once_mxnet_is_loaded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import mxnet  # noqa: F401  (loaded here, as in every test process)

    wanted = 3 if os.environ.get(TEMP_COPY_VARIABLE) != "3" else 5
    assert not configure_temp_space(wanted)
    assert "already loaded" in caplog.text
    assert os.environ.get(TEMP_COPY_VARIABLE) != str(wanted)


_MAPPED_ONE_BY_ONE = """
import ctypes
from predictor.runtime.memory import MMAP_THRESHOLD_BYTES, tune_allocator
assert tune_allocator()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def mapped_alone(size):
    # glibc puts an mmapped block 16 bytes into a mapping of its own.
    pointer = libc.malloc(size)
    starts = {int(line.split("-")[0], 16) for line in open("/proc/self/maps")}
    libc.free(pointer)
    return pointer - 16 in starts

KiB = 1024
print(mapped_alone(MMAP_THRESHOLD_BYTES - 64 * KiB), mapped_alone(MMAP_THRESHOLD_BYTES + 64 * KiB))
print(MMAP_THRESHOLD_BYTES)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_buffers_below_the_mmap_threshold_come_from_the_heap_and_above_it_are_mapped() -> None:
    # A request's buffers (body, decoded photo, tensor) are under 4 MiB: reused from
    # the heap, they cost no page faults and no munmap (predictor/runtime/memory.py).
    done = subprocess.run(
        [sys.executable, "-c", _MAPPED_ONE_BY_ONE],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    below, above = done.stdout.splitlines()[0].split()
    assert (below, above) == ("False", "True")
    assert int(done.stdout.splitlines()[1]) == 4 * 1024 * 1024
