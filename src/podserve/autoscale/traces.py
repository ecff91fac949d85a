"""Traffic traces: arrivals per time step, built in or read from a CSV file.

A trace is the number of requests arriving in each step of ``dt`` seconds (the simulator's
clock). Built-in traces draw Poisson arrivals from a rate curve with a fixed seed, so two runs
of ``podserve plan`` agree. A CSV file is either a rate trace (``timestamp,rate`` rows: the rate
in req/s holds from its timestamp to the next one) or a request log (one ``timestamp`` column:
one request per row). Timestamps are seconds or ISO 8601 times; the first one is time zero.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from podserve.errors import ConfigurationError

BUILTIN = ("spiky-day", "step", "bursty")


@dataclass(frozen=True)
class Trace:
    """Requests arriving per step (``arrivals[k]`` in ``[k*dt, (k+1)*dt)``) and the rate curve."""

    name: str
    dt: float
    arrivals: np.ndarray  # float64, counts per step
    rate: np.ndarray  # req/s per step, for the plot

    @property
    def duration_s(self) -> float:
        return len(self.arrivals) * self.dt

    @property
    def total(self) -> float:
        return float(self.arrivals.sum())


def from_rate(
    name: str, rate_fn: Callable[[np.ndarray], np.ndarray], duration_s: float, dt: float, seed: int
) -> Trace:
    t = (np.arange(math.ceil(duration_s / dt)) + 0.5) * dt
    rate = np.maximum(rate_fn(t), 0.0)
    arrivals = np.random.default_rng(seed).poisson(rate * dt).astype(np.float64)
    return Trace(name, dt, arrivals, rate)


def spiky_day(dt: float = 1.0, seed: int = 0) -> Trace:
    """24 h: 0.2 req/s at night, 0.5 in the morning, rising through the day to 50 at 20:00."""

    def rate(t: np.ndarray) -> np.ndarray:
        h = t / 3600.0
        hours, rates = [0, 6, 7, 12, 17, 22, 24], [0.2, 0.2, 0.5, 0.5, 8.0, 2.0, 0.2]
        day = np.interp(h, hours, rates)
        spike = 50.0 - float(np.interp(20.0, hours, rates))  # 50 req/s at 8 PM, ~1 h wide
        return np.asarray(day + spike * np.exp(-0.5 * ((h - 20.0) / 0.5) ** 2))

    return from_rate("spiky-day", rate, 24 * 3600, dt, seed)


def step(
    low: float = 1.0,
    high: float = 20.0,
    at_s: float = 600.0,
    duration_s: float = 3600.0,
    dt: float = 1.0,
    seed: int = 0,
) -> Trace:
    """``low`` req/s, then ``high`` from ``at_s`` on for half an hour, then ``low`` again."""

    def rate(t: np.ndarray) -> np.ndarray:
        return np.where((t >= at_s) & (t < at_s + 1800.0), high, low)

    return from_rate("step", rate, duration_s, dt, seed)


def bursty(
    base: float = 2.0,
    burst: float = 30.0,
    mean_gap_s: float = 600.0,
    mean_burst_s: float = 90.0,
    duration_s: float = 4 * 3600.0,
    dt: float = 1.0,
    seed: int = 0,
) -> Trace:
    """On/off (Markov-modulated) Poisson: bursts of ``burst`` req/s over a ``base`` rate."""
    rng = np.random.default_rng(seed + 1)
    edges: list[float] = []
    clock = 0.0
    while clock < duration_s:
        clock += rng.exponential(mean_gap_s)
        edges.append(clock)
        clock += rng.exponential(mean_burst_s)
        edges.append(clock)

    def rate(t: np.ndarray) -> np.ndarray:
        in_burst = np.searchsorted(np.asarray(edges), t, side="right") % 2 == 1
        return np.where(in_burst, base + burst, base)

    return from_rate("bursty", rate, duration_s, dt, seed)


def builtin(name: str, dt: float = 1.0, seed: int = 0) -> Trace:
    makers: dict[str, Callable[..., Trace]] = {
        "spiky-day": spiky_day,
        "step": step,
        "bursty": bursty,
    }
    if name not in makers:
        raise ConfigurationError(
            f"unknown trace {name!r}: use one of {', '.join(BUILTIN)} or a CSV"
        )
    return makers[name](dt=dt, seed=seed)


def backlog(count: int, duration_s: float, dt: float = 1.0) -> Trace:
    """``count`` requests all at time zero, then nothing: the drain experiment."""
    steps = max(1, math.ceil(duration_s / dt))
    arrivals = np.zeros(steps)
    arrivals[0] = count
    return Trace(f"backlog-{count}", dt, arrivals, arrivals / dt)


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        try:
            return datetime.fromisoformat(value.strip()).timestamp()
        except ValueError as exc:
            raise ConfigurationError(f"bad timestamp {value!r}: seconds or ISO 8601") from exc


def read_csv(path: Path, dt: float = 1.0, seed: int = 0) -> Trace:
    """A rate trace (``timestamp,rate``) or a request log (``timestamp``); a header is optional."""
    try:
        with path.open(newline="") as handle:
            rows = [r for r in csv.reader(handle) if r and not r[0].startswith("#")]
    except OSError as exc:
        raise ConfigurationError(f"cannot read trace {path}: {exc}") from exc
    if rows and rows[0][0].strip().lower() in ("timestamp", "time", "t"):
        rows = rows[1:]
    if not rows:
        raise ConfigurationError(f"trace {path} has no rows")
    times = np.array([_seconds(r[0]) for r in rows])
    if np.any(np.diff(times) < 0):
        raise ConfigurationError(f"trace {path}: timestamps must not go backwards")
    times -= times[0]
    steps = max(1, math.ceil((times[-1] + dt) / dt))
    if len(rows[0]) == 1:  # one request per row
        arrivals = np.bincount((times // dt).astype(int), minlength=steps).astype(np.float64)
        return Trace(path.stem, dt, arrivals, arrivals / dt)
    try:
        rates = np.array([float(r[1]) for r in rows])
    except (ValueError, IndexError) as exc:
        raise ConfigurationError(f"trace {path}: second column must be a rate in req/s") from exc
    if np.any(rates < 0):
        raise ConfigurationError(f"trace {path}: rates must be >= 0")
    last = times[-1] + (times[-1] - times[-2] if len(times) > 1 else dt)
    t = (np.arange(math.ceil(last / dt)) + 0.5) * dt
    rate = rates[np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(rates) - 1)]
    arrivals = np.random.default_rng(seed).poisson(rate * dt).astype(np.float64)
    return Trace(path.stem, dt, arrivals, rate)
