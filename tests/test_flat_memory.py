"""Memory stays flat over thousands of requests: nothing a batch allocates outlives it.

The real MiniLM demo model behind the real DataPlane and batcher, 5,000 requests of varying
lengths in concurrent waves (so batches of every size form). After a warm-up, Python-level
allocations (tracemalloc: numpy arrays, request and response objects, futures, metrics) and
the process's resident set must not grow with the number of requests. On a GPU the same
check reads ``torch.cuda.memory_allocated`` (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from podserve.dataplane import DataPlane
from podserve.demo import DEMO_MODEL, stage_demo
from podserve.protocol.v2 import InferRequest, InferTensor
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository

REQUESTS = 5_000
WAVE = 50
WORDS = "pods schedule models onto nodes while volumes hold the heavy immutable weights".split()


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * 4096


def _request(i: int) -> InferRequest:
    words = WORDS * (1 + i % 4)
    text = " ".join(words[: 3 + (i * 7) % len(words)]).encode()
    data = np.array([text], dtype=object)
    return InferRequest(DEMO_MODEL, [InferTensor("text", "BYTES", (1,), data)], id=str(i))


async def _run(dp: DataPlane, start: int, count: int) -> None:
    for wave in range(start, start + count, WAVE):
        responses = await asyncio.gather(*(dp.infer(_request(i)) for i in range(wave, wave + WAVE)))
        assert responses[-1].outputs[0].shape == (1, 384)


@pytest.mark.slow
async def test_memory_is_flat_over_5000_requests(tmp_path: Path) -> None:
    root = tmp_path / "models"
    stage_demo(root)
    dp = DataPlane(ModelRepository(root), Settings(intra_op_threads=1))
    await dp.start([(DEMO_MODEL, None)])
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
    finally:
        tracemalloc.stop()
        await dp.stop()
    stats = dp.model_stats(DEMO_MODEL)[0]
    assert stats["inference_count"] >= REQUESTS
    # A leak of one 384-float embedding per request would be 7.7 MB here; of one request
    # object, about 1 MB. Neither half may grow by more than 256 KiB of Python objects.
    assert traced_mid - traced_before < 256 * 1024, (traced_before, traced_mid)
    assert traced_after - traced_mid < 256 * 1024, (traced_mid, traced_after)
    assert rss_after - rss_before < 24 * 2**20, (rss_before, rss_after)
