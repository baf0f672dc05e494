"""The batcher on its own: any callable is a replica, so its rules can be pinned exactly."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from predictor.errors import DeadlineExceeded, Overloaded, ShuttingDown
from predictor.service.batching import FAILURE_BACKOFF_S, Batcher, BatchFailed, short_reason
from predictor.service.metrics import Metrics


class Recorder:
    """A replica that doubles numbers and remembers the batches it saw."""

    def __init__(self, delay_s: float = 0.0, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.broken = False  # when True, every forward pass fails, as a lost device's do
        self.threads: set[str] = set()

    def __call__(self, items: Sequence[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.broken or (self.fail_on is not None and self.fail_on in items):
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


async def test_under_a_backlog_a_batch_waits_longer_to_fill() -> None:
    replica = Recorder()
    batcher = Batcher(
        [replica], max_batch_size=2, max_delay_s=0.0, backlog_delay_s=0.5, queue_max=10
    )
    batcher.start()
    # One image on its way beside the batch: less than a further batch, no backlog,
    # so the batch waits only BATCH_MAX_DELAY_MS (here none) and runs alone.
    late = batcher.admit()
    assert await submit(batcher, 1) == 2
    assert await late.infer(2) == 4
    late.release()
    assert replica.batches == [[1], [2]]
    # Two on their way (a whole further batch): the batch waits for the first to come.
    on_their_way = [batcher.admit(), batcher.admit()]
    early = asyncio.ensure_future(submit(batcher, 3))
    await asyncio.sleep(0.1)
    assert not early.done()
    assert await on_their_way[0].infer(4) == 8
    assert await early == 6
    assert replica.batches[2] == [3, 4]
    # The last one has nothing beside it and runs at once; places are given back.
    assert await on_their_way[1].infer(5) == 10
    for admission in on_their_way:
        admission.release()
    assert replica.batches[3] == [5]
    # Images that never come delay a batch by the backlog delay at most.
    absent = [batcher.admit(), batcher.admit()]
    started = time.monotonic()
    assert await submit(batcher, 6) == 12
    assert 0.4 <= time.monotonic() - started < 5.0
    for admission in absent:
        admission.release()
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
    metrics = Metrics().for_model("m")
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
    metrics = Metrics().for_model("m")
    replica = Recorder(fail_on=13)
    batcher = Batcher([replica], max_batch_size=4, max_delay_s=0.02, queue_max=10, metrics=metrics)
    batcher.start()
    outcomes = await asyncio.gather(
        *(submit(batcher, i) for i in (12, 13, 14)), return_exceptions=True
    )
    assert all(isinstance(o, BatchFailed) for o in outcomes)
    assert "out of memory" in str(outcomes[0])
    assert batcher.health[0].consecutive_failures == 1
    assert not batcher.healthy
    assert batcher.failure_reason == "replica #0: device out of memory"
    assert await submit(batcher, 5) == 10
    assert batcher.health[0].consecutive_failures == 0
    assert batcher.healthy and batcher.failure_reason is None
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


async def test_an_item_past_its_deadline_is_answered_then_and_never_computed() -> None:
    metrics = Metrics().for_model("m")
    replica = Recorder(delay_s=0.3)
    batcher = Batcher([replica], max_batch_size=1, max_delay_s=0.0, queue_max=10, metrics=metrics)
    batcher.start()
    busy = asyncio.ensure_future(submit(batcher, 1))  # occupies the replica for 0.3 s
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with (
        batcher.admit() as admission,
        pytest.raises(DeadlineExceeded, match="no forward pass began in time"),
    ):
        await admission.infer(2, deadline=time.monotonic() + 0.05)
    # Answered at its deadline, not when the replica came free.
    assert time.monotonic() - started < 0.25
    assert batcher.queue_depth == 0, "an expired item gives its place back at once"
    assert await busy == 2
    assert await submit(batcher, 3) == 6
    assert all(2 not in batch for batch in replica.batches)
    assert metrics.deadline_exceeded._value.get() == 1
    await batcher.stop(grace_s=1)


async def test_an_item_whose_forward_pass_began_finishes_past_its_deadline() -> None:
    replica = Recorder(delay_s=0.2)
    batcher = Batcher([replica], max_batch_size=1, max_delay_s=0.0, queue_max=10)
    batcher.start()
    with batcher.admit() as admission:
        assert await admission.infer(4, deadline=time.monotonic() + 0.05) == 8
    await batcher.stop(grace_s=1)


async def test_an_abandoned_request_is_counted() -> None:
    metrics = Metrics().for_model("m")
    replica = Recorder(delay_s=0.2)
    batcher = Batcher([replica], max_batch_size=4, max_delay_s=0.0, queue_max=10, metrics=metrics)
    batcher.start()
    running = asyncio.ensure_future(submit(batcher, 1))
    await asyncio.sleep(0.05)
    abandoned = asyncio.ensure_future(submit(batcher, 2))
    await asyncio.sleep(0.01)
    abandoned.cancel()
    assert await running == 2
    assert await submit(batcher, 3) == 6
    assert metrics.abandoned._value.get() == 1
    await batcher.stop(grace_s=1)


async def test_a_broken_replica_is_unhealthy_until_a_pass_succeeds_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics().for_model("m")
    replica = Recorder()
    replica.broken = True
    batcher = Batcher(
        [replica],
        max_batch_size=2,
        max_delay_s=0.0,
        queue_max=10,
        metrics=metrics,
        names=["gpu(0)"],
    )
    batcher.start()
    for item in range(3):
        with pytest.raises(BatchFailed):
            await submit(batcher, item)
    assert not batcher.healthy
    assert batcher.health[0].consecutive_failures == 3
    assert (
        'predictor_replica_healthy{model="m",replica="gpu(0)"} 0.0'
        in metrics._metrics.render().decode()
    )
    assert not await batcher.probe(0)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1, "a failing streak is logged once"
    assert "replica gpu(0) (batch of 1, failure 1 in a row" in errors[0].getMessage()
    replica.broken = False
    assert await batcher.probe(0)
    assert batcher.healthy
    assert (
        'predictor_replica_healthy{model="m",replica="gpu(0)"} 1.0'
        in metrics._metrics.render().decode()
    )
    assert any("recovered after 4 failed forward passes" in r.getMessage() for r in caplog.records)
    await batcher.stop(grace_s=1)


async def test_a_failing_replica_pauses_and_the_healthy_one_takes_the_work() -> None:
    broken, healthy = Recorder(), Recorder(delay_s=0.01)
    broken.broken = True
    batcher = Batcher([broken, healthy], max_batch_size=1, max_delay_s=0.0, queue_max=100)
    batcher.start()
    outcomes = []
    for item in range(20):
        try:
            outcomes.append(await submit(batcher, item))
        except BatchFailed:
            outcomes.append(-1)
    # The broken replica failed its first batch and then paused for its back-off
    # (FAILURE_BACKOFF_S[0] and longer): nearly everything went to the other one.
    assert FAILURE_BACKOFF_S[0] >= 0.1
    assert len(broken.batches) <= 3, broken.batches
    assert outcomes.count(-1) == len(broken.batches)
    assert batcher.healthy, "one healthy replica keeps the server ready"
    await batcher.stop(grace_s=1)


async def test_stop_after_the_grace_period_answers_everything_waiting() -> None:
    replica = Recorder(delay_s=0.5)
    batcher = Batcher([replica], max_batch_size=1, max_delay_s=0.0, queue_max=100)
    batcher.start()
    pending = [asyncio.ensure_future(submit(batcher, i)) for i in range(4)]
    await asyncio.sleep(0.05)
    await batcher.stop(grace_s=0.1)
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert outcomes[0] == 0 or isinstance(outcomes[0], ShuttingDown)
    assert all(isinstance(o, ShuttingDown) for o in outcomes[1:]), outcomes
    assert batcher.queue_depth == 0


def test_short_reason_is_one_bounded_line() -> None:
    assert short_reason(RuntimeError("first line\nsecond")) == "first line"
    assert short_reason(RuntimeError("")) == "RuntimeError"
    assert len(short_reason(RuntimeError("x" * 1000))) == 200


async def test_an_item_admitted_before_stop_and_queued_after_it_is_refused_at_once() -> None:
    batcher = Batcher([Recorder()], max_batch_size=2, max_delay_s=0.0, queue_max=10)
    batcher.start()
    late = batcher.admit()  # e.g. still decoding when the grace period ends
    await batcher.stop(grace_s=0.0)
    started = time.monotonic()
    with pytest.raises(ShuttingDown, match="stopped before this ran"):
        await late.infer(1, deadline=time.monotonic() + 10)
    assert time.monotonic() - started < 1
    assert batcher.queue_depth == 0
