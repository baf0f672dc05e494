"""The batcher on its own: any callable is a replica, so its rules can be pinned exactly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from predictor.batching import Batcher, BatchFailed, Overloaded, ShuttingDown
from predictor.metrics import Metrics


class Recorder:
    """A replica that doubles numbers and remembers the batches it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("device out of memory")
        time.sleep(self.delay_s)
        return [2 * item for item in items]


async def submit(batcher: Batcher[int, int], item: int) -> int:
    with batcher.admit() as admission:
        return await admission.infer(item)


async def test_concurrent_items_share_a_forward_and_get_their_own_result() -> None:
    replica = Recorder()
    batcher = Batcher([replica], max_batch_size=8, max_delay_s=0.05, queue_max=100)
    batcher.start()
    results = await asyncio.gather(*(submit(batcher, i) for i in range(20)))
    assert results == [2 * i for i in range(20)]
    assert [len(b) for b in replica.batches] == [8, 8, 4]
    assert sorted(i for b in replica.batches for i in b) == list(range(20))
    assert replica.threads and all(t.startswith("forward-") for t in replica.threads)
    await batcher.stop(grace_s=1)


async def test_a_lone_item_runs_without_waiting_for_the_delay() -> None:
    replica = Recorder()
    batcher = Batcher([replica], max_batch_size=8, max_delay_s=10.0, queue_max=10)
    batcher.start()
    assert await asyncio.wait_for(submit(batcher, 21), timeout=5.0) == 42
    assert replica.batches == [[21]]
    await batcher.stop(grace_s=1)


async def test_an_admitted_item_still_on_its_way_is_waited_for_up_to_the_delay() -> None:
    replica = Recorder()
    batcher = Batcher([replica], max_batch_size=8, max_delay_s=0.5, queue_max=10)
    batcher.start()
    late = batcher.admit()  # e.g. still decoding its image
    early = asyncio.ensure_future(submit(batcher, 1))
    await asyncio.sleep(0.05)
    assert await late.infer(2) == 4
    late.release()
    assert await early == 2
    assert replica.batches == [[1, 2]]
    # An admission that never arrives delays the batch by at most the delay.
    absent = batcher.admit()
    started = time.monotonic()
    assert await submit(batcher, 3) == 6
    assert 0.4 <= time.monotonic() - started < 5.0
    absent.release()
    await batcher.stop(grace_s=1)


async def test_items_queued_during_a_forward_form_the_next_batch_at_once() -> None:
    replica = Recorder(delay_s=0.2)
    batcher = Batcher([replica], max_batch_size=8, max_delay_s=0.05, queue_max=100)
    batcher.start()
    first = asyncio.ensure_future(submit(batcher, 0))
    await asyncio.sleep(0.1)  # the first batch of one is now running
    rest = [asyncio.ensure_future(submit(batcher, i)) for i in range(1, 6)]
    await asyncio.gather(first, *rest)
    assert [len(b) for b in replica.batches] == [1, 5]
    await batcher.stop(grace_s=1)


async def test_queue_bound_rejects_at_once() -> None:
    metrics = Metrics()
    replica = Recorder(delay_s=0.1)
    batcher = Batcher([replica], max_batch_size=2, max_delay_s=0.0, queue_max=3, metrics=metrics)
    batcher.start()
    admissions = [batcher.admit() for _ in range(3)]
    assert batcher.queue_depth == 3
    with pytest.raises(Overloaded):
        batcher.admit()
    assert metrics.rejected._value.get() == 1
    admissions[0].release()
    admissions[0].release()  # idempotent
    assert batcher.queue_depth == 2
    batcher.admit().release()
    for admission in admissions[1:]:
        admission.release()
    assert batcher.queue_depth == 0
    await batcher.stop(grace_s=1)


async def test_an_abandoned_request_is_not_computed() -> None:
    replica = Recorder(delay_s=0.2)
    batcher = Batcher([replica], max_batch_size=4, max_delay_s=0.0, queue_max=10)
    batcher.start()
    running = asyncio.ensure_future(submit(batcher, 1))
    await asyncio.sleep(0.05)
    abandoned = asyncio.ensure_future(submit(batcher, 2))
    kept = asyncio.ensure_future(submit(batcher, 3))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    assert await running == 2
    assert await kept == 6
    assert [2] not in replica.batches and all(2 not in b for b in replica.batches)
    assert batcher.queue_depth == 0
    await batcher.stop(grace_s=1)


async def test_a_failing_forward_fails_its_batch_only() -> None:
    metrics = Metrics()
    replica = Recorder(fail_on=13)
    batcher = Batcher([replica], max_batch_size=4, max_delay_s=0.02, queue_max=10, metrics=metrics)
    batcher.start()
    outcomes = await asyncio.gather(
        *(submit(batcher, i) for i in (12, 13, 14)), return_exceptions=True
    )
    assert all(isinstance(o, BatchFailed) for o in outcomes)
    assert "out of memory" in str(outcomes[0])
    assert batcher.consecutive_failures == 1
    assert await submit(batcher, 5) == 10
    assert batcher.consecutive_failures == 0
    assert metrics.inference_failures._value.get() == 1
    await batcher.stop(grace_s=1)


async def test_several_replicas_share_the_queue() -> None:
    replicas = [Recorder(delay_s=0.05), Recorder(delay_s=0.05)]
    batcher = Batcher(replicas, max_batch_size=2, max_delay_s=0.0, queue_max=100)
    batcher.start()
    results = await asyncio.gather(*(submit(batcher, i) for i in range(16)))
    assert results == [2 * i for i in range(16)]
    assert all(r.batches for r in replicas), "both replicas must have worked"
    assert replicas[0].threads.isdisjoint(replicas[1].threads)
    await batcher.stop(grace_s=1)


async def test_stop_finishes_admitted_work_then_refuses() -> None:
    replica = Recorder(delay_s=0.1)
    batcher = Batcher([replica], max_batch_size=2, max_delay_s=0.0, queue_max=100)
    batcher.start()
    pending = [asyncio.ensure_future(submit(batcher, i)) for i in range(5)]
    await asyncio.sleep(0.01)
    await batcher.stop(grace_s=5)
    assert [p.result() for p in pending] == [0, 2, 4, 6, 8]
    with pytest.raises(ShuttingDown):
        batcher.admit()
    assert not batcher.running
