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

    def add(self, rows: int, compute_s: float, waits_s: list[float]) -> None:
        """One batch of ``len(waits_s)`` requests and ``rows`` rows ran for ``compute_s``."""
        self.success += len(waits_s)
        self.inference_count += rows
        self.execution_count += 1
        self.compute_ns += int(compute_s * 1e9)
        self.batch_sizes[rows] = self.batch_sizes.get(rows, 0) + 1
        self.queue_ns += sum(int(w * 1e9) for w in waits_s)
