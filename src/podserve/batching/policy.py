"""When a free model should wait for more requests: the batching policies.

Two policies, chosen per model (``batching.policy`` in the manifest, ``PODSERVE_BATCHING_POLICY``
to override):

``fixed_delay`` (Triton's dynamic batcher)
    The first request of a batch waits up to ``max_queue_delay_ms`` for the batch to fill (or
    reach a preferred size). A lone request always pays the delay.

``adaptive`` (the default)
    A request that finds the model free runs at once. Requests that arrive while a batch runs
    gather in the queue and leave together the moment the model is free (up to the batch cap
    and preferred sizes). The queue delay is only an upper bound, used when waiting pays:

    With ``q`` rows queued for a free model, ``k`` more expected within the delay ``d``, and
    ``t(b)`` the model's time for a batch of ``b`` rows, running now costs the ``q`` rows
    ``t(q)`` and the ``k`` late rows the rest of that batch plus ``t(k)``; waiting costs
    everyone ``d + t(q+k)`` at most. Summed over the ``q + k`` requests, waiting lowers the
    mean latency when::

        d < t(q) + k * t(k) / (q + k) - t(q + k)

    For a model whose time is a fixed cost ``a`` plus ``c`` per row this is
    ``d < k (a - c q) / (q + k)``: waiting pays only for models with a large per-batch cost
    (a GPU kernel launch, a tiny CPU model behind a heavy framework call) and only when
    requests really are about to arrive. ``t`` is measured at warm-up (batches of 1, 2, 4, ...
    up to the cap, within a time budget; :func:`measure_curve`) and refined on every batch;
    ``k`` is the number of rows that arrived within ``d`` of the first request of the recent
    batches and before that batch was answered (an average over the last few): a closed-loop
    client at concurrency 1 sends its next request only after the answer, so ``k`` stays 0
    and its requests never wait.

    A free model takes at most :func:`efficient_rows` of the queue: the smallest batch within
    1% of the best rows per second on the curve (warm-up timings on a shared VM vary by more
    than the 3% this was first: MiniLM flipped between 8 and 16 from one start to the next).
    Under a full queue from a closed loop of clients it takes :func:`pipelined_rows`: half
    of the rows in flight when half keeps 90% of the best rate, so one half runs while the
    other's answers are encoded and its clients send again.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

import numpy as np

Policy = Literal["adaptive", "fixed_delay"]
POLICIES: tuple[Policy, ...] = ("adaptive", "fixed_delay")

_EMA = 0.2  # weight of the newest observation, for batch times and arrivals alike


class BatchCurve:
    """Seconds the model takes for a batch of ``b`` rows, by ``b``.

    Timed at warm-up (two sizes or more), the curve keeps its shape and every served batch
    rescales it: served batches are slower than warm-up ones when the event loop shares the
    cores, and a size timed only at warm-up must not look better than one refreshed under
    load (int8 MiniLM on two threads: 16 rows served at 33 ms against 18.7 ms at warm-up made
    the never-served 32 look 1.8x faster per row). Without a warm-up curve, each served size
    is its own point."""

    def __init__(self, points: dict[int, float] | None = None) -> None:
        self._t: dict[int, float] = dict(points or {})
        self._shape = len(self._t) >= 2
        self._scale = 1.0

    def observe(self, rows: int, seconds: float) -> None:
        if self._shape:
            warm = _interpolate(self._t, rows)
            if warm:
                self._scale += _EMA * (seconds / warm - self._scale)
            return
        old = self._t.get(rows)
        self._t[rows] = seconds if old is None else old + _EMA * (seconds - old)

    def points(self) -> dict[int, float]:
        return {b: t * self._scale for b, t in sorted(self._t.items())}

    def seconds(self, rows: int) -> float | None:
        """``t(rows)``, interpolated linearly between measured sizes (and extrapolated past
        the ends along the nearest segment); ``None`` until two sizes are known."""
        t = _interpolate(self._t, rows)
        return None if t is None else t * self._scale


def _interpolate(points: dict[int, float], rows: int) -> float | None:
    if rows in points:
        return points[rows]
    sizes = sorted(points)
    if len(sizes) < 2:
        return None
    lo, hi = sizes[0], sizes[1]
    for a, b in itertools.pairwise(sizes):
        lo, hi = a, b
        if b >= rows:
            break
    ta, tb = points[lo], points[hi]
    return max(0.0, ta + (tb - ta) * (rows - lo) / (hi - lo))


class Arrivals:
    """How many rows arrive within ``d`` of a batch's first request, averaged over batches."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.expected = 0.0
        self._end = -math.inf
        self._rows = 0
        self._open = False
        self._first = -math.inf

    def arrived(self, now: float, rows: int) -> None:
        if now <= self._end:
            self._rows += rows

    def dispatched(self, first_seen: float, others_queued: int) -> None:
        """A batch left a free model; ``others_queued`` rows were waiting beside its first
        request. Its window opens once the previous one has closed (folded into the mean)."""
        if self._open and first_seen <= self._end:
            return  # still inside the current window: it keeps counting
        if self._open:
            self.expected += _EMA * (self._rows - self.expected)
        self._open = True
        self._first = first_seen
        self._end = first_seen + self.window_s
        self._rows = others_queued

    def answered(self, first_seen: float, now: float) -> None:
        """The batch that opened the window is answered: a closed-loop client sends its next
        request only now, and that request could not have joined, so the window ends here."""
        if self._open and first_seen == self._first:
            self._end = min(self._end, now)


def gain(curve: BatchCurve, q: int, k: int) -> float | None:
    """Mean seconds saved per request by running ``q + k`` rows together (see the module)."""
    tq, tk, tqk = curve.seconds(q), curve.seconds(k), curve.seconds(q + k)
    if tq is None or tk is None or tqk is None:
        return None
    return tq + k * tk / (q + k) - tqk


def adaptive_wait(
    curve: BatchCurve, arrivals: Arrivals, queued: int, target: int, max_delay_s: float
) -> tuple[float, int]:
    """(how long after the first request the batch may wait, rows that end the wait)."""
    k = min(round(arrivals.expected), target - queued)
    if k < 1:
        return 0.0, queued
    saved = gain(curve, queued, k)
    if saved is None or saved <= max_delay_s:
        return 0.0, queued
    return max_delay_s, queued + k


def efficient_rows(curve: BatchCurve, cap: int, share: float = 0.99) -> int:
    """The fewest rows per batch that reach ``share`` of the best measured rows per second,
    at most ``cap``: rows past it add latency but almost no throughput, and wait for the next
    batch, which starts the moment this one ends. ``cap`` until the curve reaches ``cap``."""
    points = {b: t for b, t in curve.points().items() if b <= cap and t > 0}
    if cap not in points or len(points) < 2:
        return cap
    best = max(b / t for b, t in points.items())
    return min(b for b, t in points.items() if b / t >= share * best)


def pipelined_rows(curve: BatchCurve, efficient: int, population: int, share: float = 0.9) -> int:
    """Rows per batch when ``population`` rows are in the model or queued for it: half of
    them, rounded up, when that half still reaches ``share`` of the best rows per second on
    the curve, else ``efficient``. Two halves alternate: one runs while the other's answers
    are encoded and its clients send again; one full batch would leave the model idle for
    that turnaround (about 0.4 ms a row for MiniLM's JSON answers here) every time."""
    half = -(-population // 2)
    if half >= efficient or half < 2:
        return efficient
    points = {b: t for b, t in curve.points().items() if t > 0}
    t_half = curve.seconds(half)
    if not points or not t_half:
        return efficient
    best = max(b / t for b, t in points.items())
    return half if half / t_half >= share * best else efficient


class _Waiter(Protocol):
    policy: Policy
    curve: BatchCurve
    batch_cap: int
    max_queue_delay_s: float


def fill_wait(batcher: _Waiter, arrivals: Arrivals, queued: int, target: int) -> tuple[float, int]:
    """(how long after its first request a batch may wait, rows that end the wait)."""
    if batcher.policy == "fixed_delay":
        return batcher.max_queue_delay_s, batcher.batch_cap
    return adaptive_wait(batcher.curve, arrivals, queued, target, batcher.max_queue_delay_s)


def measure_curve(
    infer: Callable[[dict[str, np.ndarray]], object],
    one: dict[str, np.ndarray],
    max_rows: int,
    budget_s: float = 1.0,
) -> dict[int, float]:
    """Time batches of 1, 2, 4, ... ``max_rows`` rows built from the one-row ``one`` (best of
    three runs each), stopping once ``budget_s`` is spent; sizes not reached are extrapolated."""
    curve: dict[int, float] = {}
    spent = 0.0
    rows = 1
    while rows <= max_rows and spent < budget_s:
        inputs = {name: np.repeat(arr[:1], rows, axis=0) for name, arr in one.items()}
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            infer(inputs)
            took = time.perf_counter() - t0
            spent += took
            best = min(best, took)
        curve[rows] = best
        if rows == max_rows:
            break
        rows = min(rows * 2, max_rows)
    return curve
