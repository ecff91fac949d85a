"""The search returns the cheapest simulated settings that meet the p99 goal."""

from __future__ import annotations

from podserve.autoscale.keda import ScalingSettings
from podserve.autoscale.measurements import ReplicaModel
from podserve.autoscale.plan import SearchSpace, grid, search
from podserve.autoscale.traces import step

MODEL = ReplicaModel({1: 5.0, 8: 20.0}, ready_s=20.0)
BASE = ScalingSettings(max_replicas=10, hpa_sync_s=15)
SPACE = SearchSpace(
    targets=(10, 40, 160), min_replicas=(0, 1), cooldown_periods=(60,), scale_down_windows=(60,)
)


def test_search_picks_the_cheapest_meeting_the_goal() -> None:
    trace = step(low=0.5, high=30.0, at_s=300.0, duration_s=2400.0)
    plan = search(trace, MODEL, BASE, goal_p99_s=40.0, space=SPACE)
    assert len(plan.candidates) == 6
    best = plan.best
    assert best is not None
    assert best.p99 <= 40.0
    cheaper = [c for c in plan.candidates if c.replica_seconds < best.replica_seconds]
    assert all(c.p99 > 40.0 for c in cheaper)
    assert plan.candidates == sorted(plan.candidates, key=lambda c: (c.replica_seconds, c.p99))


def test_impossible_goal_has_no_best_but_a_closest() -> None:
    trace = step(low=0.5, high=30.0, at_s=300.0, duration_s=1200.0)
    plan = search(trace, MODEL, BASE, goal_p99_s=0.01, space=SPACE)
    assert plan.best is None
    assert plan.closest.p99 == min(c.p99 for c in plan.candidates)


def test_grid_does_not_vary_zero_only_settings_above_zero() -> None:
    space = SearchSpace(targets=(10,), min_replicas=(0, 2), cooldown_periods=(60, 300))
    points = grid(BASE, space, MODEL)
    assert sum(p.min_replicas == 0 for p in points) == 2 * len(space.scale_down_windows)
    assert sum(p.min_replicas == 2 for p in points) == len(space.scale_down_windows)


def test_default_targets_follow_the_throughput() -> None:
    assert SearchSpace().target_values(MODEL) == (40.0, 100.0, 200.0, 400.0, 800.0, 1600.0)
