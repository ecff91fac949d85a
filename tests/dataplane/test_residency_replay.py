"""benchmarks/residency.py's offline replay and its bounds, checked against the real thing.

The replay stands in for the server on forty request sequences, and its bounds are claimed to
hold for any policy, so each is held against an independent computation: the replay against
the real DataPlane's load count, the p99 tail count against ``np.percentile``, the exact
search against a brute force over every eviction choice, the LP bound against policies that
stay under the budget.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.ballast import MIB, stage_ballast

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "residency.py"


@functools.cache
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("residency_bench", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


SIZES = [int(s * MIB) for s in (1, 1.5, 2, 3, 4)]
BUDGET = int(5.5 * MIB)


@pytest.mark.parametrize(("policy", "k"), [("gdsf", 0), ("lru", 0), ("count", 2)])
def test_replay_loads_what_the_data_plane_loads(tmp_path: Path, policy: str, k: int) -> None:
    b = bench()
    names = [f"rr{i}" for i in range(len(SIZES))]
    for name, size in zip(names, SIZES, strict=True):
        stage_ballast(tmp_path, name, size)
    seq = b.traffic(len(SIZES), 80, 0.8, seed=3)
    row, measured, _ = asyncio.run(b.run(policy, tmp_path, names, seq, BUDGET, k))
    miss, _ = b.replay(seq, measured, BUDGET, policy, k=k)
    assert row["loads"] > len(SIZES)  # the budget made it evict
    assert int(miss.sum()) == row["loads"]


@pytest.mark.parametrize("n", [100, 999, 10_000, 10_001])
def test_tail_allowed_is_where_numpy_p99_reaches_the_slow_value(n: int) -> None:
    allowed = bench().tail_allowed(n)
    for slow, below in ((allowed, True), (allowed + 1, False)):
        lat = np.ones(n)
        lat[:slow] = 10.0
        assert bool(np.percentile(lat, 99) < 10.0) == below


def _brute_force(seq: list[int], sizes: list[int], budget: int, group: list[int]) -> int:
    """Fewest misses on ``group`` over every choice of what to keep after each request."""

    @functools.cache
    def best(t: int, resident: frozenset[int]) -> int:
        if t == len(seq):
            return 0
        i = seq[t]
        cost = int(i in group and i not in resident)
        now = resident | {i}
        if sum(sizes[j] for j in now) > budget:
            return 1 << 30
        keep = sorted(now)
        options = []
        for mask in range(1 << len(keep)):
            kept = frozenset(j for b, j in enumerate(keep) if mask >> b & 1)
            options.append(best(t + 1, kept))
        return cost + min(options)

    return best(0, frozenset())


def test_min_misses_equals_a_brute_force_over_every_eviction() -> None:
    b = bench()
    sizes, budget = [3, 2, 2, 1, 1], 5
    rng = np.random.default_rng(7)
    for _ in range(12):
        seq = [int(x) for x in rng.choice(5, size=14, p=[0.3, 0.25, 0.2, 0.15, 0.1])]
        for group in ([0], [0, 1], [0, 1, 2]):
            assert b.min_misses(seq, sizes, budget, group) == _brute_force(
                seq, sizes, budget, group
            )


@pytest.mark.parametrize("share", [0.3, 0.5])
def test_loads_floor_is_below_every_policy_that_keeps_the_budget(share: float) -> None:
    b = bench()
    sizes = b.sizes(8, 1, 8)
    budget = int(sum(sizes) * share)
    seq = b.traffic(8, 600, 1.1, seed=5)
    floor = b.loads_floor(seq, sizes, budget, [], len(seq))
    loads = {
        "gdsf": b.replay(seq, sizes, budget, "gdsf")[0].sum(),
        "lru": b.replay(seq, sizes, budget, "lru")[0].sum(),
        "clairvoyant": b.clairvoyant(seq, sizes, budget, frozenset()).sum(),
    }
    assert floor > len(set(seq))  # more than the first loads: the bound says something
    assert all(floor <= n for n in loads.values()), (floor, loads)
    # The largest model (8 MiB) missing at most twice: the bound with that asked of it.
    kept = b.loads_floor(seq, sizes, budget, [7], 2)
    tail = b.replay(seq, sizes, budget, "gdsf", protect=frozenset({7}))[0]
    largest_misses = int((tail & (np.asarray(seq) == 7)).sum())
    if share == 0.3:  # 8 MiB of an 8.5 MiB budget: no policy can keep it, nor did this one
        assert kept == float("inf")
        assert largest_misses > 2
    else:
        assert largest_misses <= 2
        assert floor <= kept <= tail.sum()
