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
- The forward pass runs on the replica's own thread, so the event loop keeps
  accepting and preprocessing requests meanwhile.
- An image whose requester went away (its future was cancelled) is dropped
  before the forward pass rather than computed for nobody.

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

from predictor.metrics import Metrics

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

Replica = Callable[[Sequence[In]], list[Out]]


class Overloaded(RuntimeError):
    """The queue is full; the caller should retry later."""


class ShuttingDown(RuntimeError):
    """The batcher is stopping and admits no new work."""


class BatchFailed(RuntimeError):
    """The forward pass that this item was part of raised an error."""


@dataclass(eq=False)
class _Pending(Generic[In, Out]):
    item: In
    future: asyncio.Future[Out]
    admission: Admission[In, Out]
    enqueued_at: float = field(default_factory=time.monotonic)


class Admission(Generic[In, Out]):
    """A reserved place in the queue; use as a context manager around `infer`."""

    def __init__(self, batcher: Batcher[In, Out]) -> None:
        self._batcher = batcher
        self._held = True

    def __enter__(self) -> Admission[In, Out]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    async def infer(self, item: In) -> Out:
        """Queue ``item`` for the next batch and wait for its own result."""
        return await self._batcher._enqueue(item, self)

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
        metrics: Metrics | None = None,
    ) -> None:
        if not replicas:
            raise ValueError("at least one replica is needed")
        self._replicas = list(replicas)
        self._max_batch_size = max_batch_size
        self._max_delay_s = max_delay_s
        self._queue_max = queue_max
        self._metrics = metrics
        self._queue: asyncio.Queue[_Pending[In, Out]] = asyncio.Queue()
        self._admitted = 0
        self._running_batches = 0
        self._workers: list[asyncio.Task[None]] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self.consecutive_failures = 0

    @property
    def queue_depth(self) -> int:
        """Images admitted and not yet dispatched to a forward pass."""
        return self._admitted

    @property
    def running(self) -> bool:
        """True between `start` and `stop`."""
        return bool(self._workers) and not self._stopping

    def start(self) -> None:
        """Start one worker per replica on the running event loop."""
        if self._workers:
            return
        for index, replica in enumerate(self._replicas):
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-{index}")
            self._executors.append(executor)
            task = asyncio.get_running_loop().create_task(
                self._work(replica, executor), name=f"batcher-worker-{index}"
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
        self._idle.clear()
        self._report_depth()
        return Admission(self)

    async def stop(self, grace_s: float) -> None:
        """Admit nothing more, finish admitted work for up to ``grace_s``, then stop."""
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout=grace_s)
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ShuttingDown("the server stopped before this ran"))
            pending.admission.release()
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._workers.clear()
        self._executors.clear()

    async def _enqueue(self, item: In, admission: Admission[In, Out]) -> Out:
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, future, admission))
        return await future

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

    async def _work(self, replica: Replica[In, Out], executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [p for p in batch if not p.future.done()]
            self._running_batches += 1
            for pending in batch:
                pending.admission.release()
            try:
                if live:
                    await self._run(loop, replica, executor, live)
            finally:
                self._running_batches -= 1
                self._update_idle()

    async def _collect(self) -> list[_Pending[In, Out]]:
        first = await self._queue.get()
        batch = [first]
        deadline = first.enqueued_at + self._max_delay_s
        while len(batch) < self._max_batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            if self._admitted <= len(batch):
                break  # no other admitted image is on its way
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        replica: Replica[In, Out],
        executor: ThreadPoolExecutor,
        live: list[_Pending[In, Out]],
    ) -> None:
        items = [p.item for p in live]
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(executor, replica, items)
            if len(results) != len(items):
                raise RuntimeError(f"replica returned {len(results)} results for {len(items)}")
        except Exception as exc:  # any failure of the model must reach its callers, not kill us
            self.consecutive_failures += 1
            if self._metrics:
                self._metrics.inference_failures.inc()
            log.error(
                "forward pass of %d images failed (%d in a row): %s",
                len(items),
                self.consecutive_failures,
                exc,
            )
            failure = BatchFailed(str(exc) or type(exc).__name__)
            for pending in live:
                if not pending.future.done():
                    pending.future.set_exception(failure)
            return
        self.consecutive_failures = 0
        if self._metrics:
            self._metrics.batch_size.observe(len(items))
            self._metrics.inference_latency.observe(time.perf_counter() - started)
        for pending, result in zip(live, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)
