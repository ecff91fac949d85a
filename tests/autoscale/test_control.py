"""The HPA's and KEDA's arithmetic on small cases computed by hand from their documented rules."""

from __future__ import annotations

import pytest

from podserve.autoscale.control import Hpa, KedaLoop, desired_from_metric
from podserve.autoscale.keda import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Policy,
    ScalingRules,
    ScalingSettings,
)


@pytest.mark.parametrize(
    ("current", "metric", "target", "expected"),
    [
        (2, 42, 20, 2),  # ratio 1.05: within the 10 % tolerance
        (2, 44, 20, 2),  # ratio 1.10: still within (<=)
        (2, 45, 20, 3),  # ratio 1.125: ceil(45 / 20) = 3
        (4, 36, 10, 4),  # ratio 0.90: within
        (4, 35, 10, 4),  # ratio 0.875: ceil(3.5) = 4, ceil never rounds down
        (4, 30, 10, 3),
        (3, 0, 10, 0),  # an empty queue proposes zero; min clamps it later
        (1, 1, 0.5, 2),
        (0, 500, 10, 0),  # the HPA does nothing at zero replicas
    ],
)
def test_desired_replicas_ceil_and_tolerance(
    current: int, metric: float, target: float, expected: int
) -> None:
    assert desired_from_metric(current, metric, target) == expected


def test_custom_tolerance() -> None:
    assert desired_from_metric(2, 42, 20, tolerance=0.01) == 3


def hpa(**kw: object) -> Hpa:
    args: dict[str, object] = {
        "min_replicas": 1,
        "max_replicas": 100,
        "target": 10.0,
        "scale_up": DEFAULT_SCALE_UP,
        "scale_down": DEFAULT_SCALE_DOWN,
    }
    args.update(kw)
    return Hpa(**args)  # type: ignore[arg-type]


def test_default_scale_up_is_max_of_double_or_four_pods_per_15s() -> None:
    h = hpa()
    # wants ceil(1000 / 10) = 100; limit max(ceil(1 * 2), 1 + 4) = 5
    assert h.sync(0, 1, 1000) == 5
    # 10 s later the +4 event is inside the 15 s period: the period started at 1 pod
    assert h.sync(10, 5, 1000) == 5
    # at 15 s the event is no longer after the cut-off: max(5 * 2, 5 + 4) = 10
    assert h.sync(15, 5, 1000) == 10
    assert h.sync(30, 10, 1000) == 20  # doubling beats +4 from here on


def test_scale_up_clamped_to_max_replicas() -> None:
    assert hpa(max_replicas=3).sync(0, 1, 1000) == 3


def test_scale_up_select_min_policy() -> None:
    rules = ScalingRules(0, (Policy("Percent", 100, 15), Policy("Pods", 4, 15)), "Min")
    assert hpa(scale_up=rules).sync(0, 6, 1000) == 10  # min(12, 10)


def test_scale_down_stabilisation_takes_the_max_over_the_window() -> None:
    h = hpa()
    assert h.sync(0, 10, 100) == 10  # ratio 1: stays, recommendation 10 recorded
    for t in range(15, 300, 15):  # empty queue: proposals 0, but 10 is in the window
        assert h.sync(t, 10, 0) == 10
    # at 300 s the t=0 recommendation is no longer after the cut-off; 100 %/15 s allows all,
    # minReplicas (1) is the floor
    assert h.sync(300, 10, 0) == 1


def test_scale_down_window_holds_the_highest_recent_recommendation() -> None:
    h = hpa(scale_down=ScalingRules(60, DEFAULT_SCALE_DOWN.policies))
    assert h.sync(0, 8, 80) == 8
    assert h.sync(15, 8, 50) == 8  # proposal 5, window max 8
    assert h.sync(30, 8, 20) == 8  # proposal 2
    assert h.sync(61, 8, 20) == 5  # window (1..61] holds 5 and 2 (and now 2): max 5
    assert h.sync(76, 5, 20) == 2


def test_scale_down_pods_policy_limits_the_rate() -> None:
    h = hpa(scale_down=ScalingRules(0, (Policy("Pods", 1, 60),)))
    assert h.sync(0, 5, 0) == 4
    assert h.sync(15, 4, 0) == 4  # the period started at 5: 5 - 1 = 4
    assert h.sync(61, 4, 0) == 3


def test_scale_up_stabilisation_window_takes_the_min() -> None:
    h = hpa(scale_up=ScalingRules(30, DEFAULT_SCALE_UP.policies))
    assert h.sync(0, 2, 20) == 2
    assert h.sync(15, 2, 60) == 2  # min(6, 2) over the last 30 s
    # window (1..31] holds 6 and 6: min 6; the limit max(2 * 2, 2 + 4) = 6 lets it through
    assert h.sync(31, 2, 60) == 6


def test_hpa_for_settings_keeps_one_replica_when_keda_owns_zero() -> None:
    h = Hpa.for_settings(ScalingSettings(min_replicas=0, max_replicas=5, target=10))
    assert h.min_replicas == 1
    assert h.sync(0, 3, 0) == 1  # no history yet: the window holds only this proposal (0)
    assert h.sync(15, 3, 30) == 3  # ratio 1
    assert h.sync(30, 3, 0) == 3  # the 300 s window now remembers 3
    assert h.sync(0, 0, 100) == 0  # disabled at zero


def test_keda_activates_above_activation_value() -> None:
    k = KedaLoop(min_replicas=0, activation_value=5, cooldown_s=30)
    assert k.poll(0, 0, 5) is None  # 5 is not > 5
    assert k.poll(1, 0, 6) == 1
    k_min = KedaLoop(min_replicas=3, activation_value=0, cooldown_s=30)
    assert k_min.poll(0, 0, 1) == 3  # from zero straight to minReplicaCount


def test_keda_leaves_active_targets_to_the_hpa() -> None:
    k = KedaLoop(min_replicas=0, activation_value=0, cooldown_s=30)
    assert k.poll(0, 2, 50) is None
    assert k.last_active == 0


def test_keda_scales_to_zero_only_after_cooldown() -> None:
    k = KedaLoop(min_replicas=0, activation_value=0, cooldown_s=10)
    assert k.poll(0, 0, 3) == 1
    assert k.poll(5, 1, 0) is None
    assert k.poll(10, 1, 0) is None  # last active + cooldown is not before now
    assert k.poll(11, 1, 0) == 0
    # activity in between restarts the cooldown
    assert k.poll(12, 0, 1) == 1
    assert k.poll(20, 1, 1) is None
    assert k.poll(25, 1, 0) is None
    assert k.poll(31, 1, 0) == 0


def test_keda_without_activity_scales_down_at_once_and_enforces_min() -> None:
    assert KedaLoop(0, 0, 300).poll(0, 2, 0) == 0  # never active: no last active time
    assert KedaLoop(2, 0, 300).poll(0, 1, 0) == 2
    assert KedaLoop(2, 0, 300).poll(0, 2, 0) is None
