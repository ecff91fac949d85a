"""The batcher's queue: requests ordered by priority level, then arrival; batches popped off it.

A batch holds requests of one shape key (same dimensions beyond the batch axis) up to the cap;
requests whose client left are dropped, and those whose deadline passed fail without running.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from podserve.errors import DeadlineExceededError


@dataclass(order=True)
class Item:
    """One queued request."""

    sort_key: tuple[int, int]  # (priority level, arrival number)
    rows: int = field(compare=False)
    inputs: dict[str, np.ndarray] = field(compare=False)
    future: asyncio.Future[dict[str, np.ndarray]] = field(compare=False)
    enqueued: float = field(compare=False)
    deadline: float | None = field(compare=False)
    key: tuple[object, ...] = field(compare=False)


@dataclass
class Popped:
    """What :func:`pop_batch` took: the batch, and how many queued rows and requests left."""

    batch: list[Item]
    rows_left_queue: int
    expired: int


def pop_batch(heap: list[Item], cap: int, batched: bool, model: str) -> Popped:
    """The next batch off ``heap``: the head's shape, up to ``cap`` rows (one request when not
    ``batched``); skipped requests go back in their places."""
    out = Popped([], 0, 0)
    rows = 0
    skipped: list[Item] = []
    now = time.monotonic()
    while heap:
        item = heapq.heappop(heap)
        out.rows_left_queue += item.rows
        if item.future.done():  # client went away
            continue
        if item.deadline is not None and now > item.deadline:
            waited = now - item.enqueued
            item.future.set_exception(
                DeadlineExceededError(
                    f"request timed out after waiting {waited * 1000:.1f} ms in the queue of "
                    f"model '{model}'; it was not run"
                )
            )
            out.expired += 1
            continue
        if out.batch and (item.key != out.batch[0].key or rows + item.rows > cap or not batched):
            skipped.append(item)
            if not batched or rows >= cap:
                break
            continue
        out.batch.append(item)
        rows += item.rows
        if rows >= cap:
            break
    for item in skipped:
        heapq.heappush(heap, item)
        out.rows_left_queue -= item.rows
    return out


def push_back(heap: list[Item], batch: list[Item]) -> int:
    """Return ``batch`` to the queue in its places; the rows it added."""
    for item in batch:
        heapq.heappush(heap, item)
    return sum(item.rows for item in batch)
