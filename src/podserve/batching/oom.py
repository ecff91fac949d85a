"""Out of device memory during a batch: retry in halves with a lower cap, or fail the lone one."""

from __future__ import annotations

import logging
from typing import Protocol

from podserve import metrics
from podserve.batching.queue import Item
from podserve.batching.stats import BatcherStats
from podserve.errors import ResourceExhaustedError
from podserve.runtime.memory import forget

log = logging.getLogger("podserve.batching.batcher")


class _Owner(Protocol):
    name: str
    batched: bool
    batch_cap: int
    stats: BatcherStats

    def lower_cap(self, cap: int) -> None: ...


def after_oom(batcher: _Owner, batch: list[Item], exc: ResourceExhaustedError) -> list[list[Item]]:
    """The halves to retry with a lower cap, or [] when a lone request failed (400)."""
    forget(exc)  # the failed forward's frames hold its tensors; the halves need the memory
    rows = sum(i.rows for i in batch)
    if batcher.batched and rows > 1:
        batcher.lower_cap(min(batcher.batch_cap, rows // 2))
    if batcher.batched and len(batch) > 1:
        metrics.OOM_SPLITS.labels(model=batcher.name).inc()
        log.warning(
            "model %s: batch of %d rows ran out of memory; retrying in halves, batch cap now %d",
            batcher.name,
            rows,
            batcher.batch_cap,
        )
        total, cut = 0, 1
        while cut < len(batch) - 1 and total + batch[cut - 1].rows < rows / 2:
            total += batch[cut - 1].rows
            cut += 1
        return [batch[:cut], batch[cut:]]
    err = ResourceExhaustedError(
        f"model '{batcher.name}': a request of {rows} row(s) does not fit in device memory "
        f"even alone (batch cap {batcher.batch_cap}); send fewer rows per request ({exc})"
    )
    batcher.stats.fail += len(batch)
    for item in batch:
        if not item.future.done():
            item.future.set_exception(err)
    return []
