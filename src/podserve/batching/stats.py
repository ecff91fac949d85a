"""A batcher's counters, which the data plane reports in Triton's statistics shape."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BatcherStats:
    """Counts for ``/v2/models/{m}/stats``; times in nanoseconds as Triton reports them."""

    success: int = 0
    fail: int = 0
    inference_count: int = 0
    execution_count: int = 0
    queue_ns: int = 0
    compute_ns: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
