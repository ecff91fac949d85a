"""The batching policies: the rule on its own, then the batcher that follows it.

Timing here is behaviour, never speed: a lone request under a 2 s queue delay either waits the
2 s (``fixed_delay``) or does not (``adaptive``); batch sizes show whether requests waited for
each other. Bounds are wide so that a loaded machine cannot flip an assertion.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from podserve.batching.batcher import Batcher
from podserve.batching.policy import (
    Arrivals,
    BatchCurve,
    Policy,
    adaptive_wait,
    efficient_rows,
    gain,
    measure_curve,
)
from podserve.dataplane import DataPlane
from podserve.errors import DeadlineExceededError
from podserve.protocol.http.app import create_app
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model

# --- the rule --------------------------------------------------------------------------------


def test_curve_interpolates_between_measured_sizes_and_extrapolates() -> None:
    curve = BatchCurve({1: 0.010, 4: 0.016})
    assert curve.seconds(1) == 0.010
    assert curve.seconds(2) == pytest.approx(0.012)
    assert curve.seconds(8) == pytest.approx(0.024)
    assert BatchCurve({1: 0.01}).seconds(2) is None  # one point says nothing about the slope
    curve.observe(1, 0.020)
    assert curve.seconds(1) == pytest.approx(0.012)  # refined, not replaced


def test_waiting_pays_only_for_a_large_per_batch_cost() -> None:
    fixed = BatchCurve({1: 0.050, 2: 0.051, 4: 0.053})  # a = 49 ms, c = 1 ms
    linear = BatchCurve({1: 0.005, 2: 0.010, 4: 0.020})  # no batching gain at all
    assert gain(fixed, 1, 1) == pytest.approx(0.050 + 0.050 / 2 - 0.051)
    assert gain(linear, 1, 1) == pytest.approx(-0.0025)  # k (a - c q) / (q + k), a = 0
    soon = Arrivals(0.002)
    soon.expected = 1.0
    assert adaptive_wait(fixed, soon, 1, 32, 0.002) == (0.002, 2)
    assert adaptive_wait(linear, soon, 1, 32, 0.002) == (0.0, 1)
    assert adaptive_wait(fixed, soon, 1, 32, 0.030) == (0.0, 1)  # the wait costs more
    nobody = Arrivals(0.002)
    assert adaptive_wait(fixed, nobody, 1, 32, 0.002) == (0.0, 1)
    assert adaptive_wait(BatchCurve(), soon, 1, 32, 0.002) == (0.0, 1)  # unmeasured: run now
    assert adaptive_wait(fixed, soon, 32, 32, 0.002) == (0.0, 32)  # already full


def test_the_efficient_batch_is_the_fewest_rows_near_the_best_rate() -> None:
    # rows/s: 100, 167, 200, 198, 200, 178: 4 rows already give the best rate within 1%
    curve = BatchCurve({1: 0.010, 2: 0.012, 4: 0.020, 8: 0.0405, 16: 0.080, 32: 0.180})
    assert efficient_rows(curve, 32) == 4
    assert efficient_rows(curve, 2) == 2  # a lowered cap still bounds it
    rising = BatchCurve({1: 0.010, 8: 0.020, 16: 0.030, 32: 0.040})  # a GPU-like curve
    assert efficient_rows(rising, 32) == 32
    assert efficient_rows(BatchCurve({1: 0.010, 4: 0.020}), 32) == 32  # the cap never timed
    assert efficient_rows(BatchCurve(), 32) == 32


def test_arrivals_count_only_requests_that_could_have_joined() -> None:
    arrivals = Arrivals(0.010)
    t = 100.0
    for _ in range(20):  # closed loop, one client: the next request follows the answer
        arrivals.arrived(t, 1)
        arrivals.dispatched(t, 0)
        arrivals.answered(t, t + 0.001)
        t += 0.002  # inside the 10 ms window, but after the answer
    assert arrivals.expected < 0.05
    for _ in range(20):  # pairs: the second request arrives while the first is running
        arrivals.arrived(t, 1)
        arrivals.dispatched(t, 0)
        arrivals.arrived(t + 0.001, 1)
        arrivals.answered(t, t + 0.005)
        t += 0.050
    assert arrivals.expected > 0.9


def test_measure_curve_doubles_up_to_the_cap_within_its_budget() -> None:
    seen: list[int] = []

    def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        seen.append(inputs["x"].shape[0])
        return {"y": inputs["x"]}

    curve = measure_curve(infer, {"x": np.zeros((1, 3), np.float32)}, 12)
    assert sorted(curve) == [1, 2, 4, 8, 12]
    assert sorted(set(seen)) == [1, 2, 4, 8, 12]

    def slow(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.05)
        return {"y": inputs["x"]}

    assert len(measure_curve(slow, {"x": np.zeros((1, 3), np.float32)}, 64, 0.1)) <= 2


# --- the batcher following it ------------------------------------------------------------------


class Sleeper:
    """Sleeps ``fixed + per_row * rows`` per batch and records the batches it ran."""

    def __init__(self, fixed: float, per_row: float = 0.0) -> None:
        self.fixed, self.per_row = fixed, per_row
        self.batches: list[list[float]] = []

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.batches.append([float(v) for v in x[:, 0]])
        time.sleep(self.fixed + self.per_row * x.shape[0])
        return {"y": x * 2}


def _row(v: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), v, np.float32)}


async def _pairs(batcher: Batcher, n: int, gap_s: float) -> None:
    """Open-loop pairs: the second request of each pair arrives ``gap_s`` after the first."""
    for i in range(n):
        first = asyncio.ensure_future(batcher.submit(_row(2 * i)))
        await asyncio.sleep(gap_s)
        second = asyncio.ensure_future(batcher.submit(_row(2 * i + 1)))
        await asyncio.gather(first, second)


async def test_adaptive_waits_for_the_next_request_when_the_curve_says_it_pays() -> None:
    model = Sleeper(fixed=0.2)  # t(b) = 200 ms whatever b: waiting 80 ms saves 100 ms
    batcher = Batcher("m", model.infer, max_batch_size=8, max_queue_delay_s=0.08, policy="adaptive")
    batcher.curve = BatchCurve(measure_curve(model.infer, _row(0), 2))
    timed = len(model.batches)
    batcher.start()
    try:
        await _pairs(batcher, 8, gap_s=0.01)
    finally:
        await batcher.close()
    sizes = [len(b) for b in model.batches[timed:]]
    assert sizes[:2] == [1, 1]  # nothing is known about arrivals yet: no waiting
    assert sizes[-2:] == [2, 2]  # the second of each pair is now expected, and waited for


async def test_adaptive_never_waits_when_batching_gains_nothing() -> None:
    model = Sleeper(fixed=0.0, per_row=0.1)  # t(b) = 100 ms per row: no gain from batching
    batcher = Batcher("m", model.infer, max_batch_size=8, max_queue_delay_s=0.08, policy="adaptive")
    batcher.curve = BatchCurve(measure_curve(model.infer, _row(0), 2))
    timed = len(model.batches)
    batcher.start()
    try:
        await _pairs(batcher, 6, gap_s=0.01)
    finally:
        await batcher.close()
    assert [len(b) for b in model.batches[timed:]] == [1] * 12


class Table:
    """Sleeps ``seconds[rows]`` per batch (a measured curve) and records the batch sizes."""

    def __init__(self, seconds: dict[int, float]) -> None:
        self.seconds, self.sizes = seconds, []  # type: list[int]

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = inputs["x"].shape[0]
        self.sizes.append(rows)
        time.sleep(self.seconds[rows])
        return {"y": inputs["x"] * 2}


async def test_a_full_queue_leaves_in_batches_of_the_efficient_size() -> None:
    """Past 4 rows this model gets no faster per row: 12 queued rows run as 4 + 4 + 4, each
    batch starting as the previous one ends, instead of one slower batch of 8 and then 4."""
    seconds = {1: 0.02, 2: 0.024, 3: 0.032, 4: 0.04, 5: 0.1, 6: 0.12, 7: 0.14, 8: 0.16}
    model = Table(seconds)
    batcher = Batcher(
        "m", model.infer, max_batch_size=8, max_queue_delay_s=0.002, policy="adaptive"
    )
    batcher.curve = BatchCurve(seconds)
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit(_row(-1)))
        await asyncio.sleep(0.005)  # the blocker runs; the twelve below queue behind it
        rest = [asyncio.ensure_future(batcher.submit(_row(i))) for i in range(12)]
        await asyncio.gather(blocker, *rest)
        fixed = Batcher("f", model.infer, max_batch_size=8, max_queue_delay_s=0.0)
        fixed.start()
        blocker = asyncio.ensure_future(fixed.submit(_row(-1)))
        await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(fixed.submit(_row(i))) for i in range(12)]
        await asyncio.gather(blocker, *rest)
        await fixed.close()
    finally:
        await batcher.close()
    assert model.sizes == [1, 4, 4, 4, 1, 8, 4]  # adaptive, then the plain cap


@pytest.mark.parametrize(("policy", "handed"), [("adaptive", True), ("fixed_delay", False)])
async def test_the_next_batch_starts_before_the_answers_of_the_last_are_delivered(
    policy: Policy, handed: bool
) -> None:
    """A request queued behind a running batch starts the moment the model frees up, while the
    event loop is still busy handing back the finished batch's answers (adaptive: even one
    row; fixed delay: only from half a batch, else the loop first takes in new requests)."""
    started = threading.Event()

    def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if inputs["x"][0, 0] == 2:
            started.set()
        else:
            time.sleep(0.05)
        return {"y": inputs["x"]}

    batcher = Batcher("m", infer, max_batch_size=8, max_queue_delay_s=0.002, policy=policy)
    batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(_row(1)))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(_row(2)))
        await first
        # The loop is blocked here, as while it encodes answers: only a batch that was
        # already handed to the inference thread can run now.
        ran_meanwhile = started.wait(1.0)
        await second
    finally:
        await batcher.close()
    assert ran_meanwhile == handed


async def test_priorities_and_timeouts_hold_under_the_adaptive_policy() -> None:
    model = Sleeper(fixed=0.3)
    batcher = Batcher(
        "m", model.infer, max_batch_size=2, max_queue_delay_s=0.002, policy="adaptive"
    )
    batcher.start()
    try:
        blocker = asyncio.ensure_future(batcher.submit(_row(-1)))
        await asyncio.sleep(0.05)  # the blocker is running; everything below queues
        low = [asyncio.ensure_future(batcher.submit(_row(10 + i))) for i in range(3)]
        expiring = asyncio.ensure_future(batcher.submit(_row(99), priority=1, timeout_s=0.01))
        high = [asyncio.ensure_future(batcher.submit(_row(i), priority=1)) for i in range(2)]
        await asyncio.gather(blocker, *low, *high)
        with pytest.raises(DeadlineExceededError, match="was not run"):
            await expiring
    finally:
        await batcher.close()
    assert model.batches == [[-1.0], [0.0, 1.0], [10.0, 11.0], [12.0]]


# --- the whole server: lone requests, batches under load, the histogram ------------------------

MODEL_PY = """
import time

class Sleepy:
    def infer(self, inputs):
        time.sleep(0.02)
        return {"y": inputs["x"] * 2}
"""


def _dataplane(tmp_path: Path, policy: str, settings: Settings | None = None) -> DataPlane:
    src = tmp_path / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(MODEL_PY, encoding="utf-8")
    stage_model(
        {"model.py": src / "model.py"},
        tmp_path / "models" / "sleepy" / "1",
        {
            "runtime": "python",
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [2]}],
            "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
            "max_batch_size": 16,
            "batching": {"policy": policy, "max_queue_delay_ms": 2000},
            "options": {"module": "model.py:Sleepy"},
        },
    )
    return DataPlane(ModelRepository(tmp_path / "models"), settings or Settings())


def _histogram(text: str) -> dict[str, float]:
    """``podserve_batch_size`` buckets of model sleepy from the Prometheus text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("podserve_batch_size_bucket{") and 'model="sleepy"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[le] = float(line.rsplit(" ", 1)[1])
    return out


BODY = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]}


@pytest.mark.parametrize("policy", ["adaptive", "fixed_delay"])
async def test_a_lone_request_waits_for_the_queue_delay_only_under_fixed_delay(
    tmp_path: Path, policy: str
) -> None:
    dp = _dataplane(tmp_path, policy)
    await dp.start([("sleepy", None)])
    try:
        app = create_app(dp, dp.settings)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://podserve") as client:
            meta = (await client.get("/v2/models/sleepy")).json()["parameters"]
            assert meta["batching_policy"] == policy
            for _ in range(3):
                t0 = time.monotonic()
                resp = await client.post("/v2/models/sleepy/infer", json=BODY, timeout=30)
                took = time.monotonic() - t0
                assert resp.status_code == 200
                assert resp.json()["outputs"][0]["data"] == [2.0, 4.0]
                if policy == "adaptive":
                    assert took < 1.0, f"a lone request waited {took:.2f} s (queue delay 2 s)"
                else:
                    assert took >= 1.9  # Triton's behaviour, kept on request
    finally:
        await dp.stop()


async def test_the_setting_overrides_the_manifest_policy(tmp_path: Path) -> None:
    dp = _dataplane(tmp_path, "adaptive", Settings(batching_policy="fixed_delay"))
    await dp.start([("sleepy", None)])
    try:
        params = dp.model_metadata("sleepy")["parameters"]
        assert params["batching_policy"] == "fixed_delay"
        assert params["batch_ms"] == {}  # the curve is only timed for the adaptive policy
    finally:
        await dp.stop()
    dp = _dataplane(tmp_path / "again", "adaptive")
    await dp.start([("sleepy", None)])
    try:
        params = dp.model_metadata("sleepy")["parameters"]
        assert params["batching_policy"] == "adaptive"
        assert set(params["batch_ms"]) == {"1", "2", "4", "8", "16"}
        assert all(ms >= 19.0 for ms in params["batch_ms"].values())  # the model sleeps 20 ms
    finally:
        await dp.stop()


async def test_batches_still_form_under_load_with_the_adaptive_policy(tmp_path: Path) -> None:
    dp = _dataplane(tmp_path, "adaptive")
    await dp.start([("sleepy", None)])
    try:
        app = create_app(dp, dp.settings)
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://podserve") as client:
            before = _histogram((await client.get("/metrics")).text)
            replies = await asyncio.gather(
                *(client.post("/v2/models/sleepy/infer", json=BODY, timeout=60) for _ in range(64))
            )
            assert [r.status_code for r in replies] == [200] * 64
            after = _histogram((await client.get("/metrics")).text)
    finally:
        await dp.stop()
    ran = after["+Inf"] - before.get("+Inf", 0.0)
    alone = after["1.0"] - before.get("1.0", 0.0)
    assert ran < 64, "every request ran on its own"
    assert alone < ran, "no batch above one row"


# --- several instances -------------------------------------------------------------------------


async def test_two_instances_run_two_batches_at_once() -> None:
    """Instance 0 holds its batch until instance 1 has started one: with a single inference
    thread this would wait out the 10 s timeout; with two it returns at once."""
    started = threading.Event()
    used: list[str] = []

    def first(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used.append("first")
        overlapped = started.wait(10)
        return {"y": inputs["x"] * (2 if overlapped else -1)}

    def second(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        used.append("second")
        started.set()
        return {"y": inputs["x"] * 2}

    batcher = Batcher(
        "m", first, max_batch_size=1, max_queue_delay_s=0.0, instances=[first, second]
    )
    batcher.start()
    try:
        a = asyncio.ensure_future(batcher.submit(_row(1)))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(batcher.submit(_row(2)))
        out = await asyncio.gather(a, b)
    finally:
        await batcher.close()
    assert used == ["first", "second"]
    assert [float(o["y"][0, 0]) for o in out] == [2.0, 4.0]
