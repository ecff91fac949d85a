"""Which on-demand model residency evicts first: GreedyDual-Size-Frequency or LRU.

``gdsf`` (the default, ``PODSERVE_EVICTION``) gives every resident on-demand model a priority
``clock + hits x cost / size`` (size in MiB, ``hits`` its requests since it was last loaded,
``clock`` as it was at its last request or load) and evicts the lowest first; each eviction
raises the clock to the priority it evicted, so a model that stops being asked for ages out
while newer ones start above it. Per byte held, a small model that is asked for often ranks
above a large one asked for as often, so the budget holds many small hot models rather than
one large lukewarm one: fewer loads. ``cost`` is 1 (minimises the number of loads; the
default) or ``load_seconds``, the model's measured load time (minimises the total time spent
waiting on cold loads); ``benchmarks/residency.py`` measured both.

``lru`` evicts the least recently used. Either way a model with requests in flight goes after
every idle one, and ties go to the least recently used.
"""

from __future__ import annotations

from typing import Protocol, TypeVar


class Resident(Protocol):
    """What the order reads and keeps of a model (:class:`~podserve.dataplane.residency.
    Resident`)."""

    hits: int
    clock_at: float
    load_seconds: float
    inflight: int
    last_used: float

    @property
    def size(self) -> int: ...


R = TypeVar("R", bound=Resident)
MIB = float(2**20)
POLICIES = ("gdsf", "lru")
COSTS = ("one", "load_seconds")


class Eviction:
    """The eviction order of one residency, and the GDSF clock."""

    def __init__(self, policy: str = "gdsf", cost: str = "one") -> None:
        if policy not in POLICIES or cost not in COSTS:
            raise ValueError(f"eviction policy {policy!r} / cost {cost!r} is not known")
        self.policy, self.cost = policy, cost
        self.clock = 0.0

    def touch(self, entry: Resident) -> None:
        """A request for ``entry`` (a hit, or the miss that loads it)."""
        entry.hits += 1
        entry.clock_at = self.clock

    def loaded(self, entry: Resident) -> None:
        """``entry`` was loaded and its room made: it starts from the clock as it is now."""
        entry.clock_at = self.clock

    def evicted(self, entry: Resident) -> None:
        if self.policy == "gdsf":
            self.clock = max(self.clock, self.priority(entry))
        entry.hits = 0

    def priority(self, entry: Resident) -> float:
        """GDSF's ``clock + hits x cost / size``; higher stays longer."""
        cost = (entry.load_seconds or 1.0) if self.cost == "load_seconds" else 1.0
        return entry.clock_at + entry.hits * cost / max(entry.size / MIB, 1e-9)

    def order(self, candidates: list[R]) -> list[R]:
        """``candidates`` in eviction order: idle before busy, then by policy, then LRU."""
        if self.policy == "lru":
            return sorted(candidates, key=lambda e: (e.inflight > 0, e.last_used))
        return sorted(candidates, key=lambda e: (e.inflight > 0, self.priority(e), e.last_used))
