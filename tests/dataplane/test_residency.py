"""Many models per pod: on-demand loads, the byte budget, LRU eviction, memory returned.

Real ``runtime: python`` models (``tests/ballast.py``) that read N bytes of weights into
memory, behind the real DataPlane and batcher; sizes are measured by the server, not given.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path

import numpy as np
import pytest

from podserve import metrics
from podserve.dataplane import DataPlane
from podserve.dataplane.residency import model_budget, rss_bytes
from podserve.errors import ConfigurationError, ModelMemoryError, ModelNotReadyError
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.v2 import InferRequest, InferTensor
from tests.ballast import MIB, stage_ballast

X = np.arange(4, dtype=np.float32).reshape(1, 4)


def _request(name: str, timeout_us: float | None = None) -> InferRequest:
    params = {} if timeout_us is None else {"timeout": timeout_us}
    return InferRequest(name, [InferTensor("INPUT0", "FP32", X.shape, X)], parameters=params)


async def _plane(root: Path, budget: int | None, **settings: object) -> DataPlane:
    dp = DataPlane(ModelRepository(root), Settings(model_memory_bytes=budget, **settings))  # type: ignore[arg-type]
    await dp.start([])
    return dp


def _loads(name: str) -> float:
    return metrics.sample("podserve_model_loads_total", {"model": name}) or 0.0


def _evictions(name: str) -> float:
    return metrics.sample("podserve_model_evictions_total", {"model": name}) or 0.0


async def _infer(dp: DataPlane, name: str) -> None:
    response = await dp.infer(_request(name))
    np.testing.assert_array_equal(response.outputs[0].data, X)


def test_on_demand_loads_on_first_request_and_never_gates_readiness(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "rp_pin", 2 * MIB, residency="pinned")
    stage_ballast(tmp_path, "rp_lazy", 2 * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, None)
        assert dp.ready(), dp.not_ready_reason()
        index = {e["name"]: e for e in dp.repository_index()}
        assert index["rp_pin"]["state"] == "READY"
        assert index["rp_pin"]["residency"] == "pinned"
        assert index["rp_lazy"]["state"] == "UNLOADED"
        assert index["rp_lazy"]["residency"] == "on-demand"
        assert index["rp_lazy"]["bytes"] == 0
        assert not dp.model_ready("rp_lazy")
        await _infer(dp, "rp_lazy")
        index = {e["name"]: e for e in dp.repository_index()}
        assert index["rp_lazy"]["state"] == "READY"
        assert index["rp_lazy"]["bytes"] >= 2 * MIB  # measured: weights read into memory
        await dp.unload("rp_lazy")  # an on-demand model going away keeps the server ready
        assert dp.ready()
        await dp.stop()

    asyncio.run(run())


def test_lru_order_and_pinned_never_evicted(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "lru_pin", 4 * MIB, residency="pinned")
    for name in ("lru_a", "lru_b", "lru_c"):
        stage_ballast(tmp_path, name, 8 * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, 23 * MIB)  # the pin + two of the three
        before = {n: _evictions(n) for n in ("lru_pin", "lru_a", "lru_b", "lru_c")}
        for name in ("lru_a", "lru_b", "lru_a", "lru_c"):  # b is least recently used
            await _infer(dp, name)
            assert dp.residency.resident_bytes() <= 23 * MIB
        states = {n: dp.models[n].state for n in ("lru_pin", "lru_a", "lru_b", "lru_c")}
        assert states == {
            "lru_pin": "ready",
            "lru_a": "ready",
            "lru_b": "unloaded",
            "lru_c": "ready",
        }
        await _infer(dp, "lru_b")  # now a is the least recently used
        assert dp.models["lru_a"].state == "unloaded"
        assert dp.models["lru_c"].state == "ready"
        assert dp.models["lru_pin"].state == "ready"
        assert _evictions("lru_b") - before["lru_b"] == 1
        assert _evictions("lru_a") - before["lru_a"] == 1
        assert _evictions("lru_pin") == before["lru_pin"]
        assert dp.ready()
        await dp.stop()

    asyncio.run(run())


def test_one_load_for_100_concurrent_first_requests(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "herd", 2 * MIB, load_sleep=0.5)

    async def run() -> None:
        dp = await _plane(tmp_path, 64 * MIB)
        loads = _loads("herd")
        await asyncio.gather(*(_infer(dp, "herd") for _ in range(100)))
        assert _loads("herd") - loads == 1
        hits = metrics.sample("podserve_residency_hits_total", {"model": "herd"}) or 0.0
        await _infer(dp, "herd")
        assert metrics.sample("podserve_residency_hits_total", {"model": "herd"}) == hits + 1
        await dp.stop()

    asyncio.run(run())


def test_a_model_larger_than_the_budget_gets_a_clear_503(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "huge", 12 * MIB)
    stage_ballast(tmp_path, "small", 1 * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, 8 * MIB)
        with pytest.raises(ModelMemoryError) as info:
            await dp.infer(_request("huge"))
        assert info.value.http_status == 503
        assert "budget of 8.0 MiB" in info.value.message
        assert "'huge' needs 12.0 MiB" in info.value.message
        assert dp.models["huge"].model is None
        await _infer(dp, "small")  # the others still serve
        assert dp.ready()
        await dp.stop()

    asyncio.run(run())


def test_inflight_requests_finish_across_an_eviction(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "busy", 4 * MIB, sleep=0.5)
    stage_ballast(tmp_path, "next", 4 * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, 6 * MIB)  # one of the two at a time
        await _infer(dp, "busy")
        ref = weakref.ref(dp.models["busy"].model)  # type: ignore[arg-type]
        accepted = [asyncio.ensure_future(dp.infer(_request("busy"))) for _ in range(6)]
        await asyncio.sleep(0.1)  # all six admitted, the first batch running
        states: list[str] = []

        async def watch() -> None:
            while dp.models["busy"].state != "unloaded":
                states.append(dp.models["busy"].state)
                await asyncio.sleep(0.01)

        watcher = asyncio.ensure_future(watch())
        await _infer(dp, "next")  # evicts busy: it must answer its six first
        await watcher
        for response in await asyncio.gather(*accepted):
            np.testing.assert_array_equal(response.outputs[0].data, X)
        assert "evicting" in states
        gc.collect()
        assert ref() is None, "the evicted model object is still referenced"
        await dp.stop()

    asyncio.run(run())


def test_memory_returns_after_eviction(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "mem_a", 40 * MIB)
    stage_ballast(tmp_path, "mem_b", 40 * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, 50 * MIB)
        gc.collect()
        base = rss_bytes()
        await _infer(dp, "mem_a")
        loaded = rss_bytes()
        assert loaded - base >= 35 * MIB
        assert dp.residency.entries["mem_a"].bytes >= 40 * MIB
        await _infer(dp, "mem_b")  # evicts a
        assert dp.models["mem_a"].state == "unloaded"
        gc.collect()
        assert rss_bytes() - base < 60 * MIB, "a's 40 MiB did not return after its eviction"
        await dp.stop()

    asyncio.run(run())


def test_cold_load_bounded_by_the_request_timeout(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "sluggish", 1 * MIB, load_sleep=1.5)

    async def run() -> None:
        dp = await _plane(tmp_path, None)
        with pytest.raises(ModelNotReadyError, match="still loading"):
            await dp.infer(_request("sluggish", timeout_us=200_000))
        await _infer(dp, "sluggish")  # the load carried on: this one shares it
        assert _loads("sluggish") == 1
        await dp.stop()

    asyncio.run(run())


def test_on_demand_setting_and_budget_from_cgroup(tmp_path: Path) -> None:
    stage_ballast(tmp_path, "named", 1 * MIB, residency="pinned")

    async def run() -> None:
        dp = await _plane(tmp_path, None, on_demand_models=["named"])
        assert dp.models["named"].state == "unloaded"
        await _infer(dp, "named")
        await dp.stop()

    asyncio.run(run())
    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    v2.write_text("max\n")
    with pytest.raises(ConfigurationError, match="PODSERVE_MODEL_MEMORY_BYTES"):
        model_budget(Settings(model_memory_fraction=0.5), (v2,))
    v2.write_text("1000000\n")
    assert model_budget(Settings(model_memory_fraction=0.5), (v2,)) == 500_000
    v1.write_text(f"{2**63 - 4096}\n")
    with pytest.raises(ConfigurationError):
        model_budget(Settings(model_memory_fraction=0.5), (tmp_path / "absent", v1))
    assert model_budget(Settings(model_memory_bytes=7, model_memory_fraction=0.5), (v2,)) == 7
    assert model_budget(Settings(), (v2,)) is None
    assert Settings(on_demand_models="a, b").on_demand_models == ["a", "b"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("eviction", "sequence", "evicted"),
    [
        ("lru", ["sz_s1", "sz_big", "sz_s2"], "sz_s1"),  # the least recently used
        ("gdsf", ["sz_s1", "sz_big", "sz_s2"], "sz_big"),  # 1 request per 8 MiB goes first
        ("lru", ["sz_big"] * 5 + ["sz_s1", "sz_s2"], "sz_big"),
        ("gdsf", ["sz_big"] * 5 + ["sz_s1", "sz_s2"], "sz_s1"),  # 5 per 8 MiB > 1 per 2 MiB
    ],
)
def test_eviction_policy_picks_the_victim(
    tmp_path: Path, eviction: str, sequence: list[str], evicted: str
) -> None:
    for name, mib in (("sz_s1", 2), ("sz_s2", 2), ("sz_big", 8)):
        stage_ballast(tmp_path, name, mib * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, 11 * MIB, eviction=eviction)  # the big one + one small one
        for name in sequence:
            await _infer(dp, name)
            assert dp.residency.resident_bytes() <= 11 * MIB
        states = {n: dp.models[n].state for n in ("sz_s1", "sz_s2", "sz_big")}
        assert [n for n, s in states.items() if s == "unloaded"] == [evicted], states
        index = {e["name"]: e for e in dp.repository_index()}
        assert index["sz_s2"]["hits"] == 1
        assert ("eviction_priority" in index["sz_s2"]) is (eviction == "gdsf")
        await dp.stop()

    asyncio.run(run())


def test_repository_load_of_an_on_demand_model_makes_room(tmp_path: Path) -> None:
    for name in ("api_a", "api_b", "api_c"):
        stage_ballast(tmp_path, name, 8 * MIB)
    stage_ballast(tmp_path, "api_huge", 20 * MIB)

    async def run() -> None:
        dp = await _plane(tmp_path, 19 * MIB)  # two of the three
        await _infer(dp, "api_a")
        await _infer(dp, "api_b")
        before = sum(_evictions(n) for n in ("api_a", "api_b"))
        served = await dp.api_load("api_c")  # as POST .../api_c/load does
        assert served.ready
        assert dp.residency.resident_bytes() <= 19 * MIB
        assert sum(_evictions(n) for n in ("api_a", "api_b")) == before + 1
        assert dp.residency.on_demand("api_c")  # still evictable after an API load
        with pytest.raises(ModelMemoryError, match=r"budget of 19\.0 MiB"):
            await dp.api_load("api_huge")
        await dp.stop()

    asyncio.run(run())
