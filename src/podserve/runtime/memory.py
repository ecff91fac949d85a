"""The memory budget of a model on its GPU, the batch cap it implies, and out-of-memory.

The budget, per device and per process::

    budget = free memory at start × memory_fraction      (PODSERVE_MEMORY_FRACTION)
    room   = budget − memory allocated after loading (the weights of every model on it)
    cap    = ⌊(room × (1 − HEADROOM) − fixed) / per_sample⌋, clamped to [1, max_batch_size]

A time-sliced GPU is shared by several pods that all see the whole card, so the fraction is
explicit: give each of four pods 0.2 rather than letting the first one take everything.
"Free at start" is reconstructed after the first load as free now + what this process's
allocator has reserved (the CUDA context, a few hundred MB, is not counted: it is not ours to
use). The budget is enforced, not advisory: torch's caching allocator is limited to it
(``torch.cuda.set_per_process_memory_fraction``), so a batch that would overstep it raises
the framework's out-of-memory error inside the budget instead of taking a neighbour's memory.

``per_sample`` and ``fixed`` come from a probe after the warm-up: the model runs batches of
1, 2, 4 and 8 (up to its max) while ``torch.cuda.max_memory_allocated`` records the peak
above the resident weights; the steepest slope is the cost of one more sample. Text models are
probed with a sentence longer than their maximum length (the tokenizer truncates it), since
activation memory grows with the sequence length and the probe must be the worst case.

On the CPU there is no cap beyond ``max_batch_size``: host memory is the container's cgroup
limit, shared with everything else in the process; torch's CPU allocator keeps no peak
statistics to probe; and a batch's activations are small next to the weights and the page
cache. Size ``max_batch_size`` (and the pod's memory limit) instead. ONNX Runtime on CUDA
keeps its own arena that torch's statistics cannot see: it is not probed either.

Weights reach the device straight from the mapped file: the torch and transformers runtimes
build the module on views of the verified, memory-mapped safetensors file and call
``.to(device)``, one host→device copy per tensor with no intermediate host copy (the driver
stages pageable memory through its own small pinned buffers). A pinned double buffer or
registering the mapping (``cudaHostRegister``) can be faster and ``safe_open(device="cuda")``
reads into host memory first; ``benchmarks/gpu_check.py`` measures all three. GPUDirect
Storage would skip host memory entirely but needs O_DIRECT-capable storage: not used.

Out-of-memory never kills the server: the runtimes translate the framework's error
(:func:`is_out_of_memory`) into :class:`~podserve.errors.ResourceExhaustedError` at their
border, and the batcher splits such a batch in halves, retries, lowers the cap and counts it
(``podserve_oom_splits_total``); a single request that still does not fit gets 400 /
``RESOURCE_EXHAUSTED``.
"""

from __future__ import annotations

import itertools
import logging
import math
import sys
import threading
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from podserve.errors import PodserveError, ResourceExhaustedError

if TYPE_CHECKING:
    from podserve.runtime.model import Model

log = logging.getLogger(__name__)

HEADROOM = 0.10  # of the room left after the weights: sequence-length variance, fragmentation
PROBE_SIZES = (1, 2, 4, 8)
LONG_TEXT = "podserve probes the memory of its longest input. " * 200  # > any max_length
_OOM_MARKERS = (
    "out of memory",  # CUDA (torch, ORT's CUDA provider)
    "failed to allocate memory",  # ORT's BFC arena
    "available memory of",  # ORT's arena limit
    "can't allocate memory",  # torch's CPU allocator (a plain RuntimeError)
    "bad allocation",  # std::bad_alloc through pybind11
    "bad_alloc",
)


# --- out of memory -----------------------------------------------------------------------------


def is_out_of_memory(exc: BaseException) -> bool:
    """Is ``exc`` a framework's out-of-memory error (torch, ONNX Runtime, numpy)?"""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never import torch to ask
    if torch is not None and isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError) or type(exc).__name__ in ("RuntimeException", "Fail"):
        message = str(exc).lower()
        return any(marker in message for marker in _OOM_MARKERS)
    return False


def oom_error(exc: BaseException, what: str) -> ResourceExhaustedError:
    """The podserve error for a framework OOM; drops the frames that hold the batch's tensors.

    Raise it ``from None``: a traceback keeps every frame of the failed forward alive, with
    its activations, and the retried halves need that memory back.
    """
    forget(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ResourceExhaustedError(f"{what}: out of memory ({first[:300]})")


def forget(exc: BaseException | None) -> None:
    """Clear the locals of every finished frame in ``exc``'s traceback chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if exc.__traceback__ is not None:
            traceback.clear_frames(exc.__traceback__)
        exc = exc.__cause__ or exc.__context__


# --- budget and cap arithmetic -----------------------------------------------------------------


def fit_probe(points: list[tuple[int, int]]) -> tuple[int, int]:
    """``(per_sample, fixed)`` bytes from (batch size, peak above baseline) points.

    Conservative: the steepest slope between consecutive sizes, and the fixed part that
    makes every measured point fit under the line.
    """
    if not points:
        return 0, 0
    pts = sorted(points)
    if len(pts) == 1:
        return max(0, pts[0][1] // max(1, pts[0][0])), 0
    slope = max((b - a) / (nb - na) for (na, a), (nb, b) in itertools.pairwise(pts) if nb > na)
    per_sample = max(0, math.ceil(slope))
    fixed = max(0, max(peak - per_sample * n for n, peak in pts))
    return per_sample, fixed


def batch_cap(
    room: int, per_sample: int, fixed: int, max_batch_size: int, headroom: float = HEADROOM
) -> int:
    """The largest batch whose probed cost fits in ``room`` with ``headroom`` to spare (≥ 1)."""
    limit = max(1, max_batch_size)
    if per_sample <= 0:
        return limit
    usable = room * (1.0 - headroom) - fixed
    return max(1, min(limit, int(usable // per_sample)))


@dataclass
class MemoryPlan:
    """What the budget allows one model; its fields go to metadata and metrics."""

    device: str
    max_batch_size: int
    cap: int
    reason: str
    fraction: float = 1.0
    free_at_start: int | None = None
    budget: int | None = None
    weights: int | None = None
    per_sample: int | None = None
    fixed: int | None = None
    probe: list[tuple[int, int]] = field(default_factory=list)

    @property
    def room(self) -> int | None:
        if self.budget is None or self.weights is None:
            return None
        return self.budget - self.weights

    def metadata(self) -> dict[str, Any]:
        """Flat keys for the model metadata's ``parameters``."""
        out: dict[str, Any] = {"batch_cap_reason": self.reason}
        for key, value in (
            ("memory_budget_bytes", self.budget),
            ("memory_fraction", self.fraction if self.budget is not None else None),
            ("memory_free_at_start_bytes", self.free_at_start),
            ("memory_weights_bytes", self.weights),
            ("memory_per_sample_bytes", self.per_sample),
            ("memory_fixed_bytes", self.fixed),
        ):
            if value is not None:
                out[key] = value
        return out


def plan_for(
    device: str,
    max_batch_size: int,
    fraction: float,
    *,
    free_at_start: int,
    weights: int,
    probe: list[tuple[int, int]],
) -> MemoryPlan:
    """Pure arithmetic from measured numbers (what :func:`plan_memory` measures on a GPU)."""
    budget = int(free_at_start * fraction)
    per_sample, fixed = fit_probe(probe)
    room = budget - weights
    cap = batch_cap(room, per_sample, fixed, max_batch_size)
    if room <= 0 or room * (1.0 - HEADROOM) < fixed + per_sample:
        reason = (
            f"budget {_mib(budget)} is used up by {_mib(weights)} of weights: one sample per "
            "batch; raise memory_fraction or use a larger GPU"
        )
    elif cap >= max_batch_size:
        reason = f"max_batch_size {max_batch_size} fits in {_mib(room)} left after the weights"
    else:
        reason = (
            f"{_mib(room)} left after the weights, {HEADROOM:.0%} headroom, "
            f"{_mib(per_sample)}/sample + {_mib(fixed)} fixed"
        )
    return MemoryPlan(device, max_batch_size, cap, reason, fraction, free_at_start, budget,
                      weights, per_sample, fixed, list(probe))  # fmt: skip


# --- measuring on a GPU ------------------------------------------------------------------------


class Meter(Protocol):
    """Allocator statistics of one device (torch.cuda; tests use tracemalloc on the CPU)."""

    def allocated(self) -> int: ...

    def reset_peak(self) -> None: ...

    def peak(self) -> int: ...


class CudaMeter:
    """``torch.cuda`` allocator statistics for one device."""

    def __init__(self, device: str) -> None:
        import torch

        self._cuda = torch.cuda
        self.device = torch.device(device)

    def allocated(self) -> int:
        return int(self._cuda.memory_allocated(self.device))

    def reserved(self) -> int:
        return int(self._cuda.memory_reserved(self.device))

    def free_total(self) -> tuple[int, int]:
        free, total = self._cuda.mem_get_info(self.device)
        return int(free), int(total)

    def reset_peak(self) -> None:
        self._cuda.synchronize(self.device)
        self._cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        self._cuda.synchronize(self.device)
        return int(self._cuda.max_memory_allocated(self.device))


def probe(
    model: Model, meter: Meter, max_batch_size: int, sizes: tuple[int, ...] = PROBE_SIZES
) -> list[tuple[int, int]]:
    """(batch size, peak bytes above the resident baseline) for a few sizes up to the max."""
    wanted = sorted({n for n in sizes if n <= max_batch_size} | {min(max_batch_size, 1)})
    points: list[tuple[int, int]] = []
    for n in (n for n in wanted if n > 0):
        batch = probe_inputs(model, n)
        base = meter.allocated()
        meter.reset_peak()
        try:
            model.infer(batch)
        except PodserveError as exc:  # out of memory (or worse): the sizes so far are the data
            forget(exc)
            log.info("memory probe of %s stopped at batch %d: %s", model.version.name, n, exc)
            break
        finally:
            del batch
        points.append((n, max(0, meter.peak() - base)))
    return points


def probe_inputs(model: Model, rows: int) -> dict[str, np.ndarray]:
    """The warm-up batch repeated to ``rows``; text inputs replaced by an over-long sentence."""
    warm = model.warmup_inputs()
    text_task = model.manifest.runtime in ("transformers", "onnx") and "task" in (
        model.manifest.options
    )
    out: dict[str, np.ndarray] = {}
    for name, arr in warm.items():
        if text_task and arr.dtype == object:
            arr = np.full(arr.shape, LONG_TEXT.encode(), dtype=object)
        reps = math.ceil(rows / max(1, arr.shape[0]))
        out[name] = np.concatenate([arr] * reps, axis=0)[:rows]
    return out


_lock = threading.Lock()  # probes and budgets: peak statistics are per device, not per thread
_device_budgets: dict[str, tuple[int, int]] = {}  # device → (free at start, total)


def plan_memory(model: Model) -> MemoryPlan:
    """After the warm-up: measure the budget and probe the model; the cap for its batcher."""
    manifest, settings = model.manifest, model.settings
    max_batch = manifest.max_batch_size
    if settings.max_batch_size is not None and max_batch > 0:
        max_batch = min(max_batch, settings.max_batch_size)
    device = model.report.device
    if max_batch <= 1:
        return MemoryPlan(device, max_batch, max(1, max_batch), "no batching: nothing to cap")
    if not device.startswith("cuda"):
        return MemoryPlan(device, max_batch, max_batch, "cpu: max_batch_size (host memory is "
                          "the container's limit, not probed)")  # fmt: skip
    if "providers" in model.report.details:
        return MemoryPlan(device, max_batch, max_batch, "onnxruntime arena: not probed; "
                          "out-of-memory splits lower the cap")  # fmt: skip
    meter = CudaMeter(device)
    with _lock:
        free_at_start, _total = _budget_base(meter, settings.memory_fraction)
        weights = meter.allocated()
        points = probe(model, meter, max_batch)
        meter._cuda.empty_cache()  # the probe's blocks go back (neighbours on a shared GPU)
    plan = plan_for(device, max_batch, settings.memory_fraction, free_at_start=free_at_start,
                    weights=weights, probe=points)  # fmt: skip
    log.info("model %s on %s: batch cap %d (%s)", model.version.name, device, plan.cap, plan.reason)
    return plan


def _budget_base(meter: CudaMeter, fraction: float) -> tuple[int, int]:
    """Free memory at start for this device (first model wins) and enforce the budget."""
    key = str(meter.device)
    if key not in _device_budgets:
        free, total = meter.free_total()
        free_at_start = free + meter.reserved()
        _device_budgets[key] = (free_at_start, total)
        limit = max(int(free_at_start * fraction), meter.reserved())
        index = meter.device.index or 0
        meter._cuda.set_per_process_memory_fraction(min(1.0, limit / total), index)
    return _device_budgets[key]


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"
