"""The eviction order on its own: small deterministic sequences where GDSF and LRU differ."""

from __future__ import annotations

import pytest

from podserve.dataplane.eviction import Eviction
from podserve.dataplane.residency import Resident

MIB = 2**20


def _resident(name: str, mib: float, last_used: float, *, load_seconds: float = 0.0) -> Resident:
    entry = Resident(name, pinned=False, bytes=int(mib * MIB), load_seconds=load_seconds)
    entry.last_used = last_used
    return entry


def _requests(policy: Eviction, entry: Resident, n: int) -> None:
    for _ in range(n):
        policy.touch(entry)


def _names(entries: list[Resident]) -> list[str]:
    return [e.name for e in entries]


def _order(policy: str, sizes_hits: list[tuple[str, float, int]]) -> list[str]:
    """Requests ``hits`` times each model in turn (earlier = less recently used); the order."""
    eviction = Eviction(policy)
    entries = []
    for t, (name, mib, hits) in enumerate(sizes_hits):
        entry = _resident(name, mib, last_used=float(t))
        _requests(eviction, entry, hits)
        entries.append(entry)
    return _names(eviction.order(entries))


def test_size_small_hot_models_stay_a_large_one_goes() -> None:
    seq = [("small", 2, 1), ("big", 8, 1)]
    assert _order("lru", seq) == ["small", "big"]  # small is older
    assert _order("gdsf", seq) == ["big", "small"]  # 1 request per 8 MiB < 1 per 2 MiB
    gdsf, big = Eviction("gdsf"), _resident("big", 8, last_used=0.0)
    gdsf.touch(big)
    assert gdsf.priority(big) == pytest.approx(1 / 8)


def test_frequency_a_hot_large_model_outranks_a_one_off_small_one() -> None:
    seq = [("big", 8, 5), ("small", 2, 1)]
    assert _order("lru", seq) == ["big", "small"]  # big is older
    assert _order("gdsf", seq) == ["small", "big"]  # 5/8 > 1/2


def test_the_clock_ages_out_a_model_no_longer_asked_for() -> None:
    gdsf = Eviction("gdsf")
    old = _resident("old", 1, last_used=1.0)
    _requests(gdsf, old, 3)  # priority 3
    for i in range(5):  # churn of 2 MiB models: each evicted one raises the clock by 1/2
        churn = _resident(f"c{i}", 2, last_used=2.0 + i)
        gdsf.touch(churn)
        gdsf.loaded(churn)
        assert gdsf.order([old, churn])[0] is churn
        gdsf.evicted(churn)
        assert churn.hits == 0  # the frequency starts again at its next load
    assert gdsf.clock == pytest.approx(2.5)  # the last priority evicted
    new = _resident("new", 1, last_used=9.0)
    gdsf.touch(new)  # 2.5 + 1 > 3: the once-hot model goes first now
    assert _names(gdsf.order([new, old])) == ["old", "new"]


def test_busy_models_go_after_idle_ones_and_ties_go_to_the_least_recently_used() -> None:
    for policy in (Eviction("gdsf"), Eviction("lru")):
        busy, a, b = (
            _resident(n, 4, last_used=t) for n, t in (("busy", 0.0), ("a", 2.0), ("b", 1.0))
        )
        for entry in (busy, a, b):
            policy.touch(entry)
        busy.inflight = 1
        assert _names(policy.order([busy, a, b])) == ["b", "a", "busy"]


def test_cost_load_seconds_keeps_the_model_slow_to_load() -> None:
    for cost, first in (("one", "slow"), ("load_seconds", "quick")):
        eviction = Eviction("gdsf", cost=cost)
        slow = _resident("slow", 4, last_used=1.0, load_seconds=2.0)
        quick = _resident("quick", 4, last_used=2.0, load_seconds=0.5)
        for entry in (slow, quick):
            eviction.touch(entry)
        # cost 1: a tie, the least recently used goes; by load time: 0.5/4 < 2/4
        assert _names(eviction.order([slow, quick]))[0] == first


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="not known"):
        Eviction("fifo")
