"""Memory stays flat over thousands of requests: nothing a batch allocates outlives it.

A real model (``runtime: torch``, an MLP whose weights are a staged safetensors file) behind
the real DataPlane and batcher: 5,000 requests of 1 to 3 rows in concurrent waves, so batches
of many sizes form. After a warm-up, Python-level allocations (tracemalloc: numpy arrays,
tensors' numpy views, request and response objects, futures, metrics) and the process's
resident set must not grow with the number of requests. (MiniLM is the same runtime path
plus a tokenizer, but 5,000 of its requests take minutes on two shared cores; on a GPU,
``benchmarks/gpu_check.py`` checks MiniLM's ``torch.cuda.memory_allocated`` over 10,000.)
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from podserve.dataplane import DataPlane
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model
from podserve.v2 import InferRequest, InferTensor

REQUESTS = 5_000
WAVE = 50
WIDTH = 384

NET = """
import torch


class Mlp(torch.nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.up = torch.nn.Linear(width, hidden)
        self.down = torch.nn.Linear(hidden, width)

    def forward(self, x):
        return torch.nn.functional.normalize(self.down(torch.relu(self.up(x))), dim=1)
"""


def _stage(root: Path) -> Path:
    src = root.parent / "src"
    src.mkdir(parents=True)
    (src / "model.py").write_text(NET, encoding="utf-8")
    torch.manual_seed(0)
    up, down = torch.nn.Linear(WIDTH, 4 * WIDTH), torch.nn.Linear(4 * WIDTH, WIDTH)
    state = {f"up.{k}": v for k, v in up.state_dict().items()}
    state |= {f"down.{k}": v for k, v in down.state_dict().items()}
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(src / "w.safetensors"))
    stage_model(
        {"model.py": src / "model.py", "w.safetensors": src / "w.safetensors"},
        root / "mlp" / "1",
        {
            "runtime": "torch",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [WIDTH]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [WIDTH]}],
            "max_batch_size": 32,
            "batching": {"max_queue_delay_ms": 1},
            "options": {"module": "model.py:Mlp", "kwargs": {"width": WIDTH, "hidden": 4 * WIDTH}},
        },
    )
    return root


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * 4096


def _request(i: int) -> InferRequest:
    rows = 1 + i % 3
    data = np.random.default_rng(i).standard_normal((rows, WIDTH), dtype=np.float32)
    return InferRequest("mlp", [InferTensor("x", "FP32", data.shape, data)], id=str(i))


async def _run(dp: DataPlane, start: int, count: int) -> None:
    for wave in range(start, start + count, WAVE):
        responses = await asyncio.gather(*(dp.infer(_request(i)) for i in range(wave, wave + WAVE)))
        assert responses[-1].outputs[0].shape == (1 + (wave + WAVE - 1) % 3, WIDTH)


@pytest.mark.slow
async def test_memory_is_flat_over_5000_requests(tmp_path: Path) -> None:
    dp = DataPlane(ModelRepository(_stage(tmp_path / "models")), Settings(intra_op_threads=1))
    await dp.start([("mlp", None)])
    assert dp.ready(), dp.not_ready_reason()
    tracemalloc.start()
    try:
        await _run(dp, 0, 1_000)  # warm-up: allocator pools, caches, histogram buckets
        gc.collect()
        traced_before, rss_before = tracemalloc.get_traced_memory()[0], _rss()
        await _run(dp, 1_000, REQUESTS // 2)
        gc.collect()
        traced_mid = tracemalloc.get_traced_memory()[0]
        await _run(dp, 1_000 + REQUESTS // 2, REQUESTS // 2)
        gc.collect()
        traced_after, rss_after = tracemalloc.get_traced_memory()[0], _rss()
        stats = dp.model_stats("mlp")[0]
    finally:
        tracemalloc.stop()
        await dp.stop()
    assert stats["inference_count"] >= 2 * REQUESTS  # 1 to 3 rows per request
    assert stats["execution_count"] < REQUESTS  # requests were batched
    # A leak of one output row per request would be 3.8 MB per half; of one request object,
    # about 0.5 MB. Neither half may grow by more than 256 KiB of Python objects.
    assert traced_mid - traced_before < 256 * 1024, (traced_before, traced_mid)
    assert traced_after - traced_mid < 256 * 1024, (traced_mid, traced_after)
    assert rss_after - rss_before < 24 * 2**20, (rss_before, rss_after)
    print(
        f"traced {traced_before} → {traced_mid} → {traced_after} B, "
        f"RSS {rss_before / 2**20:.1f} → {rss_after / 2**20:.1f} MiB"
    )
