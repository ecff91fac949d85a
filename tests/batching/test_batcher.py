"""The batcher's promises, tested directly: order, back-pressure, batch forming, close().

A :class:`Gate` model blocks its inference thread until the test opens it, so a test can
queue requests behind a running batch and then watch what the batcher does with them. The
assertions are about order and membership, never about speed.

The inline mode (cheap models run on the event loop, slow ones on their thread) is decided on
measured compute times, so its tests use real timing: a no-op model is far below a 5 ms bound,
a 20 ms sleep far above it.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from podserve.batching.batcher import Batcher
from podserve.errors import ModelNotReadyError, OverloadedError


class Gate:
    """Identity on ``x``; notes every batch (the first column of each row); blocks while
    ``gate`` is closed. Counts how many threads are inside ``infer`` at once."""

    def __init__(self, *, open_: bool = True) -> None:
        self.gate = threading.Event()
        if open_:
            self.gate.set()
        self.batches: list[list[float]] = []
        self.shapes: list[tuple[int, ...]] = []
        self.entered = threading.Event()
        self._lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.threads: set[int] = set()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
            self.threads.add(threading.get_ident())
        try:
            x = inputs["x"]
            self.batches.append([float(v) for v in x[:, 0]])
            self.shapes.append(tuple(x.shape))
            self.entered.set()
            self.gate.wait(30)
            return {"y": x}
        finally:
            with self._lock:
                self.inside -= 1


def row(value: float, width: int = 4) -> dict[str, np.ndarray]:
    return {"x": np.full((1, width), value, np.float32)}


def batcher(model: Gate, **kwargs: object) -> Batcher:
    options: dict[str, object] = {"max_batch_size": 1, "max_queue_delay_s": 0.0, **kwargs}
    b = Batcher("m", model.infer, **options)  # type: ignore[arg-type]
    b.start()
    return b


async def _wait_entered(model: Gate) -> None:
    assert await asyncio.to_thread(model.entered.wait, 30)
    model.entered.clear()


async def _queued(b: Batcher, n: int) -> None:
    for _ in range(500):
        if len(b._heap) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{n} requests never queued")


async def test_priority_reorders_the_queue() -> None:
    model = Gate(open_=False)
    b = batcher(model)
    try:
        first = asyncio.create_task(b.submit(row(0)))
        await _wait_entered(model)  # the inference thread is busy with request 0
        low = [asyncio.create_task(b.submit(row(v))) for v in (1, 2)]
        await _queued(b, 2)
        high = asyncio.create_task(b.submit(row(3), priority=1))
        mid = asyncio.create_task(b.submit(row(4), priority=2))
        await _queued(b, 4)
        model.gate.set()
        await asyncio.gather(first, *low, high, mid)
    finally:
        model.gate.set()
        await b.close()
    # Triton's levels: 1 is the highest, 0 ("default") the lowest; FIFO within a level.
    assert model.batches == [[0], [3], [4], [1], [2]]


async def test_a_full_queue_answers_overloaded_at_once_and_serves_the_rest() -> None:
    model = Gate(open_=False)
    b = batcher(model, max_queue_size=2)
    try:
        running = asyncio.create_task(b.submit(row(0)))
        await _wait_entered(model)
        queued = [asyncio.create_task(b.submit(row(v))) for v in (1, 2)]
        await _queued(b, 2)
        with pytest.raises(OverloadedError) as info:
            await b.submit(row(3))
        assert info.value.http_status == 503
        assert info.value.grpc_code == "UNAVAILABLE"
        model.gate.set()
        results = await asyncio.gather(running, *queued)
    finally:
        model.gate.set()
        await b.close()
    assert [float(r["y"][0, 0]) for r in results] == [0, 1, 2]


async def test_a_preferred_size_ends_the_fill_wait() -> None:
    model = Gate()
    # A fill wait far longer than the test's timeout: only the preferred size can end it.
    b = batcher(model, max_batch_size=8, max_queue_delay_s=60.0, preferred_batch_sizes=(4,))
    try:
        tasks = []
        for v in range(4):
            tasks.append(asyncio.create_task(b.submit(row(v))))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
    finally:
        await b.close()
    assert model.batches == [[0, 1, 2, 3]]


async def test_incompatible_shapes_never_share_a_batch_nor_end_its_fill_wait() -> None:
    model = Gate()
    b = batcher(model, max_batch_size=4, max_queue_delay_s=3.0)
    try:
        # Two rows of width 4 and two of width 6: four rows queued, but no batch of four.
        tasks = [
            asyncio.create_task(b.submit(row(v, width=w)))
            for v, w in ((1, 4), (2, 6), (3, 4), (4, 6))
        ]
        await asyncio.sleep(0.3)
        assert model.batches == [], "rows of another shape ended the fill wait"
        tasks += [asyncio.create_task(b.submit(row(v, width=4))) for v in (5, 6)]
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        await b.close()
    assert model.batches[0] == [1, 3, 5, 6]  # filled to the cap with its own shape
    assert sorted(map(sorted, model.batches)) == [[1, 3, 5, 6], [2, 4]]
    assert {s[1] for s in model.shapes[:1]} == {4}
    assert model.shapes[1] == (2, 6)


async def test_close_fails_what_is_queued_without_blocking_the_loop() -> None:
    model = Gate(open_=False)
    b = batcher(model)
    running = asyncio.create_task(b.submit(row(0)))
    await _wait_entered(model)
    queued = [asyncio.create_task(b.submit(row(v))) for v in (1, 2)]
    await _queued(b, 2)

    released: list[float] = []

    def release() -> None:
        released.append(time.monotonic())
        model.gate.set()

    timer = threading.Timer(10.0, release)  # only a safety net: the test opens it itself
    timer.start()
    try:
        closing = asyncio.create_task(b.close())
        for task in queued:
            with pytest.raises(ModelNotReadyError):
                await asyncio.wait_for(task, 5)
        ticked = time.monotonic()
        assert not released, "close() blocked the event loop until the model returned"
        assert not closing.done(), "close() must wait for the batch on the inference thread"
        with pytest.raises(ModelNotReadyError):
            await b.submit(row(9))  # closed: nothing is admitted any more
        release()
        await asyncio.wait_for(closing, 10)
        assert float((await running)["y"][0, 0]) == 0  # the running batch still answers
        assert ticked < released[0]
    finally:
        timer.cancel()
        model.gate.set()


async def test_the_model_is_never_called_from_two_threads_at_once() -> None:
    """Batches move between the loop and the inference thread as their cost changes."""

    class Flipping(Gate):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0

        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            self.calls += 1
            if (self.calls // 40) % 2:  # 40 cheap batches, then 40 slow ones, and so on
                time.sleep(0.003)
            return super().infer(inputs)

    model = Flipping()
    b = batcher(model, max_batch_size=4, inline_below_s=0.001)

    async def client(i: int) -> None:
        for j in range(60):
            out = await b.submit(row(i * 1000 + j))
            assert float(out["y"][0, 0]) == i * 1000 + j

    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(8))), 120)
    finally:
        await b.close()
    assert model.most_inside == 1
    assert threading.get_ident() in model.threads, "never ran on the loop: the test is moot"
    assert len(model.threads) == 2


# --- inline on the loop ---------------------------------------------------------------------


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
