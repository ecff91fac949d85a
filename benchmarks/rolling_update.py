"""Failed requests and p99 during rolling updates: podserve replicas replaced under load.

Two ``podserve serve`` replicas of a small model (the echo model of
``tests/integration/serve_process.py``, a python-runtime model that sleeps ``--delay-ms`` per
batch) sit behind two round-robin TCP proxies (HTTP and gRPC) that behave like kube-proxy: a
connection sticks to its backend, a backend leaves the rotation ``--removal-delay`` seconds
after its SIGTERM and comes back once its replacement is ready. Keep-alive clients (aiohttp
for HTTP, tritonclient.grpc.aio for gRPC; every answer checked) post for ``--seconds``, while
every ``--every`` seconds one replica, in turn, is SIGTERMed and started again.

    python benchmarks/rolling_update.py                           # 2 minutes, 32 + 8 clients
    python benchmarks/rolling_update.py --seconds 30 --every 10   # a quick look

Writes benchmarks/results/rolling_update.json: failed / total requests, and p50/p99 of the
requests sent while a replica was being replaced versus the rest (steady state).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the harness lives with the test that uses it
from tests.integration.load import Load  # noqa: E402
from tests.integration.rollout import Fleet, Replacement, summarize  # noqa: E402
from tests.integration.serve_process import ServeProcess, stage_echo  # noqa: E402


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="podserve-bench-rolling-"))
    root = stage_echo(work / "models", delay_s=args.delay_ms / 1000)
    env = {
        "PODSERVE_DRAIN_GRACE_SECONDS": str(args.grace),
        "PODSERVE_GRPC_MAX_CONNECTION_AGE_SECONDS": str(args.grpc_age),
        "PODSERVE_DRAIN_TIMEOUT_SECONDS": "20",
        "PODSERVE_INTRA_OP_THREADS": "1",
    }
    replicas = [ServeProcess(root, work / f"replica{i}.log", **env) for i in range(2)]
    fleet = await Fleet.start(replicas)
    load = Load(
        http_url=f"http://{fleet.http.address}",
        grpc_addr=fleet.grpc.address,
        http_clients=args.http_clients,
        grpc_clients=args.grpc_clients,
    )
    replacements: list[Replacement] = []
    loadavg = []
    try:
        started = time.monotonic()
        load.start()
        turn = 0
        while time.monotonic() - started + args.every <= args.seconds:
            await asyncio.sleep(args.every - (time.monotonic() - started) % args.every)
            loadavg.append(os.getloadavg()[0])
            replacements.append(await fleet.replace(turn % 2, removal_delay_s=args.removal_delay))
            turn += 1
        await asyncio.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
        outcomes = await load.stop()
        elapsed = time.monotonic() - started
    finally:
        await fleet.close()
    result = summarize(outcomes, replacements)
    return {
        "benchmark": "rolling_update",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} cores, no GPU",
        "command": " ".join(["python", "benchmarks/rolling_update.py", *sys.argv[1:]]),
        "loadavg_at_restarts": [round(x, 2) for x in loadavg],
        "setup": {
            "replicas": 2,
            "http_clients": args.http_clients,
            "grpc_clients": args.grpc_clients,
            "seconds": round(elapsed, 1),
            "restart_every_s": args.every,
            "endpoint_removal_delay_s": args.removal_delay,
            "drain_grace_s": args.grace,
            "grpc_max_connection_age_s": args.grpc_age,
            "model": f"echo, python runtime, {args.delay_ms} ms per batch, max batch 8",
        },
        "replacements": [
            {
                "replica": r.replica,
                "exit_code": r.exit_code,
                "exit_after_sigterm_s": round(r.exited - r.sigterm, 2),
                "back_in_rotation_after_sigterm_s": round(r.ready - r.sigterm, 2),
            }
            for r in replacements
        ],
        "failed": result["total"]["failed"],
        "requests": result["total"]["requests"],
        "http": result["http"],
        "grpc": result["grpc"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--every", type=float, default=20.0, help="seconds between restarts")
    parser.add_argument("--http-clients", type=int, default=32)
    parser.add_argument("--grpc-clients", type=int, default=8)
    parser.add_argument("--removal-delay", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=3.0, help="PODSERVE_DRAIN_GRACE_SECONDS")
    parser.add_argument(
        "--grpc-age", type=float, default=1.0, help="PODSERVE_GRPC_MAX_CONNECTION_AGE_SECONDS"
    )
    parser.add_argument("--delay-ms", type=float, default=2.0, help="model time per batch")
    parser.add_argument("--out", default=str(HERE / "results" / "rolling_update.json"))
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        result = asyncio.run(run(args))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"failed {result['failed']} of {result['requests']} requests")
    print("| surface | window | requests | failed | p50 ms | p99 ms |")
    print("|---|---|---:|---:|---:|---:|")
    for surface in ("http", "grpc"):
        for window in ("steady", "restarting"):
            w = result[surface][window]
            print(
                f"| {surface} | {window} | {w['requests']} | {w['failed']} | "
                f"{w['p50_ms']} | {w['p99_ms']} |"
            )


if __name__ == "__main__":
    main()
