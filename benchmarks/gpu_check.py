"""GPU check: what this machine's NVIDIA GPU gives podserve, in one run of a few minutes.

    python benchmarks/gpu_check.py                 # on a machine with an NVIDIA GPU
    python benchmarks/gpu_check.py --cpu-dry-run   # exercise the script's paths on the CPU

It prints the inventory (NVML + torch), then through the real DataPlane:

1. loads the MiniLM demo (``podserve.demo.stage_demo``) onto the GPU: load time, batch cap,
   memory budget;
2. stages a synthetic ~4 GB fp16 safetensors model and loads it onto the GPU (read + verify +
   host→device, GB/s), and times the host→device copy alone three ways: pageable copies from
   the memory-mapped file (what the torch runtime does), a pinned double-buffered staging copy,
   and ``safetensors.safe_open(device="cuda")``;
3. finds the batch cap of a model that costs 256 MiB per sample (the warm-up probe);
4. forces an out-of-memory split: the cap is lifted and more rows than fit are sent at once;
   every request must be answered, ``podserve_oom_splits_total`` must count it;
5. sends 10,000 MiniLM requests: ``torch.cuda.memory_allocated`` must be flat, and the
   throughput is measured.

Plain-text output meant to be pasted into docs/benchmarks.md; the numbers also go to
benchmarks/results/gpu_check.json. Without a GPU it says so and exits 0 having measured
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import mmap
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from podserve import metrics
from podserve.runtime.devices import inventory

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"
GB = 1e9
MiB = 1 << 20

BIG_NET = """
import torch


class Big(torch.nn.Module):
    \"\"\"fp16 square layers built on the meta device: the runtime assigns the file's tensors.\"\"\"

    def __init__(self, layers: int, width: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(
            torch.nn.Linear(width, width, bias=False, device="meta", dtype=torch.float16)
            for _ in range(layers)
        )

    def forward(self, x):
        h = x.half()
        for layer in self.layers:
            h = torch.relu(layer(h)) * 0.01
        return h.float()
"""

HUNGRY_NET = """
import torch


class Hungry(torch.nn.Module):
    \"\"\"Each sample materialises `floats` fp32 values: a known memory cost per sample.\"\"\"

    def __init__(self, floats: int) -> None:
        super().__init__()
        self.floats = floats

    def forward(self, x):
        wide = x.expand(-1, self.floats).contiguous()
        return wide.sum(dim=1, keepdim=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=4.0, help="synthetic model size")
    parser.add_argument("--requests", type=int, default=10_000, help="MiniLM requests")
    parser.add_argument("--workdir", help="where to stage models (default: a temp dir)")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="every step on the CPU, small sizes"
    )
    args = parser.parse_args()

    inv = inventory(with_torch=True)
    print("## inventory\n")
    print(inv.render())
    print()
    header = {
        "date": time.strftime("%Y-%m-%d"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "command": "python " + " ".join(sys.argv),
        "inventory": inv.to_dict(),
    }
    if not args.cpu_dry_run and (inv.count == 0 or not (inv.torch or {}).get("device_count")):
        why = inv.reason or "torch sees no CUDA device (a CPU build of torch?)"
        print(f"NO GPU: no NVIDIA GPU is visible to this process ({why}); nothing measured.")
        _write({**header, "gpu": False, "reason": why})
        return 0
    if args.cpu_dry_run:
        args.size_gb, args.requests = min(args.size_gb, 0.05), min(args.requests, 500)
    device = "cpu" if args.cpu_dry_run else "cuda:0"
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="gpu-check-") as tmp:
        rows = asyncio.run(_checks(Path(tmp), device, args))
    print("\n## results\n")
    print("| check | result |")
    print("|---|---|")
    for key, value in rows.items():
        print(f"| {key} | {value} |")
    if args.cpu_dry_run:
        print("\n(CPU dry run: results not written)")
    else:
        _write({**header, "gpu": True, "device": device, "results": rows})
    return 0


async def _checks(tmp: Path, device: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from podserve.dataplane import DataPlane
    from podserve.demo import DEMO_MODEL, stage_demo
    from podserve.settings import Settings
    from podserve.storage.repository import ModelRepository

    cuda = device.startswith("cuda")
    root = tmp / "models"
    rows: dict[str, Any] = {}
    dp = DataPlane(ModelRepository(root), Settings(model_root=root, device=device))

    _step("1. MiniLM demo")
    stage_demo(root)
    minilm = await _load(dp, DEMO_MODEL)
    rows["MiniLM load (read + verify + to device + warm-up + probe)"] = f"{minilm['seconds']:.2f} s"
    rows["MiniLM batch cap"] = f"{minilm['batch_cap']} ({minilm.get('batch_cap_reason')})"
    if "memory_budget_bytes" in minilm:
        rows["memory budget (free at start x fraction)"] = (
            f"{minilm['memory_budget_bytes'] / GB:.1f} GB = "
            f"{minilm['memory_free_at_start_bytes'] / GB:.1f} GB x {minilm['memory_fraction']}"
        )
        rows["MiniLM probed memory per sample (max_length text)"] = (
            f"{minilm['memory_per_sample_bytes'] / MiB:.1f} MiB"
        )

    _step(f"2. synthetic {args.size_gb:g} GB safetensors model")
    started = time.perf_counter()
    big_file, nbytes = _stage_big(tmp, root, args.size_gb)
    rows["synthetic model staged (write + hash)"] = (
        f"{nbytes / GB:.2f} GB in {time.perf_counter() - started:.1f} s"
    )
    big = await _load(dp, "big")
    report = dp.models["big"].model.report  # type: ignore[union-attr]
    rows["synthetic model load through the torch runtime"] = (
        f"{report.seconds:.2f} s, {nbytes / GB / report.seconds:.2f} GB/s "
        f"(verified: {report.verified}, page cache warm)"
    )
    if cuda:
        for name, seconds in _host_to_device(big_file, device).items():
            rows[f"host→device, {name}"] = f"{nbytes / GB / seconds:.2f} GB/s ({seconds:.2f} s)"
    await dp.unload("big")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    rows["big model batch cap"] = big["batch_cap"]

    _step("3. batch cap of a model costing 256 MiB per sample")
    _stage_hungry(tmp, root, floats=64 * MiB if cuda else MiB // 4)
    hungry = await _load(dp, "hungry")
    rows["hungry model batch cap"] = f"{hungry['batch_cap']} ({hungry.get('batch_cap_reason')})"
    if "memory_per_sample_bytes" in hungry:
        rows["hungry model probed memory per sample"] = (
            f"{hungry['memory_per_sample_bytes'] / MiB:.0f} MiB (expected 256)"
        )

    _step("4. forced out-of-memory split")
    if cuda:
        rows.update(await _force_split(dp))
    else:
        rows["forced OOM split"] = "skipped (the CPU has no enforced budget)"
    await dp.unload("hungry")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    _step(f"5. {args.requests} MiniLM requests: allocated memory and throughput")
    rows.update(await _steady(dp, args.requests, cuda))
    await dp.stop()
    return rows


async def _load(dp: Any, name: str) -> dict[str, Any]:
    started = time.perf_counter()
    served = await dp.load(name)
    if not served.ready:
        raise SystemExit(f"{name} did not load: {served.reason}")
    params = dict(dp.model_metadata(name)["parameters"])
    params["seconds"] = time.perf_counter() - started
    print(
        f"   {name}: loaded in {params['seconds']:.2f} s on {params.get('device')}, "
        f"batch cap {params['batch_cap']}"
    )
    return params


def _stage_big(tmp: Path, root: Path, size_gb: float) -> tuple[Path, int]:
    import torch
    from safetensors.torch import save_file

    from podserve.storage.staging import stage_model

    width = 8192 if size_gb >= 1 else 1024
    layers = max(1, round(size_gb * GB / (width * width * 2)))
    src = tmp / "src-big"
    src.mkdir()
    (src / "model.py").write_text(BIG_NET, encoding="utf-8")
    gen = torch.Generator().manual_seed(0)
    tensors = {
        f"layers.{i}.weight": (torch.rand(width, width, generator=gen, dtype=torch.float16) - 0.5)
        for i in range(layers)
    }
    save_file(tensors, str(src / "model.safetensors"))
    del tensors
    dest = root / "big" / "1"
    stage_model(
        {"model.py": src / "model.py", "model.safetensors": src / "model.safetensors"},
        dest,
        {
            "runtime": "torch",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [width]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [width]}],
            "max_batch_size": 64,
            "options": {"module": "model.py:Big", "kwargs": {"layers": layers, "width": width}},
        },
    )
    (src / "model.safetensors").unlink()
    path = dest / "model.safetensors"
    return path, path.stat().st_size


def _stage_hungry(tmp: Path, root: Path, floats: int) -> None:
    from podserve.storage.staging import stage_model

    src = tmp / "src-hungry"
    src.mkdir()
    (src / "model.py").write_text(HUNGRY_NET, encoding="utf-8")
    stage_model(
        {"model.py": src / "model.py"},
        root / "hungry" / "1",
        {
            "runtime": "torch",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [1]}],
            "max_batch_size": 4096,
            "batching": {"max_queue_delay_ms": 50},
            "options": {"module": "model.py:Hungry", "kwargs": {"floats": floats}},
        },
    )


def _host_to_device(path: Path, device: str) -> dict[str, float]:
    """The copy alone, three ways, from the staged (page-cached) file."""
    import torch
    from safetensors import safe_open

    from podserve.runtime.safetensors_view import load_tensors

    out: dict[str, float] = {}
    with open(path, "rb") as fh:
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    data = np.frombuffer(mm, dtype=np.uint8)
    tensors = load_tensors(data, str(path))

    torch.cuda.synchronize()
    started = time.perf_counter()
    on_device = [t.to(device) for t in tensors.values()]  # pageable: the runtime's path
    torch.cuda.synchronize()
    out["pageable copy from the mmap (torch runtime)"] = time.perf_counter() - started
    del on_device

    flat = torch.from_numpy(data)
    chunk = 256 * MiB
    pinned = [torch.empty(chunk, dtype=torch.uint8).pin_memory() for _ in range(2)]
    done = [torch.cuda.Event(), torch.cuda.Event()]
    dest = torch.empty(flat.numel(), dtype=torch.uint8, device=device)
    torch.cuda.synchronize()
    started = time.perf_counter()
    for n, offset in enumerate(range(0, flat.numel(), chunk)):
        size = min(chunk, flat.numel() - offset)
        buf, event = pinned[n % 2], done[n % 2]
        event.synchronize()  # the copy that used this buffer two chunks ago has finished
        buf[:size].copy_(flat[offset : offset + size])
        dest[offset : offset + size].copy_(buf[:size], non_blocking=True)
        event.record()
    torch.cuda.synchronize()
    out["pinned double-buffered staging"] = time.perf_counter() - started
    del dest, pinned, tensors, flat, data

    torch.cuda.synchronize()
    started = time.perf_counter()
    with safe_open(str(path), framework="pt", device=device) as st:
        loaded = [st.get_tensor(k) for k in st.keys()]  # noqa: SIM118 - safe_open API
    torch.cuda.synchronize()
    out['safetensors safe_open(device="cuda")'] = time.perf_counter() - started
    del loaded
    gc.collect()
    torch.cuda.empty_cache()
    with contextlib.suppress(BufferError):  # views still referenced: the GC unmaps it
        mm.close()
    return out


async def _force_split(dp: Any) -> dict[str, Any]:
    from podserve.v2 import InferRequest, InferTensor

    batcher = dp.models["hungry"].batcher
    cap = batcher.batch_cap
    splits_before = metrics.sample("podserve_oom_splits_total", {"model": "hungry"}) or 0.0
    n = min(batcher.max_batch_size, cap * 4)
    batcher.batch_cap = batcher.max_batch_size  # lift the cap: the batch will not fit
    one = np.ones((1, 1), np.float32)
    started = time.perf_counter()
    outcomes = await asyncio.gather(
        *(
            dp.infer(InferRequest("hungry", [InferTensor("x", "FP32", (1, 1), one)]))
            for _ in range(n)
        ),
        return_exceptions=True,
    )
    seconds = time.perf_counter() - started
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    splits = (metrics.sample("podserve_oom_splits_total", {"model": "hungry"}) or 0.0) - (
        splits_before
    )
    return {
        "forced OOM split": f"{n} requests of 1 row (probed cap {cap}, cap lifted): "
        f"{n - len(failed)} answered, {len(failed)} failed, {splits:.0f} split(s), "
        f"cap now {batcher.batch_cap}, {seconds:.1f} s",
    }


async def _steady(dp: Any, requests: int, cuda: bool) -> dict[str, Any]:
    import torch

    from podserve.demo import DEMO_MODEL
    from podserve.v2 import InferRequest, InferTensor

    words = ["kubernetes", "schedules", "pods", "serving", "models", "from", "volumes"]

    def request(i: int) -> InferRequest:
        text = " ".join(words * (1 + i % 5))[: 20 + (i * 37) % 300].encode()
        return InferRequest(
            DEMO_MODEL, [InferTensor("text", "BYTES", (1,), np.array([text], dtype=object))]
        )

    async def run(start: int, count: int, wave: int = 256) -> None:
        for first in range(start, start + count, wave):
            last = min(start + count, first + wave)
            await asyncio.gather(*(dp.infer(request(i)) for i in range(first, last)))

    def allocated() -> int:
        return int(torch.cuda.memory_allocated()) if cuda else 0

    await run(0, 1_000)
    gc.collect()
    before = allocated()
    started = time.perf_counter()
    await run(1_000, requests)
    seconds = time.perf_counter() - started
    gc.collect()
    after = allocated()
    stats = dp.model_stats(DEMO_MODEL)[0]
    mean_batch = stats["inference_count"] / max(1, stats["execution_count"])
    rows: dict[str, Any] = {
        f"MiniLM throughput ({requests} requests, 256 concurrent, 20-300 chars)": (
            f"{requests / seconds:.0f} req/s (mean batch {mean_batch:.1f})"
        ),
    }
    if cuda:
        peak = torch.cuda.max_memory_allocated() / MiB
        rows[f"torch.cuda.memory_allocated over {requests} requests"] = (
            f"{before / MiB:.1f} → {after / MiB:.1f} MiB ({(after - before) / MiB:+.2f} MiB; "
            f"peak {peak:.0f} MiB) {'FLAT' if abs(after - before) < MiB else 'GREW'}"
        )
    return rows


def _step(title: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {title}", flush=True)


def _write(result: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    raise SystemExit(main())
