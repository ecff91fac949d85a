"""The two control loops that scale a KEDA-managed Deployment, as their controllers compute them.

KEDA's operator polls the trigger every ``pollingInterval`` and owns the 0 <-> 1 transitions
(activation above ``activationValue``, scale to zero ``cooldownPeriod`` after the last active
poll). Above zero the HorizontalPodAutoscaler that KEDA creates owns the count: every sync
period it computes ``ceil(metric / target)`` for the external ``AverageValue`` metric, skips
changes within its tolerance, stabilises and rate-limits the result with ``behavior``.

Both classes are pure state machines driven by the caller's clock, so the simulator
(:mod:`podserve.autoscale.simulate`) and the real-process validation driver
(``benchmarks/autoscale_validation.py``) run exactly the same rules. Sources read for the
arithmetic: Kubernetes ``pkg/controller/podautoscaler`` (``replica_calculator.go``,
``horizontal.go``) and KEDA ``pkg/scaling/executor/scale_scaledobjects.go``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from podserve.autoscale.keda import ScalingRules, ScalingSettings


def desired_from_metric(
    current_replicas: int, metric_total: float, target: float, tolerance: float = 0.1
) -> int:
    """The HPA's proposal for an external ``AverageValue`` metric.

    As ``GetExternalPerPodMetricReplicas`` computes it.

    The usage ratio compares the metric with ``target * current``; within the tolerance the
    current count stands, otherwise the proposal is ``ceil(metric / target)``.
    """
    if current_replicas <= 0:
        return current_replicas  # the HPA is disabled at zero; KEDA activates
    ratio = metric_total / (target * current_replicas)
    # Kubernetes >= 1.33 compares against both bounds (``tolerances.isWithin``); the older
    # ``|1 - ratio| <= tolerance`` differs only by float rounding at the very edge.
    if 1.0 - tolerance <= ratio <= 1.0 + tolerance:
        return current_replicas
    return math.ceil(metric_total / target)


@dataclass
class _ScaleEvent:
    time: float
    change: int


@dataclass
class Hpa:
    """One HorizontalPodAutoscaler with ``behavior``: recommendations and scale events over time.

    ``sync(now, current, metric)`` returns the new replica count (possibly unchanged).
    """

    min_replicas: int
    max_replicas: int
    target: float
    scale_up: ScalingRules
    scale_down: ScalingRules
    tolerance: float = 0.1
    _recommendations: list[tuple[float, int]] = field(default_factory=list)
    _up_events: list[_ScaleEvent] = field(default_factory=list)
    _down_events: list[_ScaleEvent] = field(default_factory=list)

    @classmethod
    def for_settings(cls, settings: ScalingSettings) -> Hpa:
        """The HPA KEDA creates: ``minReplicas`` is at least 1 (KEDA owns zero)."""
        return cls(
            min_replicas=max(settings.min_replicas, 1),
            max_replicas=settings.max_replicas,
            target=settings.target,
            scale_up=settings.scale_up,
            scale_down=settings.scale_down,
            tolerance=settings.tolerance,
        )

    def sync(self, now: float, current: int, metric_total: float) -> int:
        if current == 0:
            return 0  # "scaling is disabled since the replica count of the target is zero"
        proposal = desired_from_metric(current, metric_total, self.target, self.tolerance)
        stabilised = self._stabilise(now, current, proposal)
        desired = self._rate_limit(now, current, stabilised)
        if desired != current:
            events = self._up_events if desired > current else self._down_events
            events.append(_ScaleEvent(now, abs(desired - current)))
        horizon = now - max(
            [p.period_s for p in (*self.scale_up.policies, *self.scale_down.policies)], default=0
        )
        self._up_events = [e for e in self._up_events if e.time > horizon]
        self._down_events = [e for e in self._down_events if e.time > horizon]
        return desired

    def _stabilise(self, now: float, current: int, proposal: int) -> int:
        """Min over the scale-up window, max over the scale-down window, then clamp current."""
        up_cutoff = now - self.scale_up.stabilization_window_s
        down_cutoff = now - self.scale_down.stabilization_window_s
        up_rec = down_rec = proposal
        for stamp, rec in self._recommendations:
            if stamp > up_cutoff:
                up_rec = min(up_rec, rec)
            if stamp > down_cutoff:
                down_rec = max(down_rec, rec)
        oldest = min(up_cutoff, down_cutoff)
        self._recommendations = [(s, r) for s, r in self._recommendations if s >= oldest]
        self._recommendations.append((now, proposal))  # the unstabilised one is recorded
        recommendation = max(current, up_rec)
        return min(recommendation, down_rec)

    def _rate_limit(self, now: float, current: int, desired: int) -> int:
        if desired > current:
            limit = max(self._policy_limit(now, current, self.scale_up, up=True), current)
            return min(desired, limit, self.max_replicas)
        if desired < current:
            limit = min(self._policy_limit(now, current, self.scale_down, up=False), current)
            return max(desired, limit, self.min_replicas)
        return desired

    def _policy_limit(self, now: float, current: int, rules: ScalingRules, *, up: bool) -> int:
        if rules.select_policy == "Disabled":
            return current
        # "Max" picks the largest change: the highest limit up, the lowest limit down.
        biggest = rules.select_policy == "Max"
        pick = max if biggest == up else min
        result: int | None = None
        for policy in rules.policies:
            cutoff = now - policy.period_s
            added = sum(e.change for e in self._up_events if e.time > cutoff)
            removed = sum(e.change for e in self._down_events if e.time > cutoff)
            start = current - added + removed
            if policy.type == "Pods":
                proposed = start + policy.value if up else start - policy.value
            elif up:
                proposed = math.ceil(start * (1 + policy.value / 100))
            else:
                proposed = int(start * (1 - policy.value / 100))
            result = proposed if result is None else pick(result, proposed)
        return current if result is None else result


@dataclass
class KedaLoop:
    """KEDA's operator loop for one ScaledObject: activation, cooldown to zero, min enforcement.

    ``poll(now, current, metric)`` returns the replica count KEDA sets, or ``None`` when KEDA
    leaves the target alone (the HPA owns it).
    """

    min_replicas: int
    activation_value: float
    cooldown_s: float
    last_active: float | None = None

    @classmethod
    def for_settings(cls, settings: ScalingSettings) -> KedaLoop:
        return cls(settings.min_replicas, settings.activation_value, settings.cooldown_period)

    def poll(self, now: float, current: int, metric_total: float) -> int | None:
        if metric_total > self.activation_value:
            self.last_active = now
            if current == 0:
                return max(self.min_replicas, 1)
            return None
        if current > 0 and self.min_replicas == 0:
            # A target scaled outside KEDA (never active) has no last active time: scale now.
            if self.last_active is None or self.last_active + self.cooldown_s < now:
                return 0
            return None
        if current < self.min_replicas:
            return self.min_replicas
        return None
