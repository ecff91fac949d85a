"""The simulator on backlogs small enough to compute the answer by hand."""

from __future__ import annotations

import numpy as np
import pytest

from podserve.autoscale.keda import ScalingSettings
from podserve.autoscale.measurements import ReplicaModel
from podserve.autoscale.simulate import ScaleEvent, simulate
from podserve.autoscale.traces import Trace, backlog


def test_one_replica_from_zero_drains_a_backlog() -> None:
    # 100 messages in the first step; the poll at 1 s sees them and activates; the pod
    # consumes from 6 s at 10/s.
    model = ReplicaModel({1: 10.0}, ready_s=5.0)
    settings = ScalingSettings(target=1000, polling_interval=1, cooldown_period=5, hpa_sync_s=1)
    r = simulate(backlog(100, 1.0, dt=0.1), model, settings)
    assert r.events[0] == ScaleEvent(1.0, 0, 1, "keda")
    assert r.drained_at == pytest.approx(16.0, abs=0.11)
    # FIFO: the median message finishes at ~11 s, plus one batch (0.1 s)
    assert r.p50 == pytest.approx(11.1, abs=0.15)
    assert r.max_wait == pytest.approx(16.1, abs=0.15)
    assert r.unfinished == 0


def test_hpa_scales_out_and_keda_scales_to_zero_after_cooldown() -> None:
    model = ReplicaModel({1: 10.0}, ready_s=5.0)
    settings = ScalingSettings(
        target=100, polling_interval=1, cooldown_period=5, hpa_sync_s=1, max_replicas=10
    )
    trace = Trace("b", 0.1, np.concatenate([[400.0], np.zeros(399)]), np.zeros(400))
    r = simulate(trace, model, settings, price_per_hour=3600.0)
    # t=1: KEDA 0 -> 1, then the HPA: ceil(400 / 100) = 4 (limit max(2, 1 + 4) = 5)
    assert r.events[:2] == [ScaleEvent(1.0, 0, 1, "keda"), ScaleEvent(1.0, 1, 4, "hpa")]
    # 4 pods consume from t=6 at 40/s: drained at 16 s
    assert r.drained_at == pytest.approx(16.0, abs=0.11)
    # the default 300 s scale-down window holds 4 pods; KEDA's cooldown (5 s after the last
    # active poll, at 15 s) takes them to zero at the first poll after 20 s
    to_zero = [e for e in r.events if e.after == 0]
    assert to_zero == [ScaleEvent(pytest.approx(21.0), 4, 0, "keda")]
    assert r.replica_seconds == pytest.approx(4 * 20.0, abs=0.5)
    assert r.cost == pytest.approx(r.replica_seconds)  # price 3600/h = 1 per replica-second


def test_batched_rate_depends_on_the_backlog_per_replica() -> None:
    # 16 req/s at batch 8, 4 req/s at batch 1: a deep backlog drains at the batch-8 rate.
    model = ReplicaModel({1: 4.0, 8: 16.0}, ready_s=0.0)
    settings = ScalingSettings(min_replicas=1, max_replicas=1, target=1e6, hpa_sync_s=1)
    r = simulate(backlog(160, 1.0, dt=0.1), model, settings)
    # ~150 messages at 16/s, the last handful at smaller batches: a bit over 10 s
    assert 10.0 < r.drained_at < 11.5
    assert model.rate_table()[4] == pytest.approx(4.0 + 12.0 * 3 / 7)


def test_minimum_replica_serves_without_cold_start() -> None:
    model = ReplicaModel({1: 10.0}, ready_s=60.0)
    trace = Trace("t", 1.0, np.ones(100), np.ones(100))  # 1 req/s
    warm = simulate(trace, model, ScalingSettings(min_replicas=1, target=5))
    cold = simulate(trace, model, ScalingSettings(min_replicas=0, target=5, polling_interval=30))
    assert warm.max_wait < 1.0
    assert cold.max_wait > 60.0  # the first requests wait for activation + start-up
    assert warm.replica_seconds == pytest.approx(100.0)


def test_requests_never_finished_are_reported() -> None:
    model = ReplicaModel({1: 0.001}, ready_s=0.0)
    r = simulate(backlog(100, 1.0), model, ScalingSettings(min_replicas=1, max_replicas=1))
    assert r.unfinished == pytest.approx(100 - 0.001 * 6 * 3600, abs=1)  # 6 h more, then stop
