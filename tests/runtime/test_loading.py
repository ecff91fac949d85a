"""Weights shared through the page cache: how each runtime maps them, and what it reports."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from podserve.storage.staging import stage_model
from tests.runtime.conftest import load


def mapping_perms(path: Path) -> set[str]:
    """Permissions of this process's mappings of ``path`` (from /proc/self/maps)."""
    target = str(path.resolve())
    perms = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[5] == target:
            perms.add(fields[1])
    return perms


def test_lean_transformers_map_the_page_cache_read_only_and_shared(demo_root: Path) -> None:
    model = load(demo_root, "minilm")
    try:
        assert model.report.weights == "shared"
        assert mapping_perms(demo_root / "minilm" / "1" / "model.safetensors") == {"r--s"}
    finally:
        model.unload()


def test_read_strategy_is_private_and_says_why(demo_root: Path) -> None:
    model = load(demo_root, "minilm", read_strategy="read")
    try:
        assert model.report.weights == "private"
        assert "read_strategy read" in model.report.details["weights_private_because"]
        assert not mapping_perms(demo_root / "minilm" / "1" / "model.safetensors")
    finally:
        model.unload()


def test_onnx_runtime_owns_its_initializers(demo_root: Path) -> None:
    model = load(demo_root, "minilm-onnx")
    assert model.report.weights == "private"
    assert "ONNX Runtime" in model.report.details["weights_private_because"]


NET = """
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)
"""
TORCH_MANIFEST = {
    "runtime": "torch",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [2]}],
    "max_batch_size": 4,
    "options": {"module": "model.py:Net"},
}


def _torch_version(tmp_path: Path, dtype: torch.dtype) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    linear = torch.nn.Linear(4, 2)
    save_file({f"fc.{k}": v.detach().to(dtype) for k, v in linear.state_dict().items()},
              str(src / "model.safetensors"))  # fmt: skip
    (src / "model.py").write_text(NET)
    files = {n: src / n for n in ("model.safetensors", "model.py")}
    stage_model(files, tmp_path / "repo" / "net" / "1", TORCH_MANIFEST)
    return tmp_path / "repo"


def test_torch_runtime_maps_copy_on_write_and_reports_shared(tmp_path: Path) -> None:
    root = _torch_version(tmp_path, torch.float32)
    model = load(root, "net")
    assert model.report.weights == "shared"
    # User code may write its buffers: copy-on-write, shared until a page is written.
    assert mapping_perms(root / "net" / "1" / "model.safetensors") == {"rw-p"}


def test_torch_runtime_dtype_conversion_is_private(tmp_path: Path) -> None:
    model = load(_torch_version(tmp_path, torch.float16), "net")
    assert model.report.weights == "private"
    assert "dtype conversion of 2 tensors" in model.report.details["weights_private_because"]


CHILD = """
import sys
from podserve.runtime.registry import create_model
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository

model = create_model(ModelRepository(sys.argv[1]).open("minilm"), Settings())
model.load()
model.infer(model.warmup_inputs())
print("loaded", flush=True)
sys.stdin.read()
"""


def weight_pss(pid: int, path: Path) -> tuple[int, int]:
    """(Rss, Pss) in kB of process ``pid``'s mappings of ``path``."""
    target, inside, rss, pss = str(path.resolve()), False, 0, 0
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split(None, 5)
        if fields and "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) == 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":
            rss += int(fields[1])
        elif inside and fields[0] == "Pss:":
            pss += int(fields[1])
    return rss, pss


@pytest.mark.slow
def test_two_processes_hold_the_weights_once(demo_root: Path) -> None:
    """Two real processes serving one version: each is charged half of the weight pages."""
    weights = demo_root / "minilm" / "1" / "model.safetensors"
    size_kb = weights.stat().st_size // 1024
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(demo_root)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "loaded"
        time.sleep(0.2)
        for proc in procs:
            rss, pss = weight_pss(proc.pid, weights)
            assert rss > 0.9 * size_kb  # the whole file is mapped and resident in each
            assert pss < 0.6 * size_kb  # but each is charged only its half
    finally:
        for proc in procs:
            proc.communicate(timeout=60)
