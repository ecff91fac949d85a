"""Many models per pod: byte-based LRU against count-based LRU under Zipf traffic.

Twenty on-demand ``runtime: python`` models (``tests/ballast.py``: each reads its weights file
into memory at load; every load is a real read + BLAKE3 verification + warm-up) of mixed
sizes, log-spaced from ``--min-mib`` to ``--max-mib`` (2–40 MiB by default: the issue's
20–400 MB scaled down by ten so that a run fits a shared 2-core box; the policies only see
ratios). Popularity follows Zipf(``--zipf``) over a seeded shuffle of the models, so size and
popularity are unrelated. The budget is 30% of the total bytes. Both policies run the same
request sequence through the real :class:`~podserve.dataplane.DataPlane`:

- ``bytes``: evict least recently used until the model fits the byte budget (podserve);
- ``count``: at most K on-demand models resident, K = budget / mean model size (what model
  multiplexing elsewhere does), so it holds the same number of bytes on average; run again
  with K - 1, since which K matches the byte policy's mean resident bytes depends on which
  models the traffic favours (``mean_resident_mib`` of each run says).

Requests are sent one at a time; latency is measured around ``DataPlane.infer``, cold loads
included. Writes ``benchmarks/results/residency.json``.

    python benchmarks/residency.py [--requests 3000] [--zipf 1.1] [--min-mib 2] [--max-mib 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.v2 import InferRequest, InferTensor
from tests.ballast import MIB, stage_ballast

RESULT = Path(__file__).parent / "results" / "residency.json"
X = np.zeros((1, 4), np.float32)


def sizes(n: int, lo: float, hi: float) -> list[int]:
    return [int(s * MIB) for s in np.geomspace(lo, hi, n)]


def traffic(n_models: int, n_requests: int, s: float, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    rank_of = rng.permutation(n_models)  # model i has popularity rank rank_of[i]
    weights = 1.0 / (np.arange(1, n_models + 1) ** s)
    p = weights[rank_of] / weights.sum()
    return [int(i) for i in rng.choice(n_models, size=n_requests, p=p)]


async def run(policy: str, root: Path, names: list[str], seq: list[int], budget: int, k: int):
    dp = DataPlane(ModelRepository(root), Settings(model_memory_bytes=budget, log_level="WARNING"))
    if policy == "count":
        dp.residency.max_models = k
    await dp.start([])
    loads = {n: metrics.sample("podserve_model_loads_total", {"model": n}) or 0 for n in names}
    latencies, resident = [], []
    for i in seq:
        request = InferRequest(names[i], [InferTensor("INPUT0", "FP32", X.shape, X)])
        started = time.perf_counter()
        await dp.infer(request)
        latencies.append(time.perf_counter() - started)
        resident.append(dp.residency.resident_bytes())
    total_loads = sum(
        (metrics.sample("podserve_model_loads_total", {"model": n}) or 0) - loads[n] for n in names
    )
    await dp.stop()
    lat = np.array(latencies) * 1000
    return {
        "policy": policy,
        "max_models": k if policy == "count" else None,
        "requests": len(seq),
        "loads": int(total_loads),
        "loads_per_10k": round(total_loads * 10_000 / len(seq), 1),
        "hit_rate": round(1 - total_loads / len(seq), 4),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "mean_ms": round(float(lat.mean()), 2),
        "mean_resident_mib": round(float(np.mean(resident)) / MIB, 1),
        "max_resident_mib": round(float(np.max(resident)) / MIB, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=20)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--min-mib", type=float, default=2.0)
    ap.add_argument("--max-mib", type=float, default=40.0)
    ap.add_argument("--budget-share", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--out", type=Path, default=RESULT)
    args = ap.parse_args()
    load_before = os.getloadavg()
    model_sizes = sizes(args.models, args.min_mib, args.max_mib)
    names = [f"m{i:02d}" for i in range(args.models)]
    budget = int(sum(model_sizes) * args.budget_share)
    k = max(1, round(budget / (sum(model_sizes) / len(model_sizes))))
    seq = traffic(args.models, args.requests, args.zipf, args.seed)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "models"
        for name, size in zip(names, model_sizes, strict=True):
            stage_ballast(root, name, size)
        for policy, cap in (("bytes", k), ("count", k), ("count", k - 1)):
            results.append(asyncio.run(run(policy, root, names, seq, budget, max(1, cap))))
            print(json.dumps(results[-1]), flush=True)
    doc = {
        "benchmark": "residency",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python " + " ".join(["benchmarks/residency.py", *sys.argv[1:]]),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "models": args.models,
        "sizes_mib": [round(s / MIB, 1) for s in model_sizes],
        "total_mib": round(sum(model_sizes) / MIB, 1),
        "budget_mib": round(budget / MIB, 1),
        "zipf": args.zipf,
        "results": results,
        "note": "shared 2-core machine; sizes scaled down 10x from the issue's 20-400 MB",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
