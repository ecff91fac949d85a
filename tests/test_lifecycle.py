"""Model and process lifecycle: load/unload under load, the drain phases, the shutdown budget.

Everything runs in-process on the test's event loop with the models of ``tests/models.py``;
the same promises over real sockets and signals are in ``tests/integration/test_drain.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from podserve.dataplane import DataPlane
from podserve.errors import DrainingError, ModelNotReadyError
from podserve.lifecycle import Server
from podserve.runtime.model import Model
from podserve.settings import STOP_MARGIN_SECONDS, Settings
from podserve.storage.repository import ModelRepository, ModelVersion
from podserve.v2 import InferRequest, InferTensor
from tests.models import SLOW_SECONDS, model_factory


def request(model: str = "identity", value: float = 1.0) -> InferRequest:
    shape = (1, 384) if model == "identity" else (1, 1)
    data = np.full(shape, value, np.float32)
    return InferRequest(model, [InferTensor("INPUT0", "FP32", shape, data)])


async def _until(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true after {seconds} s")


async def _dataplane(root: Path, *names: str, **settings: object) -> DataPlane:
    dp = DataPlane(ModelRepository(root), Settings(**settings), factory=model_factory)  # type: ignore[arg-type]
    await dp.start([(n, None) for n in names])
    assert dp.ready()
    return dp


async def test_grace_window_serves_then_new_requests_are_refused(staged_repo: Path) -> None:
    dp = await _dataplane(staged_repo, "identity")
    try:
        dp.begin_drain()
        assert not dp.ready()
        assert not dp.model_ready("identity")
        out = await dp.infer(request(value=3.0))  # the grace window: served as before
        assert float(out.outputs[0].data[0, 0]) == 3.0
        dp.stop_accepting()
        with pytest.raises(DrainingError):
            await dp.infer(request())
    finally:
        await dp.stop()


async def test_unload_under_steady_load_finishes(staged_repo: Path) -> None:
    dp = await _dataplane(staged_repo, "identity")
    seen: Counter[str] = Counter()
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                await dp.infer(request())
                seen["ok"] += 1
            except ModelNotReadyError:
                seen["503"] += 1
                await asyncio.sleep(0.001)

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        await _until(lambda: seen["ok"] >= 200)
        await asyncio.wait_for(dp.unload("identity"), 30)
        assert dp.models["identity"].state == "unloaded"
        settled = seen["ok"]
        await asyncio.sleep(0.05)
        assert seen["ok"] == settled, "requests were served after unload returned"
    finally:
        stop.set()
        await asyncio.gather(*clients)
        await dp.stop()
    assert seen["503"] > 0


async def test_concurrent_loads_of_one_model_build_one_batcher(staged_repo: Path) -> None:
    built: list[str] = []

    def counting_factory(version: ModelVersion, settings: Settings) -> Model:
        built.append(version.name)
        return model_factory(version, settings)

    dp = DataPlane(ModelRepository(staged_repo), Settings(), factory=counting_factory)
    await dp.start([("identity", None)])
    await dp.unload("identity")
    try:
        first, second = await asyncio.gather(dp.load("identity"), dp.load("identity"))
        assert first is second
        assert first.ready
        collectors = [t for t in asyncio.all_tasks() if t.get_name() == "batcher-identity"]
        assert len(collectors) == 1
        assert built == ["identity", "identity"]  # start, then one reload for both calls
        await dp.infer(request())
    finally:
        await dp.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "batcher-identity"]


async def test_shutdown_fits_grace_plus_drain_timeout_plus_margin(staged_repo: Path) -> None:
    """A request still computing at the drain deadline: exit code 1, inside the budget."""
    settings = Settings(
        model_root=staged_repo,
        models=["slow", "identity"],
        drain_grace_seconds=0.2,
        drain_timeout_seconds=0.5,
        http_port=0,
        grpc_port=0,
    )
    server = Server(settings, factory=model_factory, http=False, grpc=False)
    running = asyncio.create_task(server.run())
    try:
        await _until(server.dataplane.ready)
        slow = asyncio.create_task(server.dataplane.infer(request("slow", 5.0)))
        await asyncio.sleep(0.1)  # on the model's thread now
        queued = asyncio.create_task(server.dataplane.infer(request("slow", 6.0)))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        server.request_stop()
        code = await asyncio.wait_for(running, 60)
        elapsed = time.monotonic() - started
    finally:
        server.request_stop()
    assert code == 1  # the drain timed out
    budget = settings.drain_grace_seconds + settings.drain_timeout_seconds + STOP_MARGIN_SECONDS
    assert elapsed < budget, f"shutdown took {elapsed:.1f}s, budget {budget:.1f}s"
    assert elapsed > settings.drain_grace_seconds
    # The batch on the model's thread finishes and is answered; the queued one is refused.
    assert float((await slow).outputs[0].data[0, 0]) == 5.0
    with pytest.raises(ModelNotReadyError):
        await queued
    assert SLOW_SECONDS < STOP_MARGIN_SECONDS  # else the test would measure the model


def test_serve_shortens_the_interpreter_lock_switch_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The inference thread must not idle 5 ms (Python's default) waiting for the event loop
    to let go of the lock: ``run_server`` applies ``gil_switch_interval_us`` first."""
    import sys

    import uvloop

    from podserve.lifecycle import run_server

    seen: list[float] = []

    def fake_run(coro: Any) -> int:
        coro.close()
        seen.append(sys.getswitchinterval())
        return 0

    before = sys.getswitchinterval()
    monkeypatch.setattr(uvloop, "run", fake_run)
    try:
        assert run_server(Settings(gil_switch_interval_us=250)) == 0
    finally:
        sys.setswitchinterval(before)
    assert seen == [pytest.approx(0.00025)]
