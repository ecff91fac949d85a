"""Ranks 1..K-1 and the ``--tp-rank`` entry point.

``podserve serve ROOT --tp-rank R/K`` with the manifest in ``PODSERVE_TENSOR_PARALLEL`` (a
file) or ``PODSERVE_TENSOR_PARALLEL_MANIFEST`` (its YAML): rank 0 serves (see
:mod:`podserve.tensor_parallel.leader`); any other rank connects to the leader, reads and
verifies only its slices, reports, joins the process group and then follows the leader's
steps until told to stop. It serves no HTTP: the leader is the only pod users and probes see.

A rank > 0 exits non-zero when anything goes wrong — the leader unreachable, its slices
damaged (the error names the file and tensor), a collective failing or timing out, the leader
gone — so that its pod restarts, and a LeaderWorkerSet (``RecreateGroupOnPodRestart``)
recreates the whole group. ``R`` may be ``lws``: ``LWS_WORKER_INDEX/LWS_GROUP_SIZE``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import TYPE_CHECKING

from podserve.errors import ConfigurationError, PodserveError, RankUnavailableError
from podserve.runtime.model import LoadReport
from podserve.storage.repository import ModelRepository
from podserve.tensor_parallel import group
from podserve.tensor_parallel.manifest import (
    TensorParallel,
    load_tensor_parallel,
    parse_rank,
    parse_tensor_parallel,
)

if TYPE_CHECKING:
    from podserve.settings import Settings

log = logging.getLogger(__name__)


def tensor_parallel_plan(settings: Settings) -> TensorParallel:
    if settings.tensor_parallel is not None:
        return load_tensor_parallel(settings.tensor_parallel)
    if settings.tensor_parallel_manifest:
        return parse_tensor_parallel(settings.tensor_parallel_manifest)
    raise ConfigurationError(
        "--tp-rank needs the tensor-parallel manifest: set PODSERVE_TENSOR_PARALLEL to the file "
        "written by `podserve split --tp K` (or PODSERVE_TENSOR_PARALLEL_MANIFEST to its contents)"
    )


def rank_of(value: str, plan: TensorParallel) -> int:
    if value.strip().lower() == "lws":
        index, size = os.environ.get("LWS_WORKER_INDEX"), os.environ.get("LWS_GROUP_SIZE")
        if index is None or size is None:
            raise ConfigurationError(
                "--tp-rank lws: LWS_WORKER_INDEX and LWS_GROUP_SIZE are not set (not a "
                "LeaderWorkerSet pod); give R/K"
            )
        value = f"{index}/{size}"
    return parse_rank(value, plan.k)[0]


def run_tensor_parallel(settings: Settings) -> int:
    """``podserve serve --tp-rank R/K``: rank 0 serves until SIGTERM; others follow it."""
    plan = tensor_parallel_plan(settings)
    rank = rank_of(settings.tp_rank or "", plan)
    if rank == 0:
        from podserve.tensor_parallel.leader import serve_leader

        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
            return asyncio.run(serve_leader(settings, plan))
        return uvloop.run(serve_leader(settings, plan))
    try:
        run_worker(settings, plan, rank)
    except RuntimeError as exc:  # a collective failed or timed out: the group is broken
        log.error("tensor-parallel rank %d/%d: the group broke: %s", rank, plan.k, exc)
        return 1
    return 0


def run_worker(settings: Settings, plan: TensorParallel, rank: int) -> None:
    """Rank ``rank`` > 0 from connection to STOP; raises on any failure."""
    from podserve.tensor_parallel.steps import follow
    from podserve.tensor_parallel.weights import load_shards

    s, k = settings, plan.k
    host = group.leader_address(s.tp_leader)
    store = group.open_store(rank, host, s.tp_port, s.tp_wait_seconds, s.tp_timeout_seconds)
    group.join(store, rank, k)

    def leader_lost(exc: BaseException) -> None:
        log.error("tensor-parallel rank %d/%d: the leader at %s:%d is gone (%s); exiting",
                  rank, k, host, s.tp_port, exc)  # fmt: skip
        os._exit(RankUnavailableError.exit_code)

    beats = group.Beats(host, s.tp_port, rank, leader_lost)
    started = time.perf_counter()
    report = LoadReport()
    try:
        version = ModelRepository(s.model_root).open(plan.model, plan.version)
        model = load_shards(version, s, plan, rank, report)
    except PodserveError as exc:
        group.report_loaded(store, rank, {"error": exc.message})
        raise
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    group.report_loaded(
        store,
        rank,
        {
            "bytes_read": report.bytes_read,
            "weight_bytes": plan.ranks[rank].bytes,
            "seconds": round(time.perf_counter() - started, 3),
            "max_rss": rss,
        },
    )
    seconds = time.perf_counter() - started
    log.info("tensor-parallel rank %d/%d: read %d bytes (verified: %s) in %.2fs; joining",
             rank, k, report.bytes_read, report.verified, seconds)  # fmt: skip
    pg = group.form(store, rank, k, s.tp_timeout_seconds)
    try:
        follow(pg, model, rank, k)
    finally:
        beats.stop()
    log.info("tensor-parallel rank %d/%d: the leader said stop", rank, k)
