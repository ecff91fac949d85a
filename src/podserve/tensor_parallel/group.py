"""Forming the group: a rendezvous at the leader, bounded waits that name who is missing.

Rank 0 (the leader) hosts a ``torch.distributed`` TCPStore on ``PODSERVE_TP_PORT``; the other
ranks connect to it at ``PODSERVE_TP_LEADER`` (under a LeaderWorkerSet, ``LWS_LEADER_ADDRESS``)
and the group goes through these steps, each with a deadline and an error that names the
rank it waited for::

    join/<r>      a rank connected                    (leader waits PODSERVE_TP_WAIT_SECONDS)
    loaded/<r>    its slices are read and verified    ({"bytes_read": …} or {"error": …})
    pg/…          the gloo process group is formed    (each collective: PODSERVE_TP_TIMEOUT_SECONDS)
    formed        set by the leader; a rank that connects later is told to restart the group
    beat/<r>      a counter each rank bumps every 0.25 s (the leader reads it to name a dead rank)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import timedelta
from typing import Any, Protocol, cast

import torch
from torch._C._distributed_c10d import PrefixStore, ProcessGroupGloo, TCPStore

from podserve.errors import ConfigurationError, ModelDirectoryError, RankUnavailableError

log = logging.getLogger(__name__)

BEAT_SECONDS = 0.25


def leader_address(configured: str | None) -> str:
    """Where the other ranks find rank 0: the setting, else the LeaderWorkerSet's variable."""
    address = configured or os.environ.get("LWS_LEADER_ADDRESS")
    if not address:
        raise ConfigurationError(
            "ranks 1..K-1 need the leader's address: set PODSERVE_TP_LEADER (a host name, e.g. "
            "a headless Service) or run under a LeaderWorkerSet, which sets LWS_LEADER_ADDRESS"
        )
    return address


def open_store(rank: int, host: str, port: int, wait: float, timeout: float) -> TCPStore:
    """The leader's store (rank 0 serves it) or a connection to it (bounded by ``wait``)."""
    try:
        store = TCPStore(
            "127.0.0.1" if rank == 0 else host,
            port,
            None,
            rank == 0,
            timeout=timedelta(seconds=wait if rank else timeout),
            wait_for_workers=False,
        )
    except (RuntimeError, OSError) as exc:
        if rank == 0:
            raise ConfigurationError(
                f"tensor-parallel rank 0 cannot listen on port {port}: {exc}"
            ) from None
        raise RankUnavailableError(
            f"tensor-parallel rank {rank} cannot reach the leader (rank 0) at {host}:{port} "
            f"within {wait:g} s: {_first_line(exc)}"
        ) from None
    store.set_timeout(timedelta(seconds=timeout))
    return store


def join(store: TCPStore, rank: int, k: int) -> None:
    """A rank > 0 announces itself; refused when the group already formed or the rank is taken."""
    if store.check(["formed"]):
        raise RankUnavailableError(
            f"tensor-parallel rank {rank}/{k}: the leader's group has already formed and a "
            "rank cannot rejoin it; restart the whole group (a LeaderWorkerSet does so itself)"
        )
    if store.add(f"join/{rank}", 1) > 1:
        raise ConfigurationError(f"tensor-parallel rank {rank}/{k} joined twice: two ranks {rank}?")


def wait_for(store: TCPStore, k: int, step: str, deadline: float, where: str) -> None:
    """Until every rank 1..K-1 has set ``<step>/<rank>``; else name the ranks still missing."""
    keys = [f"{step}/{r}" for r in range(1, k)]
    while True:
        missing = [r for r, key in zip(range(1, k), keys, strict=True) if not store.check([key])]
        if not missing:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{r}/{k}" for r in missing)
            verb = "did not join the group" if step == "join" else "did not finish loading"
            raise RankUnavailableError(f"tensor-parallel rank {names} {verb} at {where} in time")
        time.sleep(0.1)


def report_loaded(store: TCPStore, rank: int, result: dict[str, Any]) -> None:
    store.set(f"loaded/{rank}", json.dumps(result))


def loaded_reports(store: TCPStore, k: int) -> dict[int, dict[str, Any]]:
    """Each rank's load report; a rank that failed raises with its own message."""
    out: dict[int, dict[str, Any]] = {}
    for r in range(1, k):
        report: dict[str, Any] = json.loads(store.get(f"loaded/{r}"))
        if "error" in report:
            raise ModelDirectoryError(
                f"tensor-parallel rank {r}/{k} failed to load: {report['error']}"
            )
        out[r] = report
    return out


class Work(Protocol):
    def wait(self) -> bool: ...


class Collectives(Protocol):
    """What the steps use of a process group (gloo or NCCL offer them all)."""

    def broadcast(self, tensors: list[torch.Tensor]) -> Work: ...

    def allreduce(self, tensors: list[torch.Tensor]) -> Work: ...

    def send(self, tensors: list[torch.Tensor], dst: int, tag: int) -> Work: ...

    def recv(self, tensors: list[torch.Tensor], src: int, tag: int) -> Work: ...


def form(store: TCPStore, rank: int, k: int, timeout: float) -> Collectives:
    """The gloo process group (every collective on it is bounded by ``timeout``)."""
    pg = ProcessGroupGloo(PrefixStore("pg", store), rank, k, timedelta(seconds=timeout))
    return cast("Collectives", pg)


class Beats:
    """Rank > 0: bump ``beat/<rank>`` on a connection of its own until stopped.

    ``on_lost`` runs (once) when the leader's store stops answering: the leader is gone.
    """

    def __init__(self, host: str, port: int, rank: int, on_lost: Any) -> None:
        self._stop = threading.Event()
        self._store = TCPStore(host, port, None, False, timeout=timedelta(seconds=5))
        self._rank, self._on_lost = rank, on_lost
        self._thread = threading.Thread(target=self._run, name="podserve-tp-beat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(BEAT_SECONDS):
            try:
                self._store.add(f"beat/{self._rank}", 1)
            except (RuntimeError, OSError) as exc:
                if not self._stop.is_set():
                    self._on_lost(exc)
                return

    def stop(self) -> None:
        self._stop.set()


def stalled_ranks(store: TCPStore, k: int, window: float) -> list[int]:
    """Ranks whose heartbeat did not move during ``window`` seconds (dead or frozen)."""
    before = {r: store.add(f"beat/{r}", 0) for r in range(1, k)}
    deadline = time.monotonic() + window
    moving: set[int] = set()
    while time.monotonic() < deadline and len(moving) < k - 1:
        time.sleep(BEAT_SECONDS)
        moving |= {r for r in before if r not in moving and store.add(f"beat/{r}", 0) > before[r]}
    return [r for r in before if r not in moving]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
