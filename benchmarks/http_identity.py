"""REST overhead: req/s and p50/p99 of the identity FP32 [1,384] model under wrk.

Stages an identity model (``runtime: python``) in a scratch repository, starts
``podserve serve`` on it (HTTP only), checks one answer, then drives
``POST /v2/models/identity/infer`` with wrk at each concurrency, in v2 JSON and in Triton's
binary-tensor form. Reports the server's and wrk's CPU share too: the two cores are shared by
both, so a faster server leaves more CPU to the client and vice versa.

    python benchmarks/http_identity.py                       # c = 1, 8, 32; 8 s each
    python benchmarks/http_identity.py -c 32 -d 15 --body json --profile /tmp/prof.svg

Needs ``wrk`` (Debian: ``apt-get install -y wrk``); ``--profile`` needs py-spy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from podserve.storage.staging import stage_model

MODEL_PY = """
class Identity:
    def infer(self, inputs):
        return {"OUTPUT0": inputs["INPUT0"]}
"""
LUA = """
local f = io.open("{body}", "rb"); local body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "{ctype}"
{extra}
"""
RESULTS = Path(__file__).parent / "results" / "http_identity.json"


def stage(root: Path, batching: bool) -> None:
    src = root.parent / "model.py"
    src.write_text(MODEL_PY, encoding="utf-8")
    tensor = {"datatype": "FP32", "shape": [384]}
    stage_model(
        {"model.py": src},
        root / "identity" / "1",
        {
            "runtime": "python",
            "options": {"module": "model.py:Identity"},
            "inputs": [{"name": "INPUT0", **tensor}],
            "outputs": [{"name": "OUTPUT0", **tensor}],
            "max_batch_size": 32 if batching else 0,
            "batching": {"max_queue_delay_ms": 1.0},
        },
    )


def bodies(tmp: Path, batching: bool) -> dict[str, tuple[Path, str, str]]:
    rng = random.Random(0)
    values = [round(rng.random(), 6) for _ in range(384)]
    shape = [1, 384] if batching else [384]
    doc = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": values}]}
    (tmp / "body.json").write_bytes(json.dumps(doc).encode())
    raw = np.asarray(values, np.float32).tobytes()
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    (tmp / "body.bin").write_bytes(head + raw)
    return {
        "json": (tmp / "body.json", "application/json", ""),
        "binary": (
            tmp / "body.bin",
            "application/octet-stream",
            f'wrk.headers["Inference-Header-Content-Length"] = "{len(head)}"',
        ),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"podserve serve exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server not ready in time")


def check(base: str, body: Path) -> None:
    req = urllib.request.Request(
        f"{base}/v2/models/identity/infer",
        data=body.read_bytes(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        out = json.loads(r.read())["outputs"][0]["data"]
    sent = json.loads(body.read_bytes())["inputs"][0]["data"]
    assert np.allclose(np.float32(out), np.float32(sent)), "identity answered different data"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}[unit]


def run_wrk(url: str, lua: Path, conns: int, seconds: float, server_pid: int) -> dict[str, Any]:
    threads = min(2, conns)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(lua),
        url,
    ]
    server0, wall0 = cpu_seconds(server_pid), time.monotonic()
    client0 = os.times()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    client1 = os.times()
    wall = time.monotonic() - wall0
    client_cpu = (client1.children_user - client0.children_user) + (
        client1.children_system - client0.children_system
    )
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "server_cpu": (cpu_seconds(server_pid) - server0) / wall,
        "client_cpu": client_cpu / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("-d", "--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--body", choices=["json", "binary", "both"], default="both")
    parser.add_argument("--batching", choices=["on", "off"], default="on")
    parser.add_argument("--profile", help="py-spy flame graph of the server at the last row")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    batching = args.batching == "on"
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="podserve-bench-") as scratch:
        tmp = Path(scratch)
        stage(tmp / "models", batching)
        kinds = bodies(tmp, batching)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "PODSERVE_LOG_LEVEL": "WARNING"}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "podserve",
                "serve",
                str(tmp / "models"),
                "--host",
                "127.0.0.1",
                "--http-port",
                str(port),
                "--grpc-port",
                "0",
            ],
            env=env,
        )
        try:
            wait_ready(base, proc)
            check(base, kinds["json"][0])
            url = f"{base}/v2/models/identity/infer"
            for kind in ["json", "binary"] if args.body == "both" else [args.body]:
                body, ctype, extra = kinds[kind]
                lua = tmp / f"{kind}.lua"
                lua.write_text(LUA.format(body=body, ctype=ctype, extra=extra), encoding="utf-8")
                for conns in args.concurrency:
                    run_wrk(url, lua, conns, args.warmup, proc.pid)
                    spy = None
                    if args.profile and conns == args.concurrency[-1]:
                        spy = subprocess.Popen(
                            [
                                "py-spy",
                                "record",
                                "-p",
                                str(proc.pid),
                                "-o",
                                args.profile,
                                "-d",
                                str(int(args.duration)),
                                "-r",
                                "200",
                                "--nonblocking",
                            ]
                        )
                    row = {
                        "body": kind,
                        "concurrency": conns,
                        "batching": args.batching,
                        **run_wrk(url, lua, conns, args.duration, proc.pid),
                    }
                    if spy is not None:
                        spy.wait(60)
                    rows.append(row)
                    print(
                        f"{kind:6} c={conns:<3} {row['rps']:8.0f} req/s  p50 {row['p50_ms']:.2f}"
                        f" ms  p99 {row['p99_ms']:.2f} ms",
                        file=sys.stderr,
                    )
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(
        f"identity FP32 [1,384], batching {args.batching}, {args.duration:.0f} s per row, "
        f"wrk -t{min(2, max(args.concurrency))}\n"
    )
    print("| body | concurrency | req/s | p50 ms | p99 ms | non-2xx | server CPU | wrk CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['body']} | {r['concurrency']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['errors']} | {r['server_cpu']:.0%} | {r['client_cpu']:.0%} |"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
