"""What the gRPC surface costs per tensor: codec time and loopback round trips on raw contents.

Pipeline stages pass activations (FP16 hidden states) between pods with ModelInfer and
``raw_input_contents``; this measures, for a few tensor sizes, (1) decoding a serialised
ModelInferRequest into numpy (``FromString`` + ``convert.request_from_pb``), (2) encoding the
answer (``convert.response_to_pb`` + ``SerializeToString``), and (3) a full sequential
round trip over loopback through ``GrpcServer`` and the data plane to a pass-through model
(no batching delay), with podserve's own stub as the client.

    python benchmarks/grpc_raw.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from podserve.dataplane import DataPlane
from podserve.protocol.grpc import convert
from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.protocol.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from podserve.protocol.grpc.server import GrpcServer
from podserve.runtime.model import Model
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model
from podserve.v2 import InferRequest, InferTensor, output_tensor
from podserve.v2 import InferResponse as V2Response

CASES = [  # name, shape, datatype
    ("FP32 [1,1,384]", (1, 1, 384), "FP32"),
    ("FP16 [1,128,768]", (1, 128, 768), "FP16"),
    ("FP16 [1,512,4096]", (1, 512, 4096), "FP16"),
]


class PassThrough(Model):
    def load(self) -> None:
        pass

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {f"y_{k[2:]}": v for k, v in inputs.items()}


def _timeit(fn: Any, seconds: float) -> list[float]:
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 5:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _serve(root: Path) -> tuple[GrpcServer, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    settings = Settings(model_root=root, max_body_bytes=256 * 1024 * 1024)
    dp = DataPlane(ModelRepository(root), settings, factory=lambda mv, s: PassThrough(mv, s))
    server = GrpcServer(dp, settings, "127.0.0.1", 0)

    async def start() -> None:
        await dp.start([("pass", None)])
        await server.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    return server, loop


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "w.txt").write_text("none\n")
    specs = [{"name": f"x_{dt}", "datatype": dt, "shape": [-1, -1]} for dt in ("FP32", "FP16")]
    outs = [{**s, "name": f"y_{s['datatype']}"} for s in specs]
    stage_model(
        {"w.txt": tmp / "w.txt"},
        tmp / "models" / "pass" / "1",
        {
            "runtime": "python",
            "inputs": specs,
            "outputs": outs,
            "max_batch_size": 8,
            "batching": {"max_queue_delay_ms": 0.0},
        },
    )
    server, loop = _serve(tmp / "models")
    channel = grpc.insecure_channel(
        f"127.0.0.1:{server.port}",
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
    rows = []
    for label, shape, dt in CASES:
        x = rng.standard_normal(shape).astype(np.float16 if dt == "FP16" else np.float32)
        other = "FP32" if dt == "FP16" else "FP16"
        y = np.zeros((1, 1, 1), np.float32 if other == "FP32" else np.float16)
        req = InferRequest(
            "pass",
            [InferTensor(f"x_{dt}", dt, x.shape, x), InferTensor(f"x_{other}", other, y.shape, y)],
        )
        wire = convert.request_to_pb(req).SerializeToString()
        resp = V2Response("pass", "1", [output_tensor(f"y_{dt}", x)])
        decode = _timeit(
            lambda w=wire: convert.request_from_pb(pb.ModelInferRequest.FromString(w)), args.seconds
        )
        encode = _timeit(lambda r=resp: convert.response_to_pb(r).SerializeToString(), args.seconds)
        msg = convert.request_to_pb(req)
        got = convert.response_from_pb(stub.ModelInfer(msg))
        assert np.array_equal({t.name: t.data for t in got.outputs}[f"y_{dt}"], x)
        trip = _timeit(lambda m=msg: stub.ModelInfer(m), args.seconds)
        mb = x.nbytes / 1e6
        rows.append(
            {
                "tensor": label,
                "bytes": x.nbytes,
                "decode_ms": statistics.median(decode) * 1e3,
                "encode_ms": statistics.median(encode) * 1e3,
                "roundtrip_p50_ms": statistics.median(trip) * 1e3,
                "roundtrip_p99_ms": float(np.percentile(trip, 99)) * 1e3,
                "roundtrip_MBps": mb / statistics.median(trip),
            }
        )
    channel.close()
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(10)
    asyncio.run_coroutine_threadsafe(server.dataplane.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)

    print(
        "| tensor | bytes | decode ms (p50) | encode ms (p50) | round trip p50 ms | p99 ms | MB/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['tensor']} | {r['bytes']} | {r['decode_ms']:.3f} | {r['encode_ms']:.3f} | "
            f"{r['roundtrip_p50_ms']:.2f} | {r['roundtrip_p99_ms']:.2f} | "
            f"{r['roundtrip_MBps']:.0f} |"
        )
    out = Path(__file__).parent / "results" / "grpc_raw.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
