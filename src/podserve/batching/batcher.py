"""Dynamic batching: one batcher per model, shared by every surface.

Requests wait in a priority queue; one collector task forms a batch from compatible requests
(same shapes beyond the batch axis) up to the batch cap and hands it to an inference thread;
the next batch is collected meanwhile and starts before the last one's answers are encoded.
A full batch waiting for a busy single instance is queued in its inference thread, which starts
it the moment the running batch returns, with no event-loop turn between (at c=32 the loop is
busy answering, and that turn left MiniLM idle 6% of the time); not while a priority was asked
for in the last 10 s, since a request of a higher level could then no longer pass it.
How long a free model waits for its batch to fill, and how many rows it takes, is the policy's
choice (:mod:`podserve.batching.policy`). Several instances run batches side by side.

Back-pressure: past ``max_queue_size`` waiting requests, ``submit`` raises
:class:`OverloadedError` at once instead of letting the queue grow. A request whose client
timeout expires while queued fails with :class:`DeadlineExceededError` and never runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from podserve import metrics
from podserve.batching.inline import InlineGate
from podserve.batching.oom import after_oom
from podserve.batching.policy import (
    Arrivals,
    BatchCurve,
    Policy,
    efficient_rows,
    fill_wait,
    pipelined_rows,
)
from podserve.batching.queue import Item, pop_batch, push_back
from podserve.batching.shapes import batch_key, check_rows, concat, rows_like_first, split
from podserve.batching.stats import BatcherStats
from podserve.errors import (
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    OverloadedError,
    PodserveError,
    ResourceExhaustedError,
)

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
InferFn = Callable[[Arrays], Arrays]
PRIORITY_MEMORY_S = 10.0  # batches are queued early only when no priority was asked this long


class Batcher:
    """Collects requests into batches and runs them on one inference thread."""

    def __init__(
        self,
        name: str,
        infer: InferFn,
        *,
        max_batch_size: int,
        max_queue_delay_s: float,
        preferred_batch_sizes: tuple[int, ...] = (),
        max_queue_size: int = 4096,
        inline_below_s: float = 0.0,
        policy: Policy = "fixed_delay",  # the manifest's default is adaptive
        curve: dict[int, float] | None = None,
        instances: Sequence[InferFn] = (),
    ) -> None:
        self.name = name
        # Several instances (Triton's instance group): a batch runs on whichever is free.
        self._instances = list(instances) or [infer]
        self._free = list(range(len(self._instances)))[::-1]  # idle instances, 0 on top
        self.batched = max_batch_size > 0
        self.max_batch_size = max(max_batch_size, 1)
        self.batch_cap = self.max_batch_size  # may be lowered by the memory budget / OOM
        self.max_queue_delay_s = max_queue_delay_s
        self.preferred = tuple(sorted(p for p in preferred_batch_sizes if p > 0))
        self.max_queue_size = max_queue_size
        self.policy: Policy = policy
        self.curve = BatchCurve(curve)  # seconds per batch size: warm-up, then every batch
        self._arrivals = Arrivals(max_queue_delay_s)
        self._efficient, self._cap_checked = self.batch_cap, -1
        # Cheap models run on the event loop (measured; see batching/inline.py).
        self._inline = InlineGate(inline_below_s if len(self._instances) == 1 else 0.0)
        self.stats = BatcherStats()
        self._heap: list[Item] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            len(self._instances), thread_name_prefix=f"infer-{name}"
        )
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._inflight_rows = 0
        # Rows in the model or queued at the last batches' starts: a closed-loop client whose
        # answer is being encoded is in neither, so the recent peak counts it.
        self._population: collections.deque[int] = collections.deque(maxlen=16)
        self._behind = False  # a full batch waits in the (single) instance's thread queue
        self._priority_at = -math.inf  # when a request last asked for a priority level
        self._running: set[asyncio.Task[None]] = set()
        self._queued_rows = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._depth = metrics.QUEUE_DEPTH.labels(model=name)
        self._compute_hist = metrics.COMPUTE_SECONDS.labels(model=name)
        self._batch_hist = metrics.BATCH_SIZE.labels(model=name)
        self._queue_hist = metrics.QUEUE_SECONDS.labels(model=name)
        metrics.BATCH_CAP.labels(model=name).set(self.batch_cap)

    # --- public ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._collect(), name=f"batcher-{self.name}"
            )

    @property
    def pending(self) -> int:
        return len(self._heap) + self._inflight

    async def submit(
        self,
        inputs: dict[str, np.ndarray],
        *,
        priority: int = 0,
        timeout_s: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Queue one request (batch axis 0) and wait for its outputs."""
        if self._task is None:  # closed (or never started): nothing would run it
            raise ModelNotReadyError(f"model '{self.name}' is being unloaded")
        if len(self._heap) >= self.max_queue_size:
            raise OverloadedError(
                f"model '{self.name}' has {len(self._heap)} requests waiting (limit "
                f"{self.max_queue_size}); retry later or add replicas"
            )
        rows = next(iter(inputs.values())).shape[0] if self.batched else 1
        if self.batched and rows > self.max_batch_size:
            raise InvalidRequestError(
                f"batch of {rows} exceeds model '{self.name}' max_batch_size {self.max_batch_size}"
            )
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        # Triton: priority 1 is the highest level, 0 means "default" (lowest here).
        level = priority if priority > 0 else 1 << 30
        if priority > 0:
            self._priority_at = now
        item = Item(
            (level, next(self._seq)),
            rows,
            inputs,
            loop.create_future(),
            now,
            now + timeout_s if timeout_s else None,
            batch_key(inputs) if self.batched else (),
        )
        heapq.heappush(self._heap, item)
        self._queued_rows += rows
        self._arrivals.arrived(now, rows)
        self._depth.set(len(self._heap))
        self._idle.clear()
        self._wakeup.set()
        return await item.future

    async def drain(self) -> None:
        """Wait until every accepted request has been answered."""
        while self._heap or self._inflight:
            self._idle.clear()
            await self._idle.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for item in self._heap:
            if not item.future.done():
                item.future.set_exception(ModelNotReadyError(f"model '{self.name}' was unloaded"))
        self._heap, self._queued_rows = [], 0
        await asyncio.shield(asyncio.gather(*self._running))  # the running batches: no blocking
        self._executor.shutdown(wait=False)

    # --- collection -----------------------------------------------------------------------

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._heap:
                if len(self._free) == len(self._instances) and self._inflight == 0:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if not self._free and not self._may_queue_behind():
                self._wakeup.clear()  # busy: the next batch grows until the model frees up
                await self._wakeup.wait()
                continue
            behind = not self._free
            batch = await self._form_batch()
            if batch and self._inline.active and not behind:  # cheap model: run here, no hop
                await self._execute(batch, 0)
            elif batch:
                self._behind = self._behind or behind
                slot = 0 if behind else self._free.pop()
                task = loop.create_task(self._execute(batch, slot, behind=behind))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    def _may_queue_behind(self) -> bool:
        """A busy single instance with a full batch waiting: queue it in the inference thread
        (see the module). Not while priorities are in use: a later request could not pass."""
        return (
            len(self._instances) == 1
            and time.monotonic() - self._priority_at > PRIORITY_MEMORY_S
            and self.batch_cap > 1  # batching off: priorities reorder every request
            and not self._behind
            and not self._inline.active
            and bool(self._heap)
            and rows_like_first(self._heap) >= self._take_cap()
        )

    async def _form_batch(self) -> list[Item]:
        """Pop a batch, waiting for it to fill as the policy says; expired items are dropped."""
        first = self._heap[0]
        first_seen = first.enqueued
        cap = self._take_cap()
        if self.batched and self.max_queue_delay_s > 0:
            delay, target = fill_wait(self, self._arrivals, self._queued_rows, self._target(cap))
            self._arrivals.dispatched(first_seen, self._queued_rows - first.rows)
            deadline = first_seen + delay
            while (  # rows of other shapes never fill the head's batch
                delay > 0
                and rows_like_first(self._heap) < min(target, self._target(cap))
                and (wait := deadline - time.monotonic()) > 0
            ):
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except TimeoutError:
                    break
        popped = pop_batch(self._heap, cap, self.batched, self.name)
        self._queued_rows -= popped.rows_left_queue
        self.stats.fail += popped.expired
        self._depth.set(len(self._heap))
        return popped.batch

    def _target(self, cap: int) -> int:
        rows = self._queued_rows
        for p in self.preferred:
            if rows <= p <= cap:
                return p
        return cap

    def _take_cap(self) -> int:
        """The most rows a batch takes: the cap, or (adaptive) the curve's efficient size."""
        if self.policy != "adaptive" or not self.batched:
            return self.batch_cap
        if self.stats.execution_count >= self._cap_checked + 16 or self._cap_checked < 0:
            self._cap_checked = self.stats.execution_count  # the curve moves slowly
            self._efficient = efficient_rows(self.curve, self.batch_cap)
        rows = min(self._efficient, self.batch_cap)
        if len(self._instances) > 1:
            return rows
        now = self._queued_rows + self._inflight_rows
        return pipelined_rows(self.curve, rows, max(now, *self._population, 0))

    # --- execution ------------------------------------------------------------------------

    async def _execute(
        self, batch: list[Item], slot: int, *, retrying: bool = False, behind: bool = False
    ) -> None:
        loop = asyncio.get_running_loop()
        rows = sum(i.rows for i in batch)
        self._inflight += len(batch)
        self._inflight_rows += rows
        self._population.append(self._inflight_rows + self._queued_rows)
        start = time.monotonic()
        retry: list[list[Item]] = []
        handed = False
        threaded = behind or not self._inline.active  # it may flip while this batch runs
        try:
            inputs = concat([i.inputs for i in batch])
            outputs: Arrays | None
            if not threaded:
                outputs = self._timed_run(slot, inputs, rows, None)
            else:
                try:
                    expiring = batch if behind else None
                    outputs = await loop.run_in_executor(
                        self._executor, self._timed_run, slot, inputs, rows, expiring
                    )
                finally:
                    if self._behind and not retrying:  # the batch queued behind runs now
                        self._behind, handed = False, True
                        self._wakeup.set()
                # Requests wait: start them before encoding these answers (fixed delay: from
                # half a batch, else the loop first takes in requests still arriving).
                waiting, most = self._queued_rows, 2 * self._queued_rows >= self.batch_cap
                if not (retrying or handed) and waiting and (self.policy == "adaptive" or most):
                    handed = True
                    await self._hand_over(slot)
            if outputs is None:  # queued behind, and a deadline passed before it could start
                self._requeue(batch)
            else:
                self._deliver(batch, outputs, rows, start)
        except ResourceExhaustedError as exc:  # out of memory: retried below, outside `except`
            retry = after_oom(self, batch, exc)
        except Exception as exc:  # the model raised: every request of the batch fails
            err = (
                exc
                if isinstance(exc, PodserveError)
                else InferenceError(f"model '{self.name}' failed: {type(exc).__name__}: {exc}")
            )
            if not isinstance(exc, PodserveError):
                log.exception("model %s raised during inference", self.name)
            self.stats.fail += len(batch)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(err)
        finally:
            self._inflight -= len(batch)
            self._inflight_rows -= rows
            if not self._heap and not self._inflight:
                self._idle.set()
        for half in retry:  # no await since the finally: drain() still sees them in flight
            await self._execute(half, slot, retrying=True)
        if threaded and not handed and not retrying:
            # Not handed over early (little waiting, a failure, or an OOM split): the model is
            # free only now, so the next batch sees the lowered cap and never races the halves.
            self._free.append(slot)
            self._wakeup.set()

    def _deliver(self, batch: list[Item], outputs: Arrays, rows: int, start: float) -> None:
        parts = split(outputs, [i.rows for i in batch]) if self.batched else [outputs]
        self._record(batch, rows, start, time.monotonic() - start)
        for item, part in zip(batch, parts, strict=True):
            if not item.future.done():
                item.future.set_result(part)
        self._arrivals.answered(batch[0].enqueued, time.monotonic())

    def _requeue(self, batch: list[Item]) -> None:
        """Back into the queue, in their places: the collector fails the expired ones."""
        self._queued_rows += push_back(self._heap, batch)
        self._depth.set(len(self._heap))
        self._wakeup.set()

    async def _hand_over(self, slot: int) -> None:
        """The instance is free: let the collector send it the next batch first."""
        self._free.append(slot)
        self._wakeup.set()
        await asyncio.sleep(0)  # the collector runs (and submits) before results are delivered

    def _timed_run(self, slot: int, x: Arrays, rows: int, late: list[Item] | None) -> Arrays | None:
        """On an inference thread: run the model, timed (inline gate, batch curve), checked.
        A batch that waited in the thread's queue (``late``) is not run, and None is returned,
        when one of its requests' deadlines passed meanwhile."""
        if late and any(i.deadline is not None and time.monotonic() > i.deadline for i in late):
            return None
        t0 = time.perf_counter()
        try:
            outputs = self._instances[slot](x)
        finally:
            self._inline.note(time.perf_counter() - t0)
        self.curve.observe(rows, time.perf_counter() - t0)
        if self.batched:
            check_rows(self.name, outputs, rows)
        return outputs

    def _record(self, batch: list[Item], rows: int, start: float, compute: float) -> None:
        waits = [start - item.enqueued for item in batch]
        self.stats.add(rows, compute, waits)
        self._compute_hist.observe(compute)
        self._batch_hist.observe(rows)
        for waited in waits:
            self._queue_hist.observe(waited)

    def lower_cap(self, cap: int) -> None:
        """Used by the memory budget and the OOM split: never form batches above ``cap``."""
        self.batch_cap = max(1, min(cap, self.max_batch_size))
        metrics.BATCH_CAP.labels(model=self.name).set(self.batch_cap)


__all__ = ["Batcher", "BatcherStats", "ResourceExhaustedError"]
