"""A rolling update of real ``podserve serve`` replicas behind round-robin proxies.

Kubernetes replaces a pod like this: SIGTERM (after the preStop hook), the endpoint leaves
the Service some time later (kube-proxy, ingresses and meshes catch up asynchronously), the
process drains and exits, a new pod starts and joins the rotation once its readiness probe
passes. :func:`replace` plays that against :class:`~tests.integration.proxy.RoundRobinProxy`
(one for HTTP, one for gRPC), and :func:`summarize` splits the clients' outcomes into the
windows of a restart and steady state. ``tests/integration/test_rolling_update.py`` and
``benchmarks/rolling_update.py`` both use it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from tests.integration.load import Outcome
from tests.integration.proxy import RoundRobinProxy
from tests.integration.serve_process import ServeProcess


@dataclass
class Replacement:
    replica: int
    sigterm: float
    removed: float = 0.0
    exited: float = 0.0
    exit_code: int | None = None
    ready: float = 0.0


@dataclass
class Fleet:
    """Replicas and the two proxies in front of them."""

    replicas: list[ServeProcess]
    http: RoundRobinProxy
    grpc: RoundRobinProxy

    @classmethod
    async def start(cls, replicas: list[ServeProcess]) -> Fleet:
        for r in replicas:
            await asyncio.to_thread(r.wait_ready)
        http = RoundRobinProxy([("127.0.0.1", r.http_port) for r in replicas])
        grpc = RoundRobinProxy([("127.0.0.1", r.grpc_port) for r in replicas])
        await http.start()
        await grpc.start()
        return cls(replicas, http, grpc)

    async def close(self) -> None:
        await self.http.close()
        await self.grpc.close()
        for r in self.replicas:
            r.kill()

    async def replace(self, i: int, *, removal_delay_s: float) -> Replacement:
        """SIGTERM replica ``i``, drop it from the rotation ``removal_delay_s`` later, wait for
        it to exit, start it again and put it back once ready."""
        replica = self.replicas[i]
        backend_http, backend_grpc = (
            ("127.0.0.1", replica.http_port),
            ("127.0.0.1", replica.grpc_port),
        )
        r = Replacement(i, time.monotonic())
        replica.terminate()
        await asyncio.sleep(removal_delay_s)
        self.http.remove(backend_http)
        self.grpc.remove(backend_grpc)
        r.removed = time.monotonic()
        r.exit_code = await asyncio.to_thread(replica.wait, 120)
        r.exited = time.monotonic()
        replica.restart()
        await asyncio.to_thread(replica.wait_ready, 180)
        r.ready = time.monotonic()
        self.http.add(backend_http)
        self.grpc.add(backend_grpc)
        return r


def _p99_ms(latencies: list[float]) -> float | None:
    if not latencies:
        return None
    return round(float(np.percentile(np.array(latencies), 99)) * 1000, 2)


def _window(outcomes: list[Outcome]) -> dict[str, Any]:
    failures = Counter(o.result for o in outcomes if not o.ok)
    return {
        "requests": len(outcomes),
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "p50_ms": (
            round(float(np.percentile([o.latency for o in outcomes], 50)) * 1000, 2)
            if outcomes
            else None
        ),
        "p99_ms": _p99_ms([o.latency for o in outcomes if o.ok]),
    }


def summarize(
    outcomes: list[Outcome], replacements: list[Replacement], tail_s: float = 1.0
) -> dict[str, Any]:
    """Totals, plus each surface split into "restarting" (from a SIGTERM until ``tail_s``
    after the replacement is back in the rotation) and "steady" (the rest)."""

    def restarting(o: Outcome) -> bool:
        return any(r.sigterm <= o.sent <= r.ready + tail_s for r in replacements)

    out: dict[str, Any] = {"total": _window(outcomes)}
    for surface in ("http", "grpc"):
        mine = [o for o in outcomes if o.surface == surface]
        out[surface] = {
            "all": _window(mine),
            "restarting": _window([o for o in mine if restarting(o)]),
            "steady": _window([o for o in mine if not restarting(o)]),
        }
    return out
