"""Dynamic batching: many concurrent requests, one forward pass.

One idea: a queue, and per model replica a worker that waits-or-fills and
then dispatches results to futures.

- Requests are *admitted* first. At most ``queue_max`` images may be admitted
  and not yet in a forward pass; beyond that `admit` raises `Overloaded` at
  once (the server answers 503) instead of queueing without bound.
- A worker takes the oldest image and waits until either ``max_batch_size``
  images are gathered or ``max_delay`` has passed *since that oldest image was
  queued*. Images that queued while the previous batch was running are
  therefore dispatched without further delay: the next batch fills while the
  device is busy.
- It only waits for images that are on their way: admitted, and still being
  decoded. When every admitted image is already in the batch, nothing can
  join it, so it runs at once; a lone request never pays the delay.
- Under a backlog (at least a whole further batch of images admitted beside
  the one being gathered) it waits longer, up to ``backlog_delay`` since the
  oldest image was queued, for the batch to fill. Those images are certain to
  come; on a CPU the forward pass and the decoding share the cores, and a
  small batch run now costs more CPU per image than a full one later, which
  the decoding, the slower stage then, would have used. Below a backlog the
  extra wait would only add latency, so it stays ``max_delay``.
- The forward pass runs on the replica's own thread, so the event loop keeps
  accepting and preprocessing requests meanwhile.
- Nothing is computed for nobody: an image whose requester went away (its
  future was cancelled) or whose deadline passed before its forward pass
  began is dropped from its batch. A deadline is answered when it passes
  (`DeadlineExceeded`), not when a worker next looks; an image whose forward
  pass has begun finishes it.
- A replica whose forward pass raised is *failing*: the error is logged once,
  that batch's callers get `BatchFailed`, and the replica waits a back-off
  (growing while failures repeat) before it takes the next batch, so that
  healthy replicas take the work. Any successful pass makes it healthy
  again; `probe` runs one on request (readiness checks use it when no
  traffic would).

The batcher knows nothing of images or MXNet: a replica is any callable that
maps a list of inputs to a list of outputs of the same length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, TypeVar

from predictor.errors import DeadlineExceeded, InferenceError, Overloaded, ShuttingDown
from predictor.service.metrics import ModelMetrics

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

Replica = Callable[[Sequence[In]], list[Out]]

# Pause of a failing replica before its next batch: doubles per failure in a
# row, from the first to the last value. Short enough that one bad batch costs
# a single replica little; long enough that a broken one does not eat the queue.
FAILURE_BACKOFF_S = (0.1, 5.0)
# Error texts reach clients and logs: keep them to one short line.
_MAX_REASON_CHARS = 200


class BatchFailed(InferenceError):
    """The forward pass that this item was part of raised an error."""


@dataclass
class ReplicaHealth:
    """What the batcher knows about one replica's recent forward passes."""

    name: str
    consecutive_failures: int = 0
    last_error: str | None = None
    retry_at: float = 0.0  # monotonic time before which a failing replica takes no batch

    @property
    def healthy(self) -> bool:
        """True unless the most recent forward pass of this replica failed."""
        return self.consecutive_failures == 0


@dataclass(eq=False)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    admission: Admission[In, Out] | None  # None for a probe, which holds no place
    deadline: float | None = None  # monotonic
    enqueued_at: float = field(default_factory=time.monotonic)
    dispatched: bool = False


class Admission(Generic[In, Out]):
    """A reserved place in the queue; use as a context manager around `infer`."""

    def __init__(self, batcher: Batcher[In, Out]) -> None:
        self._batcher = batcher
        self._held = True
        # Set when the item's forward pass has run: how long it waited in the
        # queue for it, and how long the pass took (seconds).
        self.queued_s = 0.0
        self.forward_s = 0.0

    def __enter__(self) -> Admission[In, Out]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    async def infer(self, item: In, deadline: float | None = None) -> Out:
        """Queue ``item`` for the next batch and wait for its own result.

        ``deadline`` (a `time.monotonic` value): if the item's forward pass
        has not begun by then, raise `DeadlineExceeded` at that moment and
        never compute it.
        """
        return await self._batcher._enqueue(item, self, deadline)

    @property
    def held(self) -> bool:
        """True until the place is given back."""
        return self._held

    def release(self) -> None:
        """Give the place back (idempotent): on dispatch, failure or abandonment."""
        if self._held:
            self._held = False
            self._batcher._release_slot()


class Batcher(Generic[In, Out]):
    """Collects items from concurrent callers into batches for one or more replicas."""

    def __init__(
        self,
        replicas: Sequence[Replica[In, Out]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        queue_max: int,
        backlog_delay_s: float = 0.0,
        metrics: ModelMetrics | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("at least one replica is needed")
        if names is not None and len(names) != len(replicas):
            raise ValueError("one name per replica")
        self._replicas = list(replicas)
        self.health = [
            ReplicaHealth(name) for name in (names or [f"#{i}" for i in range(len(replicas))])
        ]
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._backlog_delay_s = max(backlog_delay_s, max_delay_s)
        self._queue_max = queue_max
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._admitted = 0
        self.admitted_total = 0  # admissions since start, for the shutdown report
        self._running_batches = 0
        self._workers: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._stopping = False  # admits nothing new
        self._stopped = False  # runs nothing new
        self._idle = asyncio.Event()
        self._idle.set()
        self._report_health()

    @property
    def max_batch_size(self) -> int:
        """The most items one forward pass takes."""
        return self._max_batch_size

    @property
    def queue_depth(self) -> int:
        """Images admitted and not yet dispatched to a forward pass."""
        return self._admitted

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return bool(self._workers) and not self._stopping

    @property
    def healthy(self) -> bool:
        """True while at least one replica's most recent forward pass succeeded."""
        return any(h.healthy for h in self.health)

    @property
    def failure_reason(self) -> str | None:
        """The latest error of a failing replica, or None when every replica is healthy."""
        failing = [h for h in self.health if not h.healthy]
        if not failing:
            return None
        latest = max(failing, key=lambda h: h.retry_at)
        return f"replica {latest.name}: {latest.last_error}"

    def start(self) -> None:
        """Start one worker per replica on the running event loop."""
        if self._workers:
            return
        for index, replica in enumerate(self._replicas):
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{index}")
            self._executors.append(executor)
            task = asyncio.get_running_loop().create_task(
                self._work(index, replica, executor), name=f"batcher-worker-{index}"
            )
            self._workers.append(task)

    def admit(self) -> Admission[In, Out]:
        """Reserve a place in the queue, or raise `Overloaded` / `ShuttingDown` at once."""
        if self._stopping:
            raise ShuttingDown("the server is shutting down")
        if self._admitted >= self._queue_max:
            if self._metrics:
                self._metrics.rejected.inc()
            raise Overloaded(f"the queue is full ({self._queue_max} images waiting)")
        self._admitted += 1
        self.admitted_total += 1
        self._idle.clear()
        self._report_depth()
        return Admission(self)

    async def probe(self, item: In) -> bool:
        """Run ``item`` through a forward pass like any request; True if it succeeded.

        A failing replica becomes healthy again with any successful pass; this
        gives it one when no request would (e.g. a readiness check while the
        load balancer sends no traffic). The item takes no place in the queue.
        """
        if self._stopping or self._stopped:
            return False
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, future, None))
        try:
            await future
        except (BatchFailed, ShuttingDown):
            return False
        return True

    async def stop(self, grace_s: float) -> None:
        """Admit nothing more, finish admitted work for up to ``grace_s``, then stop.

        Whatever is still waiting then is answered with `ShuttingDown`, never
        left without an answer.
        """
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        # From here on nothing takes items from the queue: refuse new ones at once.
        self._stopped = True
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            _fail(pending, ShuttingDown("the server stopped before this ran"))
            if pending.admission is not None:
                pending.admission.release()
        # A forward pass cut off by the grace period still runs to its end on
        # its thread: wait for it off the event loop, which keeps answering.
        for executor in self._executors:
            await asyncio.to_thread(executor.shutdown, wait=True)
        self._workers.clear()
        self._executors.clear()

    async def _enqueue(
        self, item: In, admission: Admission[In, Out], deadline: float | None
    ) -> Out:
        if self._stopped:
            # Admitted before the stop but decoded after the grace period.
            admission.release()
            raise ShuttingDown("the server stopped before this ran")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        pending = _Pending(item, future, admission, deadline)
        self._queue.put_nowait(pending)
        if deadline is None:
            return await future
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), self._expire, pending)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, pending: _Pending[In, Out]) -> None:
        """The deadline passed: answer now unless the forward pass has begun."""
        if pending.dispatched or pending.future.done():
            return
        waited_ms = (time.monotonic() - pending.enqueued_at) * 1000.0
        pending.future.set_exception(
            DeadlineExceeded(f"no forward pass began in time (queued {waited_ms:.0f} ms)")
        )
        if self._metrics:
            self._metrics.deadline_exceeded.inc()
        # The worker that dequeues it drops it; its place is free from now on.
        if pending.admission is not None:
            pending.admission.release()

    def _release_slot(self) -> None:
        self._admitted -= 1
        self._report_depth()
        self._update_idle()

    def _update_idle(self) -> None:
        if self._admitted == 0 and self._running_batches == 0:
            self._idle.set()

    def _report_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.set(self._admitted)

    def _report_health(self) -> None:
        if self._metrics:
            for health in self.health:
                self._metrics.replica_healthy(health.name).set(1 if health.healthy else 0)

    async def _work(
        self, index: int, replica: Replica[In, Out], executor: ThreadPoolExecutor
    ) -> None:
        loop = asyncio.get_running_loop()
        health = self.health[index]
        while True:
            pause = health.retry_at - time.monotonic()
            if not health.healthy and pause > 0:
                await asyncio.sleep(pause)
            batch = await self._collect()
            # Counted as running before the places are given back, so that
            # the batcher never looks idle in between.
            self._running_batches += 1
            live = self._dispatch(batch)
            try:
                if live:
                    await self._run(loop, index, replica, executor, live)
            finally:
                self._running_batches -= 1
                self._update_idle()

    def _dispatch(self, batch: list[_Pending[In, Out]]) -> list[_Pending[In, Out]]:
        """Mark a collected batch as running; keep only the items someone still waits for."""
        now = time.monotonic()
        live = []
        for pending in batch:
            if pending.admission is not None:
                pending.admission.release()
            if not self._wanted(pending):
                continue
            if pending.deadline is not None and now >= pending.deadline:
                self._expire(pending)
                continue
            pending.dispatched = True
            live.append(pending)
        return live

    def _wanted(self, pending: _Pending[In, Out]) -> bool:
        """False for an item nobody waits for any more (counted when its client left)."""
        if pending.future.cancelled():
            # The requester went away (e.g. the client disconnected).
            if self._metrics:
                self._metrics.abandoned.inc()
            if pending.admission is not None:
                pending.admission.release()
            return False
        return not pending.future.done()  # done: its deadline already answered it

    async def _collect(self) -> list[_Pending[In, Out]]:
        """The next batch: the oldest wanted item, then whatever joins it in time."""
        first = await self._queue.get()
        while not self._wanted(first):
            first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued_at + self._max_delay_s
        backlog_deadline = first.enqueued_at + self._backlog_delay_s
        while len(batch) < self._max_batch_size:
            if not self._queue.empty():
                pending = self._queue.get_nowait()
                if self._wanted(pending):
                    batch.append(pending)
                continue
            held = sum(1 for p in batch if p.admission is not None and p.admission.held)
            others = self._admitted - held
            if others <= 0:
                break  # no other admitted image is on its way
            backlog = others >= self._max_batch_size
            remaining = (backlog_deadline if backlog else deadline) - time.monotonic()
            if remaining <= 0:
                break
            try:
                pending = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            if self._wanted(pending):
                batch.append(pending)
        return batch

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        index: int,
        replica: Replica[In, Out],
        executor: ThreadPoolExecutor,
        live: list[_Pending[In, Out]],
    ) -> None:
        items = [p.item for p in live]
        dispatched = time.monotonic()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(executor, replica, items)
            if len(results) != len(items):
                raise RuntimeError(f"replica returned {len(results)} results for {len(items)}")
        except asyncio.CancelledError:
            # stop() after the grace period: answer rather than leave callers waiting.
            for pending in live:
                _fail(pending, ShuttingDown("the server stopped during this forward pass"))
            raise
        except Exception as exc:  # any failure of the model must reach its callers, not kill us
            self._record_failure(index, len(items), exc)
            failure = BatchFailed(short_reason(exc))
            for pending in live:
                _fail(pending, failure)
            return
        self._record_success(index)
        if self._metrics:
            self._metrics.record_batch(len(items), time.perf_counter() - started)
        forward_s = time.perf_counter() - started
        for pending, result in zip(live, results, strict=True):
            if pending.admission is not None:
                pending.admission.queued_s = dispatched - pending.enqueued_at
                pending.admission.forward_s = forward_s
            if not pending.future.done():
                pending.future.set_result(result)

    def _record_failure(self, index: int, size: int, exc: Exception) -> None:
        health = self.health[index]
        health.consecutive_failures += 1
        health.last_error = short_reason(exc)
        low, high = FAILURE_BACKOFF_S
        backoff = min(high, low * 2 ** (health.consecutive_failures - 1))
        health.retry_at = time.monotonic() + backoff
        if self._metrics:
            self._metrics.inference_failures.inc()
        # Once per streak at ERROR, with the context an operator needs; a
        # replica that keeps failing must not flood the log.
        level = logging.ERROR if health.consecutive_failures == 1 else logging.DEBUG
        log.log(
            level,
            "forward pass failed on replica %s (batch of %d, failure %d in a row; "
            "next batch in %.1f s): %s: %s",
            health.name,
            size,
            health.consecutive_failures,
            backoff,
            type(exc).__name__,
            health.last_error,
        )
        self._report_health()

    def _record_success(self, index: int) -> None:
        health = self.health[index]
        if health.healthy:
            return
        log.warning(
            "replica %s recovered after %d failed forward passes",
            health.name,
            health.consecutive_failures,
        )
        health.consecutive_failures = 0
        health.last_error = None
        health.retry_at = 0.0
        self._report_health()


def short_reason(exc: BaseException) -> str:
    """One short line saying why ``exc`` happened, for clients and logs."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[: _MAX_REASON_CHARS - 3] + "..."
    return reason


def _fail(pending: _Pending[In, Out], error: Exception) -> None:
    if not pending.future.done():
        pending.future.set_exception(error)
