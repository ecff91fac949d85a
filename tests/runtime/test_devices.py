"""The accelerator inventory: a machine without a GPU, CUDA_VISIBLE_DEVICES, MIG, refusals.

NVML itself only runs where an NVIDIA driver is installed; on such a machine the tests that
assume "no GPU" skip, and ``benchmarks/gpu_check.py`` exercises the real library. The NVML
reader is also driven by :class:`FakeNvml`, a stand-in with NVML's call signatures and error
types, so that MIG enumeration and unsupported queries are covered on the CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from podserve import metrics
from podserve.cli import main
from podserve.dataplane import DataPlane
from podserve.errors import AcceleratorUnavailableError
from podserve.runtime.devices import Device, Inventory, inventory, read_nvml, select_visible
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.storage.staging import stage_model

HAS_GPU = inventory().count > 0
no_gpu = pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")


def _gpu(i: int, uuid: str, mig: str = "disabled") -> Device:
    return Device(-1, uuid, f"GPU {i}", "gpu", 80 << 30, 70 << 30, 10 << 30, "9.0", mig,
                  nvml_index=i)  # fmt: skip


def _mig(parent: Device, uuid: str, gi: int, ci: int = 0) -> Device:
    return Device(-1, uuid, "MIG 1g.10gb", "mig", 10 << 30, 9 << 30, 1 << 30, "9.0", "enabled",
                  parent_uuid=parent.uuid, gpu_instance=gi, compute_instance=ci,
                  nvml_index=parent.nvml_index)  # fmt: skip


G0 = _gpu(0, "GPU-aaaa1111")
G1 = _gpu(1, "GPU-bbbb2222")
G2 = _gpu(2, "GPU-cccc3333", mig="enabled")
M0 = _mig(G2, "MIG-dddd4444", gi=1)
M1 = _mig(G2, "MIG-eeee5555", gi=2)
UNITS = [G0, G1, G2, M0, M1]


def _uuids(devices: list[Device]) -> list[str]:
    return [d.uuid for d in devices]


# --- this machine --------------------------------------------------------------------------


@no_gpu
def test_inventory_without_gpu_says_why_and_never_imports_torch() -> None:
    code = (
        "import sys, json; from podserve.runtime.devices import inventory; inv = inventory(); "
        "print(json.dumps([inv.count, inv.source, inv.reason, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    count, source, reason, torch_imported = json.loads(out.stdout)
    assert count == 0
    assert source in ("none", "nvml")
    assert "NVML" in reason
    assert torch_imported is False


@no_gpu
def test_devices_command_on_a_cpu_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["devices"]) == 0
    text = capsys.readouterr().out
    assert "no accelerator visible" in text
    assert "CUDA_VISIBLE_DEVICES=" in text
    assert main(["devices", "--json", "--torch"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["devices"] == []
    assert data["torch"]["device_count"] == 0
    assert data["reason"]


@no_gpu
def test_no_device_metrics_without_gpu() -> None:
    text = metrics.render().decode()
    assert "podserve_device_memory_total_bytes{" not in text


# --- CUDA_VISIBLE_DEVICES ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (None, ["GPU-aaaa1111", "GPU-bbbb2222", "MIG-dddd4444", "MIG-eeee5555"]),
        ("", []),
        ("-1", []),
        ("1,0", ["GPU-bbbb2222", "GPU-aaaa1111"]),
        ("0,7,1", ["GPU-aaaa1111"]),  # CUDA stops at the first entry naming nothing
        ("GPU-bbbb", ["GPU-bbbb2222"]),  # unique prefix
        ("GPU-", []),  # ambiguous prefix
        ("MIG-eeee5555", ["MIG-eeee5555"]),
        ("MIG-GPU-cccc3333/1/0", ["MIG-dddd4444"]),  # legacy form
        ("2", ["MIG-dddd4444", "MIG-eeee5555"]),  # a GPU in MIG mode: its instances
        (" 1 , 1 ", ["GPU-bbbb2222"]),
        ("nonsense,0", []),
    ],
)
def test_cuda_visible_devices(spec: str | None, expected: list[str]) -> None:
    visible, hidden = select_visible(UNITS, spec)
    assert _uuids(visible) == expected
    assert [d.index for d in visible] == list(range(len(expected)))
    assert set(hidden) == {"GPU-aaaa1111", "GPU-bbbb2222", "MIG-dddd4444", "MIG-eeee5555"} - set(
        expected
    )


def test_inventory_device_lookup() -> None:
    visible, _ = select_visible(UNITS, "MIG-eeee5555,0")
    inv = Inventory(devices=visible, source="nvml")
    found = inv.device("cuda:1")
    assert found is not None
    assert found.uuid == "GPU-aaaa1111"
    assert inv.device("cuda") == replace(M1, index=0)
    assert inv.device("cuda:2") is None
    assert inv.device("cpu") is None
    assert "cuda:0  mig  MIG 1g.10gb  MIG-eeee5555" in inv.render()


# --- NVML reader ---------------------------------------------------------------------------


class FakeNvml:
    """NVML's Python API for two GPUs, the second in MIG mode with one instance."""

    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_NotFound(NVMLError):
        pass

    class _Mem:
        def __init__(self, total: int, used: int) -> None:
            self.total, self.used, self.free = total, used, total - used

    class _Util:
        gpu, memory = 37, 12

    class _Pci:
        busId = b"00000000:3B:00.0"

    def __init__(self) -> None:
        self.shut = False
        self.gpus: list[dict[str, Any]] = [
            {"uuid": "GPU-1111", "name": "NVIDIA L4", "mem": (24 << 30, 1 << 30), "mig": None},
            {"uuid": "GPU-2222", "name": "NVIDIA H100 80GB HBM3", "mem": (80 << 30, 5 << 30),
             "mig": [{"uuid": "MIG-3333", "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb",
                      "mem": (10 << 30, 2 << 30), "gi": 7, "ci": 0}]},
        ]  # fmt: skip

    def nvmlInit(self) -> None:
        pass

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlSystemGetDriverVersion(self) -> str:
        return "570.86.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12080

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> dict[str, Any]:
        return self.gpus[i]

    def nvmlDeviceGetMigMode(self, h: dict[str, Any]) -> tuple[int, int]:
        if h["mig"] is None:
            raise self.NVMLError_NotSupported("Not Supported")
        return 1, 1

    def nvmlDeviceGetMaxMigDeviceCount(self, h: dict[str, Any]) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: dict[str, Any], m: int) -> dict[str, Any]:
        if m >= len(h["mig"]):
            raise self.NVMLError_NotFound("Not Found")
        return {**h["mig"][m], "is_mig": True}

    def nvmlDeviceGetCudaComputeCapability(self, h: dict[str, Any]) -> tuple[int, int]:
        return (8, 9) if h["uuid"] == "GPU-1111" else (9, 0)

    def nvmlDeviceGetPciInfo(self, h: dict[str, Any]) -> Any:
        return self._Pci()

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any]) -> Any:
        return self._Mem(*h["mem"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        if h.get("is_mig"):
            raise self.NVMLError_NotSupported("Not Supported")
        return self._Util()

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> bytes:
        return h["uuid"].encode()

    def nvmlDeviceGetName(self, h: dict[str, Any]) -> str:
        return str(h["name"])

    def nvmlDeviceGetGpuInstanceId(self, h: dict[str, Any]) -> int:
        return int(h["gi"])

    def nvmlDeviceGetComputeInstanceId(self, h: dict[str, Any]) -> int:
        return int(h["ci"])


def test_nvml_reader_lists_gpus_and_mig_instances() -> None:
    nvml = FakeNvml()
    inv = Inventory()
    units = read_nvml(nvml, inv)
    assert units is not None
    assert nvml.shut
    assert inv.driver_version == "570.86.15"
    assert inv.cuda_driver_version == "12.8"
    l4, h100, mig = units
    assert (l4.kind, l4.mig_mode, l4.compute_capability, l4.utilization) == (
        "gpu",
        "n/a",
        "8.9",
        0.37,
    )
    assert l4.memory_free == 23 << 30
    assert l4.pci_bus_id == "00000000:3B:00.0"
    assert h100.mig_mode == "enabled"
    assert (mig.kind, mig.parent_uuid, mig.gpu_instance, mig.utilization) == (
        "mig",
        "GPU-2222",
        7,
        None,
    )
    visible, hidden = select_visible(units, None)
    assert _uuids(visible) == ["GPU-1111", "MIG-3333"]
    assert hidden == []
    visible, hidden = select_visible(units, "MIG-GPU-2222/7/0")
    assert _uuids(visible) == ["MIG-3333"]
    assert hidden == ["GPU-1111"]


def test_nvml_failure_is_reported() -> None:
    nvml = FakeNvml()

    def broken() -> None:
        raise nvml.NVMLError("Driver Not Loaded")

    nvml.nvmlInit = broken  # type: ignore[method-assign]
    inv = Inventory()
    assert read_nvml(nvml, inv) is None
    assert inv.reason == "NVML unavailable: Driver Not Loaded"


def test_container_notes_flag_a_privileged_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    import pynvml

    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    inv = inventory(environ={"NVIDIA_VISIBLE_DEVICES": "GPU-1111"})
    assert inv.source == "nvml"
    assert inv.count == 2
    assert any("GPU-2222" in n and "privileged" in n for n in inv.notes)
    inv = inventory(environ={"NVIDIA_VISIBLE_DEVICES": "GPU-1111,MIG-3333"})
    assert inv.notes == []
    inv = inventory(environ={"CUDA_VISIBLE_DEVICES": ""})
    assert inv.count == 0
    assert "hidden by CUDA_VISIBLE_DEVICES" in inv.reason
    assert pynvml is not fake


# --- require_accelerator: refused, not silently on the CPU -----------------------------------


def _stage_gpu_model(root: Path, **manifest: Any) -> Path:
    src = root.parent / "src"
    src.mkdir(exist_ok=True)
    (src / "model.py").write_text(
        "class Doubler:\n    def infer(self, inputs):\n        return {'y': inputs['x'] * 2}\n",
        encoding="utf-8",
    )
    stage_model({"model.py": src / "model.py"}, root / "big" / "1", {
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
        "max_batch_size": 8,
        "options": {"module": "model.py:Doubler"},
        **manifest,
    })  # fmt: skip
    return root


@no_gpu
async def test_require_accelerator_model_stays_not_ready(tmp_path: Path) -> None:
    root = _stage_gpu_model(tmp_path / "models", require_accelerator=True)
    dp = DataPlane(ModelRepository(root), Settings())
    await dp.start([("big", None)])
    try:
        served = dp.models["big"]
        assert served.state == "failed"
        assert "require_accelerator: true" in served.reason
        assert not dp.ready()
        assert "require_accelerator" in dp.not_ready_reason()
        assert metrics.sample("podserve_model_state", {"model": "big", "state": "failed"}) == 1.0
    finally:
        await dp.stop()


@no_gpu
def test_devices_check_exits_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _stage_gpu_model(tmp_path / "models", require_accelerator=True)
    code = main(["devices", "--check", str(root)])
    assert code == AcceleratorUnavailableError.exit_code == 4
    captured = capsys.readouterr()
    assert "big:1: refused" in captured.out
    assert "require_accelerator: true" in captured.err

    ok_root = _stage_gpu_model(tmp_path / "ok", device="auto")
    assert main(["devices", "--check", "--json", str(ok_root), "--model", "big"]) == 0
    checks = json.loads(capsys.readouterr().out)["checks"]
    assert checks == [{"model": "big:1", "device": "cpu"}]


@no_gpu
def test_devices_check_command_line(tmp_path: Path) -> None:
    """What an init container runs: the process exit status carries the refusal."""
    root = _stage_gpu_model(tmp_path / "models", device="cuda")
    done = subprocess.run([sys.executable, "-m", "podserve", "devices", "--check", str(root)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 4
    assert "no CUDA device is visible" in done.stderr
