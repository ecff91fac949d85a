"""Many models per pod: on-demand models, resident by measured bytes, evicted by GDSF or LRU.

A model is *pinned* (loaded at start, never evicted, gates readiness) or *on-demand*
(``PODSERVE_ON_DEMAND_MODELS`` or ``residency: on-demand`` in its manifest): listed in the
index as ``unloaded`` and loaded by its first request. Concurrent first requests share one load
(one task per model); each waits at most ``cold_load_timeout_seconds`` (or its own, shorter,
timeout) and the load carries on for the next request if it gives up.

With a budget (``PODSERVE_MODEL_MEMORY_BYTES``, or ``PODSERVE_MODEL_MEMORY_FRACTION`` of the
cgroup memory limit) a load first makes room: it evicts on-demand models in the order of
``PODSERVE_EVICTION`` (:mod:`~podserve.dataplane.eviction`: GreedyDual-Size-Frequency by
default, or least recently used), those with nothing in flight first. An evicted model stops
admitting (state ``evicting``), answers what it accepted, then is unloaded as the repository
API's unload does; the repository API's load of an on-demand model makes room the same way.
A model that cannot fit, even with every on-demand model evicted, gets 503
(:class:`~podserve.errors.ModelMemoryError`) naming the budget and its size.

The size of a model is measured at its load: the weight bytes it read and verified, plus the
activation reserve the memory probe measured after the warm-up (``fixed + per_sample x cap``,
on a GPU); a model that read nothing through podserve (a ``python`` model building its own
state) counts the growth of the process's resident set (``/proc/self/statm``) across its
load, measured one load at a time while a budget is set. The RSS growth of every load is shown
in the index too (``rss_delta_bytes``): the first load in a process also pays for imports and
allocator arenas, which the budget does not count, so leave headroom in the pod's limit.
Before its first load a model's size is estimated from its manifest's file sizes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from podserve import metrics
from podserve.dataplane.eviction import Eviction
from podserve.errors import (
    ConfigurationError,
    ModelMemoryError,
    ModelNotReadyError,
    PodserveError,
)
from podserve.settings import Settings

if TYPE_CHECKING:
    from podserve.dataplane.models import ServedModel
    from podserve.runtime.model import Model
    from podserve.storage.repository import ModelVersion

SERVING = ("ready", "draining")  # as the plane's: states that take requests


class Plane(Protocol):
    """What residency uses of the :class:`~podserve.dataplane.DataPlane` that owns it."""

    models: dict[str, ServedModel]
    state: str

    async def load(self, name: str, version: str | None = None) -> ServedModel: ...

    async def unload(self, name: str) -> None: ...

    def set_model_state(self, served: ServedModel, state: str, reason: str = "") -> None: ...


CGROUP_FILES = (
    Path("/sys/fs/cgroup/memory.max"),  # v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # v1
)
_NO_LIMIT = 1 << 60  # cgroup v1 reports "unlimited" as a huge page-aligned number


def cgroup_memory_limit(files: tuple[Path, ...] = CGROUP_FILES) -> int | None:
    """The container's memory limit in bytes, or None when there is none."""
    for path in files:
        try:
            text = path.read_text(encoding="ascii").strip()
        except OSError:
            continue
        if text == "max" or not text.isdigit() or int(text) >= _NO_LIMIT:
            return None
        return int(text)
    return None


def model_budget(settings: Settings, files: tuple[Path, ...] = CGROUP_FILES) -> int | None:
    """Bytes models may hold resident, or None (no budget: nothing is evicted)."""
    if settings.model_memory_bytes is not None:
        return settings.model_memory_bytes
    if settings.model_memory_fraction is None:
        return None
    limit = cgroup_memory_limit(files)
    if limit is None:
        raise ConfigurationError(
            "PODSERVE_MODEL_MEMORY_FRACTION needs a container memory limit, and no cgroup limit "
            "was found; set PODSERVE_MODEL_MEMORY_BYTES instead"
        )
    return int(limit * settings.model_memory_fraction)


def rss_bytes() -> int:
    """This process's resident set size (Linux), 0 where unknown."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def measured_size(model: Model, rss_grown: int) -> int:
    """Weight bytes the load read (or, for a model that read none through podserve, the
    resident set's growth across its load) plus the activation reserve its memory probe
    measured (``fixed + per_sample x cap``, where the probe ran)."""
    from podserve.runtime.memory import MemoryPlan

    size = model.report.bytes_read or max(rss_grown, 0)
    plan = model.report.details.get("memory_plan")
    if isinstance(plan, MemoryPlan) and plan.per_sample is not None:
        size += (plan.fixed or 0) + plan.per_sample * plan.cap
    return max(size, 1)


@dataclass
class Resident:
    """What residency knows of one model, loaded or not."""

    name: str
    pinned: bool
    estimate: int = 0  # the manifest's file sizes: the guess before the first load
    bytes: int = 0  # measured at the last load
    rss_delta: int = 0  # the process's resident set growth across that load
    last_used: float = 0.0
    hits: int = 0  # requests since its last load (GDSF's frequency)
    clock_at: float = 0.0  # the GDSF clock at its last request or load
    load_seconds: float = 0.0  # its last load's wall time (GDSF's cost, when chosen)
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # not being evicted
    load: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.idle.set()
        self.settled.set()

    @property
    def size(self) -> int:
        return self.bytes or self.estimate


class Residency:
    """On-demand loads, the budget and eviction of one data plane.

    ``max_models`` switches to count-based LRU (at most that many on-demand models resident,
    whatever their bytes): the policy model multiplexing elsewhere uses, kept for
    ``benchmarks/residency.py`` to compare against.
    """

    def __init__(self, plane: Plane, settings: Settings, *, max_models: int | None = None):
        self.plane = plane
        self.settings = settings
        self.budget = model_budget(settings)
        self.max_models = max_models
        self.eviction = Eviction(settings.eviction)
        self.entries: dict[str, Resident] = {}
        self._room = asyncio.Lock()  # one on-demand load makes room at a time
        self._measure = asyncio.Lock()  # loads measured one at a time under a budget
        if self.budget is not None:
            metrics.MODEL_MEMORY_BUDGET.set(self.budget)

    # --- registration and accounting ----------------------------------------------------------

    def register(self, name: str, *, pinned: bool, estimate: int = 0) -> Resident:
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = Resident(name, pinned, estimate)
        return entry

    def on_demand(self, name: str) -> bool:
        entry = self.entries.get(name)
        return entry is not None and not entry.pinned

    def _resident(self, name: str) -> bool:
        served = self.plane.models.get(name)
        return served is not None and served.model is not None

    def resident_bytes(self, exclude: str = "") -> int:
        return sum(e.size for n, e in self.entries.items() if n != exclude and self._resident(n))

    def describe(self, name: str) -> dict[str, object]:
        entry = self.entries.get(name)
        if entry is None:
            return {}
        info: dict[str, object] = {
            "residency": "pinned" if entry.pinned else "on-demand",
            "bytes": entry.size if self._resident(name) else 0,
            "measured_bytes": entry.bytes,
            "rss_delta_bytes": entry.rss_delta,
        }
        if not entry.pinned:
            info["hits"] = entry.hits
            if self.eviction.policy == "gdsf" and self._resident(name):
                info["eviction_priority"] = round(self.eviction.priority(entry), 6)
        return info

    async def run_load(
        self, name: str, load: Callable[[], tuple[ModelVersion, Model]]
    ) -> tuple[ModelVersion, Model]:
        """Run ``load`` in a thread and record the bytes it left resident."""
        entry = self.register(name, pinned=True)  # loaded through the API: pinned
        lock = self._measure if self.budget is not None else contextlib.nullcontext()
        async with lock:
            before, started = rss_bytes(), time.monotonic()
            mv, model = await asyncio.to_thread(load)
            grown = rss_bytes() - before
        entry.load_seconds = time.monotonic() - started
        entry.bytes = measured_size(model, grown)
        entry.rss_delta = grown
        model.report.details["resident_bytes"] = entry.bytes
        metrics.RESIDENT_BYTES.labels(model=name).set(entry.bytes)
        metrics.MODEL_LOADS.labels(model=name).inc()
        return mv, model

    # --- admission ------------------------------------------------------------------------------

    async def admit(self, served: ServedModel, timeout_s: float | None) -> Resident | None:
        """Count a request on an on-demand model, loading it first when it is not resident."""
        entry = self.entries.get(served.name)
        if entry is None or entry.pinned:
            return None
        entry.last_used = time.monotonic()
        self.eviction.touch(entry)
        if served.state in SERVING and entry.settled.is_set():
            metrics.RESIDENCY_HITS.labels(model=entry.name).inc()
            return self._count(entry)
        if self.plane.state == "draining":
            raise ModelNotReadyError(served.not_ready_message())
        metrics.RESIDENCY_MISSES.labels(model=entry.name).inc()
        limit = self.settings.cold_load_timeout_seconds
        if timeout_s is not None and timeout_s > 0:
            limit = min(limit, timeout_s)
        started = time.monotonic()
        try:
            while True:  # another load may evict it between its load and our turn
                left = limit - (time.monotonic() - started)
                if left <= 0:
                    raise TimeoutError
                if entry.load is None or entry.load.done():
                    entry.load = asyncio.ensure_future(self._load(entry))
                await asyncio.wait_for(asyncio.shield(entry.load), left)
                current = self.plane.models[entry.name]
                if current.state in SERVING and entry.settled.is_set():
                    return self._count(entry)
        except TimeoutError:
            raise ModelNotReadyError(
                f"model '{entry.name}' is still loading after {limit:g}s (on-demand cold load); "
                "retry shortly"
            ) from None
        finally:
            wait = time.monotonic() - started
            metrics.COLD_LOAD_WAIT.labels(model=entry.name).observe(wait)

    async def ensure(self, name: str) -> None:
        """Load an on-demand model as its first request would (the repository API's load):
        room is made under the budget first, and a load already running is shared."""
        entry = self.entries[name]
        entry.last_used = time.monotonic()
        self.eviction.touch(entry)  # counts as one request: not the very next victim
        if entry.load is None or entry.load.done():
            entry.load = asyncio.ensure_future(self._load(entry))
        await asyncio.shield(entry.load)

    def _count(self, entry: Resident) -> Resident:
        entry.inflight += 1
        entry.idle.clear()
        return entry

    def release(self, entry: Resident | None) -> None:
        if entry is None:
            return
        entry.inflight -= 1
        entry.last_used = time.monotonic()
        if not entry.inflight:
            entry.idle.set()

    # --- load, room, eviction -------------------------------------------------------------------

    async def _load(self, entry: Resident) -> None:
        await entry.settled.wait()  # an eviction of this very model finishes first
        async with self._room:
            if self._resident(entry.name) and self.plane.models[entry.name].ready:
                return
            self._check_fits(entry, entry.size)
            await self._make_room(entry, entry.size)
            served = await self.plane.load(entry.name, self.plane.models[entry.name].version)
            if not served.ready:
                raise ModelNotReadyError(f"model '{entry.name}' failed to load: {served.reason}")
            try:
                self._check_fits(entry, entry.bytes)  # measured larger than the estimate?
                await self._make_room(entry, entry.bytes)
            except PodserveError:
                await self._evict(entry)
                raise
            self.eviction.loaded(entry)

    def _check_fits(self, entry: Resident, size: int) -> None:
        if self.budget is None or self.max_models is not None:
            return
        pinned = sum(e.size for n, e in self.entries.items() if e.pinned and self._resident(n))
        if size + pinned > self.budget:
            raise ModelMemoryError(
                f"model '{entry.name}' needs {_mib(size)} and does not fit the model memory "
                f"budget of {_mib(self.budget)} (PODSERVE_MODEL_MEMORY_BYTES; pinned models "
                f"hold {_mib(pinned)})"
            )

    def _fits(self, entry: Resident, size: int) -> bool:
        if self.max_models is not None:
            others = [n for n, e in self.entries.items() if not e.pinned and n != entry.name]
            return sum(1 for n in others if self._resident(n)) < self.max_models
        return self.budget is None or self.resident_bytes(entry.name) + size <= self.budget

    async def _make_room(self, entry: Resident, size: int) -> None:
        while not self._fits(entry, size):
            victim = self._victim(entry.name)
            if victim is None:
                raise ModelMemoryError(
                    f"model '{entry.name}' needs {_mib(size)}: the model memory budget of "
                    f"{_mib(self.budget or 0)} is held by pinned or loading models"
                )
            # Before it goes: requests arriving while it goes count towards its next load.
            self.eviction.evicted(victim)
            await self._evict(victim)

    def _victim(self, exclude: str) -> Resident | None:
        """The first on-demand model in the eviction order, idle ones before busy ones."""
        candidates = [
            e
            for n, e in self.entries.items()
            if not e.pinned and n != exclude and e.settled.is_set() and self._resident(n)
        ]
        if self.max_models is not None:  # count-based LRU, the benchmark's baseline
            candidates.sort(key=lambda e: (e.inflight > 0, e.last_used))
            return candidates[0] if candidates else None
        ordered = self.eviction.order(candidates)
        return ordered[0] if ordered else None

    async def _evict(self, entry: Resident) -> None:
        """Stop admitting, answer what was accepted, unload (frees it, as unload does)."""
        served = self.plane.models[entry.name]
        entry.settled.clear()
        self.plane.set_model_state(served, "evicting")
        try:
            await entry.idle.wait()
            await self.plane.unload(entry.name)
        finally:
            entry.settled.set()
        metrics.MODEL_EVICTIONS.labels(model=entry.name).inc()
        metrics.RESIDENT_BYTES.labels(model=entry.name).set(0)

    async def close(self) -> None:
        """Cancel loads still running (the server is stopping)."""
        for entry in self.entries.values():
            if entry.load is not None and not entry.load.done():
                entry.load.cancel()
                with contextlib.suppress(BaseException):
                    await entry.load


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB ({n} bytes)"
