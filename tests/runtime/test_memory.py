"""The memory budget: cap arithmetic, the probe, out-of-memory recognition, CPU behaviour.

The probe is measured for real on the CPU with tracemalloc as the meter (numpy reports its
allocations to it), against a model whose intermediate costs a known amount per row; on a GPU
the same code reads ``torch.cuda.max_memory_allocated`` (``benchmarks/gpu_check.py``).
"""

from __future__ import annotations

import gc
import tracemalloc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

from podserve import metrics
from podserve.batching.batcher import Batcher
from podserve.dataplane import DataPlane
from podserve.dataplane.models import apply_plan
from podserve.errors import ResourceExhaustedError
from podserve.runtime.memory import (
    HEADROOM,
    LONG_TEXT,
    MemoryPlan,
    batch_cap,
    fit_probe,
    is_out_of_memory,
    oom_error,
    plan_for,
    plan_memory,
    probe,
    probe_inputs,
)
from podserve.runtime.registry import create_model
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model

MiB = 1 << 20
GiB = 1 << 30

# --- arithmetic --------------------------------------------------------------------------------


def test_fit_probe_takes_the_steepest_slope_and_covers_every_point() -> None:
    per_sample, fixed = fit_probe([(1, 150 * MiB), (2, 250 * MiB), (4, 470 * MiB), (8, 860 * MiB)])
    assert per_sample == 110 * MiB  # 2→4: 110 MiB/sample (4→8 is 97.5)
    assert fixed == 40 * MiB  # 150 - 110 (the 2→4 line is 30 MiB under the first point)
    for n, peak in [(1, 150 * MiB), (2, 250 * MiB), (4, 470 * MiB), (8, 860 * MiB)]:
        assert fixed + per_sample * n >= peak


def test_fit_probe_edge_cases() -> None:
    assert fit_probe([]) == (0, 0)
    assert fit_probe([(1, 3 * MiB)]) == (3 * MiB, 0)
    assert fit_probe([(1, 5 * MiB), (2, 5 * MiB)]) == (0, 5 * MiB)  # flat: cost is fixed


@pytest.mark.parametrize(
    ("room", "per_sample", "fixed", "max_batch", "expected"),
    [
        (10 * GiB, 100 * MiB, 0, 256, 92),  # 0.9 * 10 GiB / 100 MiB = 92.16
        (10 * GiB, 100 * MiB, 1 * GiB, 256, 81),  # (9216 - 1024) / 100 = 81.9
        (10 * GiB, 1 * MiB, 0, 64, 64),  # the manifest's max wins
        (10 * GiB, 0, 0, 32, 32),  # no growth measured
        (100 * MiB, 200 * MiB, 0, 32, 1),  # not even one: still 1, the warm-up ran
        (-5 * GiB, 200 * MiB, 0, 32, 1),
    ],
)
def test_batch_cap(room: int, per_sample: int, fixed: int, max_batch: int, expected: int) -> None:
    assert batch_cap(room, per_sample, fixed, max_batch) == expected


def test_plan_for_a_time_sliced_quarter() -> None:
    """80 GB card shared four ways: this pod may use 0.2 of what was free at start."""
    points = [(1, 60 * MiB), (2, 110 * MiB), (4, 210 * MiB), (8, 410 * MiB)]
    plan = plan_for("cuda:0", 128, 0.2, free_at_start=78 * GiB, weights=2 * GiB, probe=points)
    assert plan.budget == int(78 * GiB * 0.2)
    assert plan.room == plan.budget - 2 * GiB
    assert (plan.per_sample, plan.fixed) == (50 * MiB, 10 * MiB)
    expected = int((plan.room * (1 - HEADROOM) - 10 * MiB) // (50 * MiB))
    assert expected > 128  # the budget would allow more than the manifest's max
    assert plan.cap == 128
    assert "max_batch_size 128 fits" in plan.reason
    small = plan_for("cuda:0", 128, 0.05, free_at_start=78 * GiB, weights=2 * GiB,
                     probe=[(1, 60 * MiB), (2, 110 * MiB)])  # fmt: skip
    assert 1 < small.cap < 128
    assert "MiB/sample" in small.reason
    full = plan_for("cuda:0", 128, 0.02, free_at_start=78 * GiB, weights=2 * GiB,
                    probe=[(1, 60 * MiB), (2, 110 * MiB)])  # fmt: skip
    assert full.cap == 1
    assert "used up by" in full.reason
    meta = small.metadata()
    assert meta["memory_budget_bytes"] == small.budget
    assert meta["memory_fraction"] == 0.05
    assert meta["memory_per_sample_bytes"] == 50 * MiB
    assert set(meta) >= {"memory_weights_bytes", "memory_free_at_start_bytes", "batch_cap_reason"}


def test_apply_plan_lowers_the_cap_and_publishes(tmp_path: Path) -> None:
    model = _load(_stage(tmp_path / "models"))
    model.report.details["memory_plan"] = plan_for(
        "cuda:0",
        8,
        0.5,
        free_at_start=2 * GiB,
        weights=900 * MiB,
        probe=[(1, 30 * MiB), (2, 60 * MiB)],
    )
    batcher = Batcher("planned", model.infer, max_batch_size=8, max_queue_delay_s=0.0)
    extra: dict[str, Any] = {}
    apply_plan("planned", model, batcher, extra)
    # room = 1024 - 900 = 124 MiB; 0.9 * 124 / 30 = 3.7
    assert batcher.batch_cap == 3
    assert metrics.sample("podserve_batch_cap", {"model": "planned"}) == 3
    assert metrics.sample("podserve_memory_budget_bytes", {"model": "planned"}) == GiB
    assert metrics.sample("podserve_memory_per_sample_bytes", {"model": "planned"}) == 30 * MiB
    assert extra["memory_weights_bytes"] == 900 * MiB


# --- out of memory -----------------------------------------------------------------------------


def test_out_of_memory_recognition() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(MemoryError())
    with pytest.raises(RuntimeError) as real:  # torch's CPU allocator, for real
        torch.empty(1 << 52, dtype=torch.uint8)
    assert is_out_of_memory(real.value)
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not a framework error type


class _Activation:
    """Stands for a tensor held by a frame of a failed forward (numpy arrays take no weakref)."""


def test_oom_error_releases_the_failed_frames() -> None:
    refs: list[weakref.ref[_Activation]] = []

    def forward() -> None:
        activation = _Activation()  # held by this frame, as a tensor of a forward would be
        refs.append(weakref.ref(activation))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    try:
        forward()
    except torch.cuda.OutOfMemoryError as exc:
        kept = exc  # the traceback (and its frames) stay reachable, as in a future
        assert refs[0]() is not None
        err = oom_error(exc, "m")
    gc.collect()
    assert kept.__traceback__ is not None
    assert refs[0]() is None
    assert isinstance(err, ResourceExhaustedError)
    assert str(err) == "m: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)"


# --- the probe, measured for real on the CPU -----------------------------------------------------

ROW_BYTES = 1 << 20  # the test model's intermediate: one MiB per row

MODEL_PY = f"""
import numpy as np

class Wide:
    def infer(self, inputs):
        x = inputs["x"]
        wide = np.ones((x.shape[0], {ROW_BYTES // 4}), np.float32)  # 1 MiB per row, freed after
        return {{"y": x * float(wide[:, :1].sum() > 0)}}
"""


def _stage(root: Path, **manifest: Any) -> Path:
    src = root.parent / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(MODEL_PY, encoding="utf-8")
    stage_model({"model.py": src / "model.py"}, root / "wide" / "1", {
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
        "max_batch_size": 8,
        "options": {"module": "model.py:Wide"},
        **manifest,
    })  # fmt: skip
    return root


def _load(root: Path, **settings: Any) -> Any:
    model = create_model(ModelRepository(root).open("wide"), Settings(**settings))
    model.load()
    return model


class TracemallocMeter:
    """The probe's meter on the CPU: numpy reports every array it allocates to tracemalloc."""

    def allocated(self) -> int:
        return tracemalloc.get_traced_memory()[0]

    def reset_peak(self) -> None:
        tracemalloc.reset_peak()

    def peak(self) -> int:
        return tracemalloc.get_traced_memory()[1]


def test_probe_measures_the_cost_of_one_more_sample(tmp_path: Path) -> None:
    model = _load(_stage(tmp_path / "models"))
    tracemalloc.start()
    try:
        points = probe(model, TracemallocMeter(), max_batch_size=8)
    finally:
        tracemalloc.stop()
    assert [n for n, _ in points] == [1, 2, 4, 8]
    per_sample, fixed = fit_probe(points)
    assert ROW_BYTES <= per_sample < ROW_BYTES * 1.05
    assert fixed < 64 * 1024
    plan = plan_for("cuda:0", 8, 1.0, free_at_start=7 * ROW_BYTES, weights=0, probe=points)
    assert plan.cap == 6  # 0.9 * 7 MiB / 1 MiB


def test_probe_inputs(tmp_path: Path) -> None:
    model = _load(_stage(tmp_path / "models", warmup={"x": [[1, 2, 3, 4], [5, 6, 7, 8]]}))
    batch = probe_inputs(model, 5)
    assert batch["x"].shape == (5, 4)
    assert batch["x"][4].tolist() == [1, 2, 3, 4]


def test_text_models_are_probed_with_their_longest_input(demo_root: Path) -> None:
    from tests.runtime.conftest import load

    model = load(demo_root, "minilm")
    batch = probe_inputs(model, 3)
    assert batch["text"].shape == (3,)
    assert batch["text"][0] == LONG_TEXT.encode()
    assert len(model._tokenizer.encode([LONG_TEXT])["input_ids"][0]) == model._tokenizer.max_length
    out = model.infer(batch)
    assert out["embedding"].shape == (3, 384)


def test_cpu_plan_keeps_max_batch_size(tmp_path: Path) -> None:
    model = _load(_stage(tmp_path / "models"))
    plan = plan_memory(model)
    assert isinstance(plan, MemoryPlan)
    assert (plan.device, plan.cap, plan.budget) == ("cpu", 8, None)
    assert plan.reason.startswith("cpu:")
    assert plan_memory(_load(_stage(tmp_path / "m2"), max_batch_size=3)).cap == 3


async def test_metadata_through_the_data_plane(tmp_path: Path) -> None:
    dp = DataPlane(ModelRepository(_stage(tmp_path / "models")), Settings())
    await dp.start([("wide", None)])
    try:
        params = dp.model_metadata("wide")["parameters"]
        assert params["batch_cap"] == 8
        assert params["batch_cap_reason"].startswith("cpu:")
        assert "memory_budget_bytes" not in params  # no budget on the CPU
    finally:
        await dp.stop()
