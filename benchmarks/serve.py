"""Requests/s and p50/p99 of ``podserve serve`` over REST and gRPC, beside the model's ceiling.

For an identity model (FP32 [1,384]: pure server overhead) and the MiniLM demo, with dynamic
batching on (the manifest's max batch 32, 2 ms delay) and off (--max-batch-size 1), at
concurrency 1, 8 and 32:

* REST: ``wrk`` (C client) posting the v2 JSON body (the peers harness's load module);
* gRPC: an asyncio client process (grpc.aio, raw tensors) holding N requests in flight;
* ceiling: the same model called in-process at each batch size (rows/s), no server.

    python benchmarks/serve.py                    # about 6 minutes
    python benchmarks/serve.py --seconds 3 --conc 8   # a quick look

Writes benchmarks/results/serve.json (the autoscaling planner reads ``by_batch_size``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "peers"))
from load import measure, wrk_path  # noqa: E402
from procs import Server, free_port_block  # noqa: E402

SENTENCE = "Kubernetes schedules the pod and podserve answers with an embedding."
IDENTITY_PY = """
class Identity:
    def infer(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def stage(root: Path) -> None:
    from podserve.demo import stage_demo
    from podserve.storage.staging import stage_model

    stage_demo(root)
    src = root.parent / "identity.py"
    src.write_text(IDENTITY_PY)
    if not (root / "identity" / "1").exists():
        stage_model(
            {"model.py": src},
            root / "identity" / "1",
            {
                "runtime": "python",
                "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [384]}],
                "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [384]}],
                "max_batch_size": 32,
                "options": {"module": "model.py:Identity"},
            },
        )


def bodies(scratch: Path) -> dict[str, Path]:
    ident = {
        "inputs": [
            {
                "name": "INPUT0",
                "shape": [1, 384],
                "datatype": "FP32",
                "data": np.linspace(0, 1, 384, dtype=np.float32).tolist(),
            }
        ]
    }
    mini = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [SENTENCE]}]}
    out = {}
    for name, body in (("identity", ident), ("minilm", mini)):
        out[name] = scratch / f"{name}.json"
        out[name].write_text(json.dumps(body))
    return out


# --- gRPC load: a separate process so it does not share the GIL with anything ------------


async def _grpc_load(target: str, model: str, conc: int, seconds: float) -> dict[str, float]:
    import grpc

    from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
    from podserve.protocol.grpc._generated import grpc_service_pb2_grpc as pbg

    req = pb.ModelInferRequest(model_name=model)
    if model == "identity":
        t = req.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 384])
        req.raw_input_contents.append(np.linspace(0, 1, 384, dtype=np.float32).tobytes())
    else:
        t = req.inputs.add(name="text", datatype="BYTES", shape=[1])
        raw = SENTENCE.encode()
        req.raw_input_contents.append(len(raw).to_bytes(4, "little") + raw)
    del t
    lat: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pbg.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(req)
        stop = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < stop:
                try:
                    await stub.ModelInfer(req)
                except grpc.aio.AioRpcError:
                    errors += 1
                    continue
                lat.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conc)))
        elapsed = time.perf_counter() - started
    arr = np.array(lat) * 1000
    return {
        "rps": len(lat) / elapsed,
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "requests": len(lat),
        "errors": errors,
    }


def grpc_measure(port: int, model: str, conc: int, warmup: float, seconds: float) -> dict:
    argv = [sys.executable, __file__, "--grpc-client", f"127.0.0.1:{port}", model, str(conc)]
    if warmup:
        subprocess.run([*argv, str(warmup)], check=True, capture_output=True)
    out = subprocess.run([*argv, str(seconds)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


# --- in-process ceiling -----------------------------------------------------------------------


def ceiling(root: Path, model: str, seconds: float) -> dict[str, float]:
    from podserve.runtime.registry import create_model
    from podserve.settings import Settings
    from podserve.storage.repository import ModelRepository

    m = create_model(ModelRepository(root).open(model), Settings(model_root=root))
    m.load()
    by_size: dict[str, float] = {}
    for n in (1, 2, 4, 8, 16, 32):
        if model == "identity":
            batch = {"INPUT0": np.ones((n, 384), np.float32)}
        else:
            batch = {"text": np.array([SENTENCE.encode()] * n, dtype=object)}
        m.infer(batch)
        rows, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 6:
            m.infer(batch)
            rows += n
        by_size[str(n)] = rows / (time.perf_counter() - started)
    m.unload()
    return by_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--conc", default="1,8,32")
    ap.add_argument("--models", default="identity,minilm")
    ap.add_argument("--surfaces", default="http,grpc")
    ap.add_argument("--scratch", default="/tmp/podserve-bench-serve")
    ap.add_argument("--grpc-client", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.grpc_client:
        target, model, conc, secs = args.grpc_client
        print(json.dumps(asyncio.run(_grpc_load(target, model, int(conc), float(secs)))))
        return
    wrk_path()
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    root = scratch / "models"
    stage(root)
    body = bodies(scratch)
    models = args.models.split(",")
    concs = [int(c) for c in args.conc.split(",")]
    surfaces = args.surfaces.split(",")
    rows: list[dict] = []
    podserve = shutil.which("podserve", path=str(Path(sys.executable).parent)) or "podserve"
    for batching in ("on", "off"):
        port = free_port_block(2)
        argv = [
            podserve,
            "serve",
            str(root),
            "--http-port",
            str(port),
            "--grpc-port",
            str(port + 1),
            *[a for m in models for a in ("--model", m)],
        ]
        if batching == "off":
            argv += ["--max-batch-size", "1"]
        env = dict(os.environ, PODSERVE_DRAIN_GRACE_SECONDS="0")
        server = Server(argv, env, scratch / f"server-{batching}.log", None)
        try:
            server.wait_ready(f"http://127.0.0.1:{port}", models, 120)
            for model in models:
                for surface in surfaces:
                    for conc in concs:
                        if surface == "http":
                            url = f"http://127.0.0.1:{port}/v2/models/{model}/infer"
                            r = measure(server, url, body[model], conc, args.warmup, args.seconds)
                        else:
                            r = grpc_measure(port + 1, model, conc, args.warmup, args.seconds)
                        r.update(model=model, surface=surface, batching=batching, conc=conc)
                        rows.append(r)
                        print(
                            f"{model:9} {surface:5} batching {batching:3} c={conc:<3} "
                            f"{r['rps']:8.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                            f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                            flush=True,
                        )
        finally:
            server.stop()
    ceilings = {m: ceiling(root, m, args.seconds) for m in models}
    print("\n| model | surface | batching | concurrency | req/s | p50 ms | p99 ms | vs ceiling |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        best = max(ceilings[r["model"]].values())
        print(
            f"| {r['model']} | {r['surface']} | {r['batching']} | {r['conc']} | {r['rps']:.0f} "
            f"| {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps'] / best:.2f}x |"
        )
    for m, by in ceilings.items():
        sizes = ", ".join(f"{k}: {v:.0f}" for k, v in by.items())
        print(f"\nceiling {m} (in-process rows/s by batch size): {sizes}")
    out = HERE / "results" / "serve.json"
    out.parent.mkdir(exist_ok=True)
    minilm = ceilings.get("minilm", {})
    out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "machine": "2 cores, 24 GB, no GPU",
                "command": "python benchmarks/serve.py " + " ".join(sys.argv[1:]),
                "rows": rows,
                "ceilings": ceilings,
                "by_batch_size": {k: v for k, v in minilm.items()},
                "throughput_rps": max(minilm.values()) if minilm else None,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
