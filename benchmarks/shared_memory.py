"""Memory of N replicas serving the same version from the same files: total PSS.

PSS (proportional set size, ``/proc/PID/smaps_rollup``) charges each process its share of
every page it maps: a page of a weight file mapped by 4 processes counts 1/4 in each, so
the sum over the replicas is the memory they really take together. For each model and
runtime, 1, 2 and 4 ``podserve serve`` processes are started on the same repository, each
answers one inference (a lazily mapped model faults its pages in there), and the sums of
their PSS, of the PSS of the weight files' mappings (from ``/proc/PID/smaps``) and of their
anonymous PSS are recorded.

    python benchmarks/shared_memory.py                       # ~1.5 GB decoder, MiniLM x3
    python benchmarks/shared_memory.py --quick               # 4-layer decoder, a quick look

Models (staged under /tmp/podserve-bench/shared-memory, deleted at the end unless --keep):
MiniLM (transformers runtime, lean BERT, fp32 safetensors), its int8 ONNX export (onnx
runtime, weights inside the .onnx file), a synthetic GPT-2-style decoder (24 x 1152, ~1.5 GB
fp32; transformers runtime, lean decoder) and a torch-runtime MLP (user ``nn.Module``).
Writes benchmarks/results/shared_memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "shared_memory.json"
MB = 1024 * 1024

MLP = """
import torch

class Net(torch.nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(width, width) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x
"""


def stage(root: Path, decoder_layers: int, decoder_hidden: int) -> dict[str, dict[str, Any]]:
    """Stage the models; returns {model: {runtime, request}}."""
    import torch

    from podserve.demo import stage_demo, stage_onnx_demo
    from podserve.pipeline.synthetic import stage_synthetic_decoder
    from podserve.runtime.safetensors_view import write_safetensors
    from podserve.storage.staging import stage_model

    text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["w2 w3"]}]}
    stage_demo(root)
    stage_onnx_demo(root)
    if not (root / "decoder" / "1").exists():
        stage_synthetic_decoder(root, "decoder", layers=decoder_layers, hidden=decoder_hidden)
    width, depth = 2048, 16  # 16 x 2048 x 2048 fp32 = 256 MiB
    if not (root / "mlp" / "1").exists():
        src = root.parent / "mlp-src"
        src.mkdir(parents=True, exist_ok=True)
        (src / "model.py").write_text(MLP)
        specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        for i in range(depth):
            specs[f"layers.{i}.weight"] = (torch.float32, (width, width))
            specs[f"layers.{i}.bias"] = (torch.float32, (width,))
        gen = torch.Generator().manual_seed(0)
        write_safetensors(
            src / "model.safetensors",
            specs,
            lambda n: torch.randn(specs[n][1], generator=gen) * 0.02,
        )
        manifest = {
            "runtime": "torch",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [width]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [width]}],
            "max_batch_size": 8,
            "options": {"module": "model.py:Net", "kwargs": {"width": width, "depth": depth}},
        }
        stage_model({p.name: p for p in src.iterdir()}, root / "mlp" / "1", manifest)
        shutil.rmtree(src)
    vector = {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, width], "data": [0.5] * width}]
    }
    return {
        "minilm": {"runtime": "transformers", "request": text},
        "minilm-onnx": {"runtime": "onnx", "request": text},
        "decoder": {"runtime": "transformers", "request": text},
        "mlp": {"runtime": "torch", "request": vector},
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(root: Path, model: str, strategy: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "PODSERVE_DRAIN_GRACE_SECONDS": "0",
        "PODSERVE_LOG_LEVEL": "WARNING",
        "PODSERVE_INTRA_OP_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "podserve", "serve", str(root), "--model", model,
           "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0",
           "--read-strategy", strategy]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), port


def wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise RuntimeError(f"serve exited with {proc.returncode}: {err[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise TimeoutError(f"not ready after {timeout}s")


def infer(port: int, model: str, request: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/{model}/infer",
        data=json.dumps(request).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def metadata(port: int, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}", timeout=30) as r:
        out: dict[str, Any] = json.loads(r.read())
        return out


def rollup(pid: int) -> dict[str, int]:
    """``smaps_rollup`` fields in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[-1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def mapped_pss(pid: int, under: Path) -> int:
    """PSS of the mappings of files under ``under`` (the weight files), in bytes."""
    total, inside = 0, False
    prefix = str(under.resolve())
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(None, 5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) == 6 and head[5].startswith(prefix)
        elif inside and line.startswith("Pss:"):
            total += int(line.split()[1]) * 1024
    return total


def measure(
    root: Path, model: str, strategy: str, replicas: int, request: dict[str, Any]
) -> dict[str, Any]:
    procs: list[tuple[subprocess.Popen[bytes], int]] = []
    try:
        for _ in range(replicas):
            procs.append(start(root, model, strategy))
        for proc, port in procs:
            wait_ready(proc, port)
        for _, port in procs:
            infer(port, model, request)
        weights = metadata(procs[0][1], model).get("parameters", {}).get("weights", "")
        time.sleep(0.5)
        pss = anon = mapped = 0
        for proc, _ in procs:
            r = rollup(proc.pid)
            pss += r["Pss"]
            anon += r.get("Pss_Anon", 0)
            mapped += mapped_pss(proc.pid, root)
        return {
            "model": model,
            "strategy": strategy,
            "replicas": replicas,
            "weights": weights,
            "pss_mb": round(pss / MB, 1),
            "weight_file_pss_mb": round(mapped / MB, 1),
            "anon_pss_mb": round(anon / MB, 1),
            "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        }
    finally:
        for proc, _ in procs:
            proc.terminate()
        for proc, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def summarise(rows: list[dict[str, Any]], sizes: dict[str, int]) -> list[dict[str, Any]]:
    """Per model and read strategy: what the weights cost with 1 and with N replicas.

    ``weights_ratio``: the weight files' PSS summed over N replicas over that of one (shared
    mappings: ~1.0). For a private copy the weights are anonymous memory and cannot be told
    apart from the rest, so ``extra_per_replica_mb`` (PSS added by each replica after the
    first) is the figure to compare with ``weight_mb``.
    """
    out = []
    for model, strategy in sorted({(r["model"], r["strategy"]) for r in rows}):
        by_n = {r["replicas"]: r for r in rows if (r["model"], r["strategy"]) == (model, strategy)}
        n = max(by_n)
        if 1 not in by_n or n == 1:
            continue
        one, many = by_n[1], by_n[n]
        mapped_one = one["weight_file_pss_mb"]
        out.append(
            {
                "model": model,
                "runtime": many.get("runtime", ""),
                "strategy": strategy,
                "weights": many["weights"],
                "replicas": n,
                "weight_mb": round(sizes[model] / MB, 1),
                "pss_1_mb": one["pss_mb"],
                "pss_n_mb": many["pss_mb"],
                "total_ratio": round(many["pss_mb"] / one["pss_mb"], 2),
                "extra_per_replica_mb": round((many["pss_mb"] - one["pss_mb"]) / (n - 1), 1),
                "weights_ratio": (
                    round(many["weight_file_pss_mb"] / mapped_one, 2) if mapped_one > 1 else None
                ),
            }
        )
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| model | read | weights | replicas | total PSS MB | weight-file PSS MB | anon PSS MB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['strategy']} | {r['weights']} | {r['replicas']} | "
            f"{r['pss_mb']:.0f} | {r['weight_file_pss_mb']:.0f} | {r['anon_pss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/podserve-bench/shared-memory"))
    parser.add_argument("--quick", action="store_true", help="4-layer decoder; 1 and 2 replicas")
    parser.add_argument("--models", default="minilm,minilm-onnx,mlp,decoder")
    parser.add_argument("--replicas", default=None, help="e.g. 1,2,4")
    parser.add_argument(
        "--read-models",
        default="minilm,mlp",
        help="models also measured with PODSERVE_READ_STRATEGY=read (a private copy each)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the staged models")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--summarise", type=Path, metavar="JSON", help="recompute the summary of a result file"
    )
    args = parser.parse_args()
    if args.summarise:
        result = json.loads(args.summarise.read_text())
        result["summary"] = summarise(result["rows"], result["weight_bytes"])
        args.summarise.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["summary"], indent=2))
        return 0
    root = args.scratch / "models"
    layers, hidden = (4, 1152) if args.quick else (24, 1152)
    counts = [int(c) for c in (args.replicas or ("1,2" if args.quick else "1,2,4")).split(",")]
    models = stage(root, layers, hidden)
    sizes = {
        name: sum(
            p.stat().st_size
            for p in (root / name / "1").iterdir()
            if p.suffix in (".safetensors", ".onnx")
        )
        for name in models
    }
    rows: list[dict[str, Any]] = []
    try:
        for model in args.models.split(","):
            strategies = ["mmap"] + (["read"] if model in args.read_models.split(",") else [])
            for strategy in strategies:
                for n in counts:
                    row = measure(root, model, strategy, n, models[model]["request"])
                    row["runtime"] = models[model]["runtime"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    summary = summarise(rows, sizes)
    result = {
        "benchmark": "shared_memory",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/shared_memory.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "loadavg_end": Path("/proc/loadavg").read_text().split()[:3],
        "weight_bytes": sizes,
        "rows": rows,
        "summary": summary,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
