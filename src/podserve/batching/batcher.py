"""Dynamic batching: one batcher per model, shared by every surface.

Requests wait in a priority queue; one collector task forms a batch from compatible requests
(same shapes beyond the batch axis) up to the batch cap and hands it to an inference thread;
the next batch is collected meanwhile and starts before the last one's answers are encoded.
How long a free model waits for its batch to fill, and how many rows it takes, is the policy's
choice (:mod:`podserve.batching.policy`). Several instances run batches side by side.

Back-pressure: past ``max_queue_size`` waiting requests, ``submit`` raises
:class:`OverloadedError` at once instead of letting the queue grow. A request whose client
timeout expires while queued fails with :class:`DeadlineExceededError` and never runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from podserve import metrics
from podserve.batching.inline import InlineGate
from podserve.batching.policy import Arrivals, BatchCurve, Policy, efficient_rows, fill_wait
from podserve.batching.shapes import batch_key, check_rows, concat, rows_like_first, split
from podserve.batching.stats import BatcherStats
from podserve.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidRequestError,
    ModelNotReadyError,
    OverloadedError,
    PodserveError,
    ResourceExhaustedError,
)
from podserve.runtime.memory import forget

log = logging.getLogger(__name__)

InferFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(order=True)
class _Item:
    sort_key: tuple[int, int]
    rows: int = field(compare=False)
    inputs: dict[str, np.ndarray] = field(compare=False)
    future: asyncio.Future[dict[str, np.ndarray]] = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(compare=False)
    key: tuple[object, ...] = field(compare=False)


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
        self._heap: list[_Item] = []
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            len(self._instances), thread_name_prefix=f"infer-{name}"
        )
        self._task: asyncio.Task[None] | None = None
        self._inflight = 0
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
        item = _Item(
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
            if not self._free:  # busy: the next batch grows until the model frees up
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = await self._form_batch()
            if batch and self._inline.active:  # cheap model: run here, no task, no thread hop
                await self._execute(batch, 0)
            elif batch:
                task = loop.create_task(self._execute(batch, self._free.pop()))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _form_batch(self) -> list[_Item]:
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
        batch: list[_Item] = []
        rows = 0
        skipped: list[_Item] = []
        now = time.monotonic()
        while self._heap:
            item = heapq.heappop(self._heap)
            self._queued_rows -= item.rows
            if item.future.done():  # client went away
                continue
            if item.deadline is not None and now > item.deadline:
                waited = now - item.enqueued
                item.future.set_exception(
                    DeadlineExceededError(
                        f"request timed out after waiting {waited * 1000:.1f} ms in the queue of "
                        f"model '{self.name}'; it was not run"
                    )
                )
                self.stats.fail += 1
                continue
            if batch and (item.key != batch[0].key or rows + item.rows > cap or not self.batched):
                skipped.append(item)
                if not self.batched or rows >= cap:
                    break
                continue
            batch.append(item)
            rows += item.rows
            if rows >= cap:
                break
        for item in skipped:
            heapq.heappush(self._heap, item)
            self._queued_rows += item.rows
        self._depth.set(len(self._heap))
        return batch

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
        return min(self._efficient, self.batch_cap)

    # --- execution ------------------------------------------------------------------------

    async def _execute(self, batch: list[_Item], slot: int, *, retrying: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._inflight += len(batch)
        start = time.monotonic()
        retry: list[list[_Item]] = []
        handed = False
        threaded = not self._inline.active  # it may flip while this batch runs
        try:
            inputs = concat([i.inputs for i in batch])
            rows = sum(i.rows for i in batch)
            if not threaded:
                outputs = self._timed_run(slot, inputs, rows)
            else:
                outputs = await loop.run_in_executor(
                    self._executor, self._timed_run, slot, inputs, rows
                )
                # Requests wait: start them before encoding these answers (fixed delay: from
                # half a batch, else the loop first takes in requests still arriving).
                waiting, most = self._queued_rows, 2 * self._queued_rows >= self.batch_cap
                if not retrying and waiting and (self.policy == "adaptive" or most):
                    handed = True
                    await self._hand_over(slot)
            parts = split(outputs, [i.rows for i in batch]) if self.batched else [outputs]
            compute = time.monotonic() - start
            self._record(batch, rows, start, compute)
            for item, part in zip(batch, parts, strict=True):
                if not item.future.done():
                    item.future.set_result(part)
            self._arrivals.answered(batch[0].enqueued, time.monotonic())
        except ResourceExhaustedError as exc:  # out of memory: retried below, outside `except`
            retry = self._after_oom(batch, exc)
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
            if not self._heap and not self._inflight:
                self._idle.set()
        for half in retry:  # no await since the finally: drain() still sees them in flight
            await self._execute(half, slot, retrying=True)
        if threaded and not handed and not retrying:
            # Not handed over early (little waiting, a failure, or an OOM split): the model is
            # free only now, so the next batch sees the lowered cap and never races the halves.
            self._free.append(slot)
            self._wakeup.set()

    async def _hand_over(self, slot: int) -> None:
        """The instance is free: let the collector send it the next batch first."""
        self._free.append(slot)
        self._wakeup.set()
        await asyncio.sleep(0)  # the collector runs (and submits) before results are delivered

    def _after_oom(self, batch: list[_Item], exc: ResourceExhaustedError) -> list[list[_Item]]:
        """The halves to retry with a lower cap, or [] when a lone request failed (400)."""
        forget(exc)  # the failed forward's frames hold its tensors; the halves need the memory
        rows = sum(i.rows for i in batch)
        if self.batched and rows > 1:
            self.lower_cap(min(self.batch_cap, rows // 2))
        if self.batched and len(batch) > 1:
            metrics.OOM_SPLITS.labels(model=self.name).inc()
            log.warning(
                "model %s: batch of %d rows ran out of memory; retrying in halves, "
                "batch cap now %d",
                self.name,
                rows,
                self.batch_cap,
            )
            total, cut = 0, 1
            while cut < len(batch) - 1 and total + batch[cut - 1].rows < rows / 2:
                total += batch[cut - 1].rows
                cut += 1
            return [batch[:cut], batch[cut:]]
        err = ResourceExhaustedError(
            f"model '{self.name}': a request of {rows} row(s) does not fit in device memory "
            f"even alone (batch cap {self.batch_cap}); send fewer rows per request ({exc})"
        )
        self.stats.fail += len(batch)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(err)
        return []

    def _timed_run(
        self, slot: int, inputs: dict[str, np.ndarray], rows: int
    ) -> dict[str, np.ndarray]:
        """On an inference thread: run the model, timed (inline gate, batch curve), checked."""
        t0 = time.perf_counter()
        try:
            outputs = self._instances[slot](inputs)
        finally:
            self._inline.note(time.perf_counter() - t0)
        self.curve.observe(rows, time.perf_counter() - t0)
        if self.batched:
            check_rows(self.name, outputs, rows)
        return outputs

    def _record(self, batch: list[_Item], rows: int, start: float, compute: float) -> None:
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
