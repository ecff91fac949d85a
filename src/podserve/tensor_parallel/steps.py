"""The steps the ranks take together, and the leader's watch over them.

Every step starts with a header the leader broadcasts, ``[op, batch, seq, has_types]``:

* ``RUN``: the leader broadcasts the token tensors (stacked into one tensor); every rank runs
  :func:`~podserve.tensor_parallel.sharded.sharded_forward` (two all-reduces per layer, each
  an exchange of the partial sums: see :func:`reducer`);
* ``PING``: a one-element all-reduce, sent when the group has been idle for a second, so a
  dead rank is noticed without a request and no rank waits on a collective for long;
* ``STOP``: the ranks > 0 exit 0 (the leader is shutting down).

Every collective is bounded by the process group's timeout; a rank that dies closes its
sockets, so the leader's next step fails at once. The leader then names the rank (the one
whose heartbeat stopped), marks the group broken — requests fail with 503/UNAVAILABLE naming
it — and reports it, so the data plane takes the model out of readiness.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from podserve.errors import RankUnavailableError
from podserve.tensor_parallel.group import Collectives, stalled_ranks
from podserve.tensor_parallel.sharded import sharded_forward

if TYPE_CHECKING:
    from torch._C._distributed_c10d import TCPStore

    from podserve.runtime.architectures import LayeredModel

log = logging.getLogger(__name__)

RUN, PING, STOP = 1, 2, 3
REDUCE_TAG = 1
IDLE_PING_SECONDS = 1.0


def reducer(pg: Collectives, rank: int, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The all-reduce of the layers: every rank gets the sum of the K partial results.

    Each rank sends its partial tensor to every other rank, receives theirs, and adds the K of
    them in rank order, so that every rank computes the same sum bit for bit. For the small K
    of tensor parallelism this is one round of messages where gloo's ring all-reduce takes
    2(K-1) dependent steps: for K = 2 with a core per rank on loopback, about half the wall
    time per reduction of a batch-8 hidden state (measured outside benchmarks/).
    """
    peers = [r for r in range(k) if r != rank]

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if not peers:
            return t
        t = t.contiguous()
        parts = {r: torch.empty_like(t) for r in peers}
        works = [pg.send([t], r, REDUCE_TAG) for r in peers]
        works += [pg.recv([parts[r]], r, REDUCE_TAG) for r in peers]
        for work in works:
            work.wait()
        parts[rank] = t
        total = parts[0] + parts[1]
        for r in range(2, k):
            total += parts[r]
        return total

    return reduce


def _run_step(
    pg: Collectives, model: LayeredModel, rank: int, k: int, tokens: torch.Tensor
) -> torch.Tensor:
    """``tokens``: input ids, attention mask and (optionally) token types, stacked."""
    pg.broadcast([tokens]).wait()
    ids, mask, *types = tokens.unbind(0)
    with torch.inference_mode():
        reduce = reducer(pg, rank, k)
        return sharded_forward(model, reduce, k, ids, mask, types[0] if types else None)


class Driver:
    """Rank 0: runs each batch through the group, pings it when idle, notices failures."""

    def __init__(
        self,
        pg: Collectives,
        store: TCPStore,
        model: LayeredModel,
        k: int,
        on_failure: Callable[[RankUnavailableError], None],
    ) -> None:
        self.pg, self.store, self.model, self.k = pg, store, model, k
        self.broken: RankUnavailableError | None = None
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="podserve-tp-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def run(self, enc: dict[str, torch.Tensor]) -> torch.Tensor:
        """HF's last hidden state of one tokenised batch, computed by the whole group."""
        if self.broken is not None:
            raise self.broken
        types = enc.get("token_type_ids")
        parts = [enc["input_ids"], enc["attention_mask"]] + ([types] if types is not None else [])
        tokens = torch.stack([p.to(torch.int64) for p in parts])
        header = torch.tensor([RUN, *tokens.shape[1:], int(types is not None)], dtype=torch.int64)
        with self._lock:
            try:
                self.pg.broadcast([header]).wait()
                return _run_step(self.pg, self.model, 0, self.k, tokens)
            except RuntimeError as exc:
                raise self._fail(exc) from None
            finally:
                self._last = time.monotonic()

    def _ping(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # a batch is running: that is a check of its own
        try:
            self.pg.broadcast([torch.tensor([PING, 0, 0, 0])]).wait()
            self.pg.allreduce([torch.ones(1)]).wait()
        except RuntimeError as exc:
            self._fail(exc)
        finally:
            self._last = time.monotonic()
            self._lock.release()

    def _watch(self) -> None:
        while not self._stop.wait(0.2) and self.broken is None:
            if time.monotonic() - self._last >= IDLE_PING_SECONDS:
                self._ping()

    def _fail(self, exc: RuntimeError) -> RankUnavailableError:
        if self.broken is not None:
            return self.broken
        cause = _cause(exc)
        try:
            ranks = stalled_ranks(self.store, self.k, window=1.5)
        except (RuntimeError, OSError):
            ranks = []
        who = ", ".join(f"{r}/{self.k}" for r in ranks) or f"(one of 1..{self.k - 1})"
        error = RankUnavailableError(
            f"tensor-parallel rank {who} is unavailable ({cause}); the group must be "
            "restarted (a LeaderWorkerSet recreates it by itself)"
        )
        self.broken = error
        log.error("%s", error.message)
        self._on_failure(error)
        return error

    def stop(self) -> None:
        """Tell the other ranks to exit (best effort) and stop watching."""
        self._stop.set()
        if self.broken is None and self._lock.acquire(timeout=5):
            try:
                self.pg.broadcast([torch.tensor([STOP, 0, 0, 0])]).wait()
            except RuntimeError:
                pass
            finally:
                self._lock.release()
        self._thread.join(timeout=5)
        # Destroy the gloo context now, on this thread: left to interpreter shutdown, its
        # threads abort the process ("terminate called without an active exception").
        self.pg = None  # type: ignore[assignment]


def _cause(exc: BaseException) -> str:
    """gloo's message without its source location and advice: "Read error …: Connection reset"."""
    text = (str(exc).strip().splitlines() or ["collective failed"])[0]
    text = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". This is typically", 1)[0].rstrip(".")


def follow(pg: Collectives, model: LayeredModel, rank: int, k: int) -> None:
    """Ranks > 0: take part in the leader's steps until it says STOP."""
    while True:
        header = torch.zeros(4, dtype=torch.int64)
        pg.broadcast([header]).wait()
        op, b, s, has_types = (int(v) for v in header.tolist())
        if op == STOP:
            return
        if op == PING:
            pg.allreduce([torch.ones(1)]).wait()
            continue
        if op != RUN:
            raise RuntimeError(f"unknown step {op} from the leader")
        n = 3 if has_types else 2
        _run_step(pg, model, rank, k, torch.empty(n, b, s, dtype=torch.int64))
