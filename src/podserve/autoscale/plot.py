"""One PNG of a simulated run: traffic, queue, replicas and latency on one time axis.

matplotlib is imported here only, with the Agg backend, so ``podserve plan`` without ``--plot``
(and every other command) never pays for it. It ships in the ``plot`` extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from podserve.autoscale.simulate import SimResult
from podserve.errors import ConfigurationError


def _binned(t: np.ndarray, values: np.ndarray, width: float, end: float, how: str) -> np.ndarray:
    bins = max(1, int(np.ceil(end / width)))
    idx = np.clip((t // width).astype(int), 0, bins - 1)
    out = np.full(bins, np.nan)
    if how == "mean":
        sums = np.bincount(idx, weights=values, minlength=bins)
        counts = np.bincount(idx, minlength=bins)
        np.divide(sums, counts, out=out, where=counts > 0)
        return out
    order = np.argsort(idx, kind="stable")
    groups = np.split(values[order], np.cumsum(np.bincount(idx, minlength=bins))[:-1])
    for i, group in enumerate(groups):
        if len(group):
            out[i] = np.percentile(group, 99) if how == "p99" else group.max()
    return out


def plot(result: SimResult, path: Path, title: str | None = None) -> Path:
    """Write the four panels to ``path`` (PNG); returns the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigurationError("plotting needs matplotlib: pip install 'podserve[plot]'") from exc

    end = float(len(result.t) * result.dt)
    hours = end > 3 * 3600
    scale, unit = (3600.0, "h") if hours else (60.0, "min")
    width = max(result.dt, 60.0 if hours else 5.0)  # bin for rates and latency
    centres = (np.arange(int(np.ceil(end / width))) + 0.5) * width / scale

    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(11, 9), constrained_layout=True)
    rate = _binned(result.t, result.arrivals / result.dt, width, end, "mean")
    axes[0].plot(centres, rate, color="tab:blue", lw=1)
    axes[0].set_ylabel("arrivals (req/s)")
    axes[1].plot(result.t / scale, result.backlog, color="tab:orange", lw=1)
    axes[1].set_ylabel("queue (messages)")
    axes[2].step(result.t / scale, result.replicas, where="post", label="pods", lw=1)
    axes[2].step(result.t / scale, result.ready, where="post", label="consuming", lw=1)
    axes[2].set_ylabel("replicas")
    axes[2].legend(loc="upper left")
    p99 = _binned(result.arrival_times, result.waits, width, end, "p99")
    axes[3].plot(centres, p99, color="tab:red", lw=1, label=f"p99 per {width:g} s")
    axes[3].axhline(
        result.p99, color="grey", ls="--", lw=1, label=f"overall p99 {result.p99:.1f} s"
    )
    axes[3].set_ylabel("latency (s)")
    axes[3].set_xlabel(f"time ({unit})")
    axes[3].legend(loc="upper left")
    s = result.summary()
    fig.suptitle(
        title
        or f"{result.trace.name}: p99 {s['wait_p99_s']:.1f} s, {s['gpu_hours']:.1f} GPU-h, "
        f"max {s['max_replicas']} replicas"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
