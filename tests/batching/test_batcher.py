"""Cheap models run on the event loop; slow ones, and models that turn slow, on their thread.

The decision is measured (``inline_below_s`` against the batches' compute times), so these
tests use real timing: a no-op model is far below a 5 ms bound, a 20 ms sleep far above it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from podserve.batching.batcher import Batcher


class Recorder:
    """An identity model that notes the thread of every call and may be told to be slow."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.threads: list[int] = []

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"y": inputs["x"]}


async def _run(batcher: Batcher, n: int) -> None:
    for i in range(n):
        x = np.full((1, 4), i, np.float32)
        out = await batcher.submit({"x": x})
        assert np.array_equal(out["y"], x)


def _batcher(model: Recorder, inline_below_s: float) -> Batcher:
    return Batcher(
        "m", model.infer, max_batch_size=4, max_queue_delay_s=0.0, inline_below_s=inline_below_s
    )


async def test_cheap_model_moves_onto_the_loop_after_measuring() -> None:
    model = Recorder()
    batcher = _batcher(model, inline_below_s=0.005)
    batcher.start()
    try:
        await _run(batcher, 40)
    finally:
        await batcher.close()
    loop_thread = threading.get_ident()
    assert model.threads[0] != loop_thread  # measured on the inference thread first
    assert model.threads[-1] == loop_thread
    assert model.threads.count(loop_thread) >= 20


async def test_disabled_or_slow_models_never_run_on_the_loop() -> None:
    for model, bound in ((Recorder(), 0.0), (Recorder(delay_s=0.02), 0.005)):
        batcher = _batcher(model, bound)
        batcher.start()
        try:
            await _run(batcher, 20)
        finally:
            await batcher.close()
        assert threading.get_ident() not in model.threads


async def test_a_model_that_turns_slow_blocks_the_loop_once_then_leaves_it() -> None:
    model = Recorder()
    batcher = _batcher(model, inline_below_s=0.005)
    batcher.start()
    loop_thread = threading.get_ident()
    try:
        await _run(batcher, 30)
        assert model.threads[-1] == loop_thread
        model.delay_s = 0.03
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.001)
                ticks += 1

        ticker = asyncio.create_task(tick())
        before = len(model.threads)
        await _run(batcher, 5)
        ticker.cancel()
    finally:
        await batcher.close()
    slow = model.threads[before:]
    assert slow[0] == loop_thread  # the one batch that showed it is slow now
    assert all(t != loop_thread for t in slow[1:])
    assert ticks >= 4  # the loop kept turning while the later slow batches ran
