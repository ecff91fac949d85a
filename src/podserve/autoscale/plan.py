"""The search: the cheapest ScaledObject settings whose simulated p99 wait meets a goal.

A grid over the settings that trade cost for latency (queue-length target, minReplicaCount,
cooldownPeriod, the scale-down stabilisation window, pollingInterval, activationValue), each
point simulated on the whole trace. Settings that only matter at zero replicas (cooldown,
activation) are not varied when the minimum keeps a replica up. The grid is small on purpose:
each point costs a full simulation (about a quarter of a second for a day at 1 s steps).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from podserve.autoscale.keda import ScalingRules, ScalingSettings
from podserve.autoscale.measurements import ReplicaModel
from podserve.autoscale.simulate import SimResult, simulate
from podserve.autoscale.traces import Trace
from podserve.errors import ConfigurationError

# Queue-length targets as seconds of work per replica at its best batched rate.
DEFAULT_TARGET_SECONDS = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)


@dataclass(frozen=True)
class SearchSpace:
    """The values tried for each setting; ``targets`` empty means derive from the model."""

    targets: tuple[float, ...] = ()
    min_replicas: tuple[int, ...] = (0, 1)
    polling_intervals: tuple[int, ...] = (15,)
    cooldown_periods: tuple[int, ...] = (60, 300)
    scale_down_windows: tuple[int, ...] = (60, 300)
    activation_values: tuple[float, ...] = (0.0,)

    def target_values(self, model: ReplicaModel) -> tuple[float, ...]:
        if self.targets:
            return self.targets
        best = max(model.throughput.values())
        return tuple(sorted({max(1.0, float(round(best * s))) for s in DEFAULT_TARGET_SECONDS}))


@dataclass
class Plan:
    """Every simulated candidate, cheapest first, and the one that meets the goal (if any)."""

    goal_p99_s: float
    candidates: list[SimResult] = field(default_factory=list)

    @property
    def meeting(self) -> list[SimResult]:
        return [c for c in self.candidates if c.p99 <= self.goal_p99_s and not c.unfinished]

    @property
    def best(self) -> SimResult | None:
        meeting = self.meeting
        return meeting[0] if meeting else None

    @property
    def closest(self) -> SimResult:
        """The lowest p99 of all, for the report when nothing meets the goal."""
        return min(self.candidates, key=lambda c: (c.p99, c.replica_seconds))


def grid(base: ScalingSettings, space: SearchSpace, model: ReplicaModel) -> list[ScalingSettings]:
    seen: set[ScalingSettings] = set()
    out: list[ScalingSettings] = []
    for target, minimum, polling, cooldown, window, activation in itertools.product(
        space.target_values(model),
        space.min_replicas,
        space.polling_intervals,
        space.cooldown_periods,
        space.scale_down_windows,
        space.activation_values,
    ):
        if minimum > base.max_replicas:
            continue
        if minimum > 0:  # never at zero: cooldown and activation do nothing
            cooldown, activation = base.cooldown_period, base.activation_value
        down = ScalingRules(window, base.scale_down.policies, base.scale_down.select_policy)
        candidate = replace(
            base,
            target=target,
            min_replicas=minimum,
            polling_interval=polling,
            cooldown_period=cooldown,
            activation_value=activation,
            scale_down=down,
        )
        if candidate not in seen:
            seen.add(candidate)
            out.append(candidate)
    return out


def search(
    trace: Trace,
    model: ReplicaModel,
    base: ScalingSettings,
    goal_p99_s: float,
    space: SearchSpace | None = None,
    *,
    price_per_hour: float = 1.0,
) -> Plan:
    """Simulate every grid point; candidates sorted by replica-seconds, then p99."""
    if goal_p99_s <= 0:
        raise ConfigurationError("the p99 goal must be > 0 s")
    plan = Plan(goal_p99_s)
    for settings in grid(base, space or SearchSpace(), model):
        plan.candidates.append(simulate(trace, model, settings, price_per_hour=price_per_hour))
    plan.candidates.sort(key=lambda c: (c.replica_seconds, c.p99))
    return plan


def describe(settings: ScalingSettings) -> str:
    return (
        f"target={settings.target:g} min={settings.min_replicas} max={settings.max_replicas} "
        f"polling={settings.polling_interval}s cooldown={settings.cooldown_period}s "
        f"activation={settings.activation_value:g} "
        f"down-window={settings.scale_down.stabilization_window_s}s"
    )
