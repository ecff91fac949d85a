"""Simulate a KEDA-scaled queue worker Deployment on a traffic trace.

The control plane is event-exact: KEDA polls every ``pollingInterval``, the HPA syncs every
sync period, both run the rules of :mod:`podserve.autoscale.control` on the queue's message
count (ready + unacked, as the RabbitMQ management API reports it). A new pod consumes only
``startup_s`` after it is created (scheduling + image pull + weight load). A removed pod stops at
once, the not-yet-ready and newest first (the ReplicaSet's deletion order).

The data plane advances in steps of ``dt``: the requests in the system form one FIFO queue,
and each ready replica drains it at its measured rate for the batch it can fill (the backlog
per replica, up to its largest measured batch). Waiting times come from the cumulative arrival
and completion curves (FIFO: the n-th request to arrive is the n-th to finish), interpolated
linearly inside a step.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np

from podserve.autoscale.control import Hpa, KedaLoop
from podserve.autoscale.keda import ScalingSettings
from podserve.autoscale.measurements import ReplicaModel
from podserve.autoscale.traces import Trace

MAX_DRAIN_S = 6 * 3600.0  # simulate at most this long past the trace to drain the queue
MAX_WAIT_SAMPLES = 2_000_000


@dataclass(frozen=True)
class ScaleEvent:
    time: float
    before: int
    after: int
    by: str  # "keda" or "hpa"


@dataclass
class SimResult:
    """Time series (one entry per step) and the summary numbers of one simulated run."""

    settings: ScalingSettings
    trace: Trace
    t: np.ndarray  # step start times
    arrivals: np.ndarray
    served: np.ndarray
    backlog: np.ndarray  # messages in the system (ready + unacked) at the end of each step
    replicas: np.ndarray  # pods that exist (the Deployment's spec.replicas)
    ready: np.ndarray  # pods consuming
    arrival_times: np.ndarray  # one per request (or a uniform sample of them)
    waits: np.ndarray  # arrival to reply, seconds, same order
    events: list[ScaleEvent] = field(default_factory=list)
    price_per_hour: float = 0.0
    unfinished: float = 0.0  # requests still queued when the simulation gave up

    @property
    def dt(self) -> float:
        return self.trace.dt

    def wait_percentile(self, q: float) -> float:
        return float(np.percentile(self.waits, q)) if len(self.waits) else 0.0

    @property
    def p50(self) -> float:
        return self.wait_percentile(50)

    @property
    def p99(self) -> float:
        return self.wait_percentile(99)

    @property
    def max_wait(self) -> float:
        return float(self.waits.max()) if len(self.waits) else 0.0

    @property
    def replica_seconds(self) -> float:
        return float(self.replicas.sum() * self.dt)

    @property
    def gpu_hours(self) -> float:
        return self.replica_seconds / 3600.0

    @property
    def cost(self) -> float:
        return self.gpu_hours * self.price_per_hour

    @property
    def drained_at(self) -> float:
        """When the last request finished (end of its step)."""
        done = np.nonzero(self.served > 0)[0]
        return float((done[-1] + 1) * self.dt) if len(done) else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "requests": float(self.arrivals.sum()),
            "wait_p50_s": round(self.p50, 3),
            "wait_p99_s": round(self.p99, 3),
            "wait_max_s": round(self.max_wait, 3),
            "max_queue": float(self.backlog.max()) if len(self.backlog) else 0.0,
            "max_replicas": int(self.replicas.max()) if len(self.replicas) else 0,
            "replica_seconds": round(self.replica_seconds, 1),
            "gpu_hours": round(self.gpu_hours, 3),
            "cost": round(self.cost, 2),
            "drained_at_s": round(self.drained_at, 1),
            "unfinished": self.unfinished,
        }


def simulate(
    trace: Trace,
    model: ReplicaModel,
    settings: ScalingSettings,
    *,
    price_per_hour: float = 0.0,
    hpa_offset_s: float = 0.0,
    until_idle: bool = False,
) -> SimResult:
    """Run KEDA + HPA + the replicas over ``trace``, then on until the queue is empty.

    ``until_idle`` goes on until the autoscalers are back at ``minReplicaCount`` too.
    """
    settings.check()
    dt = trace.dt
    rates = model.rate_table()
    max_batch = model.max_batch
    keda = KedaLoop.for_settings(settings)
    hpa = Hpa.for_settings(settings)
    pods: list[float] = [-math.inf] * settings.min_replicas  # ready_at times, sorted
    events: list[ScaleEvent] = []

    arrivals_in = trace.arrivals.tolist()
    n_trace = len(arrivals_in)
    limit = n_trace + math.ceil(MAX_DRAIN_S / dt)
    arrivals: list[float] = []
    served: list[float] = []
    batch_time: list[float] = []
    backlog_out: list[float] = []
    replicas_out: list[int] = []
    ready_out: list[int] = []
    next_poll = 0.0
    next_sync = hpa_offset_s
    queue = 0.0
    eps = 1e-9

    def scale(now: float, to: int, by: str) -> None:
        before = len(pods)
        if to > before:
            pods.extend([now + model.startup_s] * (to - before))
            pods.sort()
        elif to < before:
            del pods[to:]  # the latest ready_at first: not-ready pods, then the newest
        if to != before:
            events.append(ScaleEvent(now, before, to, by))

    k = 0
    while k < limit:
        now = k * dt
        idle = not until_idle or len(pods) <= settings.min_replicas
        if k >= n_trace and queue <= eps and idle:
            break
        if now + eps >= next_poll or now + eps >= next_sync:
            metric = float(math.ceil(queue - 1e-6))  # whole messages, ready + unacked
            if now + eps >= next_poll:
                next_poll += settings.polling_interval
                keda_to = keda.poll(now, len(pods), metric)
                if keda_to is not None:
                    scale(now, keda_to, "keda")
            if now + eps >= next_sync:
                next_sync += settings.hpa_sync_s
                hpa_to = hpa.sync(now, len(pods), metric)
                if hpa_to != len(pods):
                    scale(now, hpa_to, "hpa")
        a = arrivals_in[k] if k < n_trace else 0.0
        queue += a
        ready = bisect.bisect_right(pods, now + eps)
        s = bt = 0.0
        if ready and queue > 0.0:
            per = queue / ready
            batch = max_batch if per >= max_batch else max(int(per), 1)
            s = min(queue, ready * rates[batch] * dt)
            bt = batch / rates[batch]
            queue -= s
            if queue < eps:
                queue = 0.0
        arrivals.append(a)
        served.append(s)
        batch_time.append(bt)
        backlog_out.append(queue)
        replicas_out.append(len(pods))
        ready_out.append(ready)
        k += 1

    arr = np.asarray(arrivals)
    srv = np.asarray(served)
    arrival_times, waits = _fifo_waits(arr, srv, np.asarray(batch_time), dt)
    return SimResult(
        settings=settings,
        trace=trace,
        t=np.arange(len(arr)) * dt,
        arrivals=arr,
        served=srv,
        backlog=np.asarray(backlog_out),
        replicas=np.asarray(replicas_out),
        ready=np.asarray(ready_out),
        arrival_times=arrival_times,
        waits=waits,
        events=events,
        price_per_hour=price_per_hour,
        unfinished=float(queue),
    )


def _inverse(cum: np.ndarray, n: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """When the cumulative curve (values at step edges) reaches ``n``, and in which step."""
    k = np.clip(np.searchsorted(cum, n, side="left"), 1, len(cum) - 1)
    lo, hi = cum[k - 1], cum[k]
    frac = np.where(hi > lo, (n - lo) / np.where(hi > lo, hi - lo, 1.0), 1.0)
    return (k - 1 + np.clip(frac, 0.0, 1.0)) * dt, k - 1


def _fifo_waits(
    arrivals: np.ndarray, served: np.ndarray, batch_time: np.ndarray, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """Arrival time and latency of each request (or of a uniform sample when there are many).

    The fluid curves spread a batch's completions over its duration; adding the duration of
    the batch a request finishes in makes a lone request cost one batch-1 inference, and
    errs by at most one batch time on the slow side otherwise.
    """
    cum_a = np.concatenate([[0.0], np.cumsum(arrivals)])
    cum_d = np.concatenate([[0.0], np.cumsum(served)])
    total = cum_a[-1]
    if total <= 0:
        return np.zeros(0), np.zeros(0)
    count = int(min(max(total, 1), MAX_WAIT_SAMPLES))
    n = (np.arange(count) + 0.5) * (total / count)
    t_a, _ = _inverse(cum_a, n, dt)
    t_d, step = _inverse(cum_d, np.minimum(n, cum_d[-1]), dt)
    done = n <= cum_d[-1] + 1e-6
    t_d = np.where(done, t_d + batch_time[step], len(arrivals) * dt)
    return t_a, np.maximum(t_d - t_a, 0.0)
