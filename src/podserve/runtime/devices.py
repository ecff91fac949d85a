"""What accelerators this process was given: the inventory ``podserve devices`` prints.

In Kubernetes a pod asks for ``nvidia.com/gpu: 1``, a MIG slice (``nvidia.com/mig-1g.10gb``)
or a time-sliced share, and gets whatever the node has. This module finds out, from NVML
(``nvidia-ml-py``, the driver's own library) and optionally from torch::

    inv = inventory()              # NVML only: no CUDA context, no torch import
    inv.devices[0].memory_free     # bytes, what a model may still claim

Visibility follows the rules CUDA itself applies to ``CUDA_VISIBLE_DEVICES``: unset = every
device, empty = none, otherwise a comma list of indices, ``GPU-…`` or ``MIG-…`` UUIDs (unique
prefixes allowed) where enumeration stops at the first entry that names nothing. Indices are
taken in PCI bus order (NVML's order, CUDA's with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``); with
``with_torch=True`` the CUDA ordinals come from torch and win. A GPU in MIG mode is not usable
as a whole: its MIG instances are the units listed.

``NVIDIA_VISIBLE_DEVICES`` is read by the container runtime, which mounts only those devices,
so NVML inside the container already sees only them; it is reported, and a note is added when
NVML sees devices it does not list (a privileged pod sees every GPU of the node).

A machine without a GPU is a normal case: NVML's library is missing or finds no device, the
inventory says why, and torch is never imported just to learn that.
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Kind = Literal["gpu", "mig"]


@dataclass(frozen=True)
class Device:
    """One usable accelerator: a whole GPU, or one MIG instance of a GPU in MIG mode."""

    index: int  # CUDA ordinal inside this process (cuda:<index>)
    uuid: str
    name: str
    kind: Kind
    memory_total: int
    memory_free: int
    memory_used: int
    compute_capability: str | None = None  # "9.0"
    mig_mode: str = "n/a"  # of the physical GPU: enabled | disabled | n/a (not supported)
    utilization: float | None = None  # 0..1 of the last sample period; None on MIG / unknown
    memory_utilization: float | None = None
    parent_uuid: str | None = None  # the physical GPU of a MIG instance
    gpu_instance: int | None = None
    compute_instance: int | None = None
    nvml_index: int = 0  # the physical GPU's NVML index
    pci_bus_id: str = ""

    @property
    def torch_device(self) -> str:
        return f"cuda:{self.index}"


@dataclass
class Inventory:
    """The devices this process may use and how that was found out."""

    devices: list[Device] = field(default_factory=list)
    source: str = "none"  # nvml | torch | none
    reason: str = ""  # why nothing was found (or why NVML could not be asked)
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    cuda_visible_devices: str | None = None
    nvidia_visible_devices: str | None = None
    hidden: list[str] = field(default_factory=list)  # UUIDs NVML sees that CUDA will not
    torch: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.devices)

    def device(self, name: str) -> Device | None:
        """``cuda`` / ``cuda:N`` → its Device (None for ``cpu`` or an unknown ordinal)."""
        if not name.startswith("cuda"):
            return None
        index = int(name[5:]) if name.startswith("cuda:") else 0
        return next((d for d in self.devices if d.index == index), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def render(self) -> str:
        """The plain-text table ``podserve devices`` prints."""
        lines = [f"source: {self.source}" + (f" ({self.reason})" if self.reason else "")]
        if self.driver_version:
            lines.append(
                f"driver: {self.driver_version}  CUDA driver API: {self.cuda_driver_version}"
            )
        lines.append(f"CUDA_VISIBLE_DEVICES={_show(self.cuda_visible_devices)}  "
                     f"NVIDIA_VISIBLE_DEVICES={_show(self.nvidia_visible_devices)}")  # fmt: skip
        if not self.devices:
            lines.append("no accelerator visible: models with device auto run on the CPU")
        for d in self.devices:
            util = "n/a" if d.utilization is None else f"{d.utilization:.0%}"
            lines.append(
                f"cuda:{d.index}  {d.kind:<3}  {d.name}  {d.uuid}\n"
                f"        memory {_gib(d.memory_used)} used / {_gib(d.memory_total)} total "
                f"({_gib(d.memory_free)} free)  utilisation {util}  "
                f"compute {d.compute_capability or '?'}  MIG {d.mig_mode}"
            )
        if self.hidden:
            lines.append(f"hidden by CUDA_VISIBLE_DEVICES: {', '.join(self.hidden)}")
        if self.torch is not None:
            lines.append("torch: " + ", ".join(f"{k} {v}" for k, v in self.torch.items()))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def inventory(*, with_torch: bool = False, environ: dict[str, str] | None = None) -> Inventory:
    """Ask NVML (and torch when ``with_torch``) what this process may use."""
    env = os.environ if environ is None else environ
    inv = Inventory(
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
        nvidia_visible_devices=env.get("NVIDIA_VISIBLE_DEVICES"),
    )
    try:
        import pynvml
    except ImportError:
        pynvml = None
        inv.reason = "nvidia-ml-py is not installed (pip install 'podserve[gpu]')"
    if pynvml is not None:
        units = read_nvml(pynvml, inv)
        if units is not None:
            inv.source = "nvml"
            inv.devices, inv.hidden = select_visible(units, inv.cuda_visible_devices)
            if not inv.devices and not inv.reason:
                inv.reason = (
                    "NVML sees no GPU" if not units
                    else "every GPU is hidden by CUDA_VISIBLE_DEVICES"
                )  # fmt: skip
            inv.notes.extend(_container_notes(units, inv.nvidia_visible_devices))
    # Without with_torch, torch is asked only when the NVML package is missing and torch is
    # already imported: a missing NVML *library* means no driver, hence no CUDA device either.
    if with_torch or (pynvml is None and "torch" in sys.modules):
        _add_torch(inv)
    return inv


def read_nvml(nvml: Any, inv: Inventory) -> list[Device] | None:
    """Every GPU and MIG instance NVML sees (parents in MIG mode included); None on failure.

    ``nvml`` is the ``pynvml`` module; failures are recorded in ``inv.reason`` because a
    machine without the driver is a normal, reported case.
    """
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        inv.reason = f"NVML unavailable: {exc}"
        return None
    try:
        inv.driver_version = _text(nvml.nvmlSystemGetDriverVersion())
        cuda = int(nvml.nvmlSystemGetCudaDriverVersion())
        inv.cuda_driver_version = f"{cuda // 1000}.{cuda % 1000 // 10}"
        units: list[Device] = []
        for i in range(int(nvml.nvmlDeviceGetCount())):
            units.extend(_read_gpu(nvml, i))
        return units
    except nvml.NVMLError as exc:
        inv.reason = f"NVML failed: {exc}"
        return None
    finally:
        nvml.nvmlShutdown()


def _read_gpu(nvml: Any, i: int) -> list[Device]:
    handle = nvml.nvmlDeviceGetHandleByIndex(i)
    mig_mode = "n/a"
    try:
        current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        mig_mode = "enabled" if current == nvml.NVML_DEVICE_MIG_ENABLE else "disabled"
    except nvml.NVMLError:
        pass  # NotSupported: not a MIG-capable GPU
    cc = _optional(nvml, lambda: nvml.nvmlDeviceGetCudaComputeCapability(handle))
    gpu = _read_unit(nvml, handle, "gpu", i)
    gpu = replace(
        gpu,
        mig_mode=mig_mode,
        compute_capability=f"{cc[0]}.{cc[1]}" if cc else None,
        pci_bus_id=_text(getattr(_optional(nvml, lambda: nvml.nvmlDeviceGetPciInfo(handle)),
                                 "busId", "")),
    )  # fmt: skip
    out = [gpu]
    if mig_mode == "enabled":
        for m in range(int(nvml.nvmlDeviceGetMaxMigDeviceCount(handle))):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, m)
            except nvml.NVMLError:
                continue  # slot without an instance
            unit = _read_unit(nvml, mig, "mig", i)
            out.append(replace(
                unit,
                mig_mode=mig_mode,
                compute_capability=gpu.compute_capability,
                parent_uuid=gpu.uuid,
                gpu_instance=_optional(nvml, lambda h=mig: nvml.nvmlDeviceGetGpuInstanceId(h)),
                compute_instance=_optional(
                    nvml, lambda h=mig: nvml.nvmlDeviceGetComputeInstanceId(h)),
                pci_bus_id=gpu.pci_bus_id,
            ))  # fmt: skip
    return out


def _read_unit(nvml: Any, handle: Any, kind: Kind, nvml_index: int) -> Device:
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    util = _optional(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    return Device(
        index=-1,
        uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        name=_text(nvml.nvmlDeviceGetName(handle)),
        kind=kind,
        memory_total=int(mem.total),
        memory_free=int(mem.free),
        memory_used=int(mem.used),
        utilization=util.gpu / 100.0 if util is not None else None,
        memory_utilization=util.memory / 100.0 if util is not None else None,
        nvml_index=nvml_index,
    )


def select_visible(units: list[Device], spec: str | None) -> tuple[list[Device], list[str]]:
    """Apply ``CUDA_VISIBLE_DEVICES`` to NVML's units: (visible with ordinals, hidden UUIDs)."""
    gpus = [u for u in units if u.kind == "gpu"]

    def usable(gpu: Device) -> list[Device]:
        if gpu.mig_mode == "enabled":
            return [u for u in units if u.parent_uuid == gpu.uuid]
        return [gpu]

    chosen: list[Device] = []
    if spec is None:
        for gpu in gpus:
            chosen.extend(usable(gpu))
    else:
        for token in (t.strip() for t in spec.split(",")):
            found = _resolve(token, gpus, units, usable)
            if found is None:
                break  # CUDA stops at the first entry that names no device
            chosen.extend(u for u in found if u not in chosen)
    visible = [replace(u, index=i) for i, u in enumerate(chosen)]
    seen = {u.uuid for u in chosen}
    hidden = [u.uuid for g in gpus for u in usable(g) if u.uuid not in seen]
    return visible, hidden


def _resolve(
    token: str, gpus: list[Device], units: list[Device], usable: Any
) -> list[Device] | None:
    if token.isdigit():
        i = int(token)
        return usable(gpus[i]) if i < len(gpus) else None
    if token.startswith("MIG-GPU-"):  # legacy MIG-GPU-<uuid>/<gi>/<ci>
        parent, _, rest = token[4:].partition("/")
        gi, _, ci = rest.partition("/")
        match = [u for u in units if u.parent_uuid == parent
                 and str(u.gpu_instance) == gi and str(u.compute_instance) == ci]  # fmt: skip
        return match or None
    if token.startswith(("GPU-", "MIG-")):
        match = [u for u in units if u.uuid.startswith(token)]
        if len(match) != 1:
            return None  # unknown or ambiguous prefix
        return usable(match[0]) if match[0].kind == "gpu" else match
    return None


def _container_notes(units: list[Device], nvidia_visible: str | None) -> list[str]:
    if nvidia_visible is None or nvidia_visible.strip() in ("all", ""):
        return []
    listed = {t.strip() for t in nvidia_visible.split(",")}
    if listed & {"void", "none"}:
        if units:
            return [f"NVIDIA_VISIBLE_DEVICES={nvidia_visible} but NVML sees "
                    f"{len(units)} device(s): is the pod privileged?"]  # fmt: skip
        return []
    uuids = {t for t in listed if t.startswith(("GPU-", "MIG-"))}
    if not uuids:
        return []  # host indices: they cannot be compared with what the container sees
    extra = [u.uuid for u in units if u.uuid not in uuids and u.parent_uuid not in uuids
             and not (u.kind == "gpu" and any(x.parent_uuid == u.uuid and x.uuid in uuids
                                              for x in units))]  # fmt: skip
    if extra:
        return [f"NVML sees {', '.join(extra)} which NVIDIA_VISIBLE_DEVICES does not list "
                "(privileged pod?); set CUDA_VISIBLE_DEVICES to the allocated UUIDs"]  # fmt: skip
    return []


def _add_torch(inv: Inventory) -> None:
    """torch's view: its CUDA build, device count and the ordinal of each UUID."""
    try:
        import torch
    except ImportError:
        return
    info: dict[str, Any] = {"version": torch.__version__, "cuda": torch.version.cuda}
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    info["device_count"] = count
    inv.torch = info
    if count == 0:
        if inv.devices:
            inv.notes.append(
                f"NVML sees {inv.count} device(s) but torch sees none (a CPU build of torch?)"
            )
        return
    by_uuid = {d.uuid: d for d in inv.devices}
    found: list[Device] = []
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        uuid = str(getattr(props, "uuid", ""))
        uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
        known = by_uuid.get(uuid)
        if known is not None:
            found.append(replace(known, index=i))
        else:
            free, total = torch.cuda.mem_get_info(i)
            found.append(Device(
                index=i, uuid=uuid, name=props.name, kind="gpu", memory_total=int(total),
                memory_free=int(free), memory_used=int(total - free),
                compute_capability=f"{props.major}.{props.minor}",
            ))  # fmt: skip
    if inv.source == "none":
        inv.source, inv.reason = "torch", inv.reason
    inv.devices = found


def _optional(nvml: Any, call: Any) -> Any:
    try:
        return call()
    except nvml.NVMLError:
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _show(value: str | None) -> str:
    return "(unset)" if value is None else repr(value)
