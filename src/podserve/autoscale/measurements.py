"""What one replica can do, from podserve's own benchmark results or from explicit values.

The planner needs two measured facts about the model: how many requests per second one replica
drains at each batch size, and how long a new pod takes before it consumes. Both come from the
JSON files that ``benchmarks/`` writes. The readers look for *records* (JSON objects, at any depth
of the file) with these fields, so a results file may hold other data beside them:

* throughput (``benchmarks/results/queue.json`` or ``serve.json``): a record with a number in
  ``throughput_rps`` (or ``requests_per_s``, ``messages_per_s``, ``rps``) and, optionally, its
  batch size in ``batch_size`` or ``max_batch_size`` and ``model`` (str); or a
  ``by_batch_size`` mapping ``{"8": req/s, …}`` (what ``benchmarks/queue_worker.py`` sweeps).
  The best value per batch size is kept. A rate with no batch size (a file's headline
  ``throughput_rps``) is used, as the rate at any batch, only when nothing names a batch size.
* cold start (``benchmarks/results/cold_start.json``): ``time_to_ready_s``, ``ready_seconds`` or
  ``cold_start_seconds`` (process start to ready: weights loaded, warmed up). Without a model
  the file's top-level value is its headline and wins; otherwise records of that model count
  (``model``, optionally ``cache``: ``"cold"``/``"warm"``), cold-cache records first, then
  the slowest.

A record's ``model`` matches ``--model NAME`` when it is NAME or starts with ``"NAME "`` (as in
``"minilm (all-MiniLM-L6-v2, …)"``); a record without one matches every model.

Scheduling and image pull are not measured by podserve; they are added from the CLI.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podserve.errors import ConfigurationError

THROUGHPUT_FIELDS = ("throughput_rps", "requests_per_s", "messages_per_s", "rps")
BATCH_FIELDS = ("batch_size", "max_batch_size")
BY_BATCH_FIELD = "by_batch_size"
READY_FIELDS = ("time_to_ready_s", "ready_seconds", "cold_start_seconds")


@dataclass(frozen=True)
class ReplicaModel:
    """One replica: batched throughput (req/s by batch size) and the delay before it consumes."""

    throughput: dict[int, float]
    ready_s: float  # process start to consuming (weights loaded, warmed up)
    schedule_s: float = 0.0
    image_pull_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.throughput or any(b < 1 or r <= 0 for b, r in self.throughput.items()):
            raise ConfigurationError("throughput needs batch sizes >= 1 with rates > 0 req/s")
        if min(self.ready_s, self.schedule_s, self.image_pull_s) < 0:
            raise ConfigurationError("start-up delays must be >= 0 s")

    @property
    def startup_s(self) -> float:
        """Pod created to consuming: scheduling + image pull + weight load and warm-up."""
        return self.schedule_s + self.image_pull_s + self.ready_s

    @property
    def max_batch(self) -> int:
        return max(self.throughput)

    def rate_table(self) -> list[float]:
        """req/s at each integer batch size 0..max_batch, linear between measured sizes.

        Below the smallest measured size the rate is taken as flat (a replica is not assumed
        faster on small batches than measured); index 0 repeats index 1.
        """
        sizes = sorted(self.throughput)
        table = [0.0] * (self.max_batch + 1)
        for b in range(1, self.max_batch + 1):
            if b <= sizes[0]:
                table[b] = self.throughput[sizes[0]]
                continue
            hi = next(s for s in sizes if s >= b)
            lo = max(s for s in sizes if s <= b)
            if hi == lo:
                table[b] = self.throughput[b]
            else:
                w = (b - lo) / (hi - lo)
                table[b] = self.throughput[lo] * (1 - w) + self.throughput[hi] * w
        table[0] = table[1]
        return table


def parse_throughput(text: str) -> dict[int, float]:
    """``"1:20,8:90,32:150"`` (batch:req/s) or a single ``"150"`` (any batch)."""
    out: dict[int, float] = {}
    try:
        for part in text.split(","):
            if ":" in part:
                batch, rate = part.split(":", 1)
                out[int(batch)] = float(rate)
            else:
                out[1] = float(part)
    except ValueError as exc:
        raise ConfigurationError(f"bad --throughput {text!r}: use BATCH:RPS[,BATCH:RPS…]") from exc
    return out


def _records(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _records(value)
    elif isinstance(node, list):
        for value in node:
            yield from _records(value)


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read benchmark results {path}: {exc}") from exc


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _matches(record: dict[str, Any], model: str | None) -> bool:
    name = record.get("model")
    if model is None or name is None:
        return True
    return isinstance(name, str) and (name == model or name.startswith(model + " "))


def _batch(value: Any) -> int | None:
    """A batch size >= 1 from an int or a JSON key like ``"8"``; None otherwise."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def load_throughput(path: Path, model: str | None = None) -> dict[int, float]:
    """Best measured req/s per batch size for ``model`` (see the module docstring)."""
    best: dict[int, float] = {}
    anybatch: list[float] = []

    def keep(batch: int | None, rate: Any) -> None:
        if batch is not None and _is_number(rate) and rate > 0:
            best[batch] = max(best.get(batch, 0.0), float(rate))

    for record in _records(_load(path)):
        if not _matches(record, model):
            continue
        by_batch = record.get(BY_BATCH_FIELD)
        if isinstance(by_batch, dict):
            for key, rate in by_batch.items():
                keep(_batch(key), rate)
        rate = next((record[f] for f in THROUGHPUT_FIELDS if _is_number(record.get(f))), None)
        if rate is None or rate <= 0:
            continue
        field = next((f for f in BATCH_FIELDS if f in record), None)
        if field is None:
            anybatch.append(float(rate))
        else:
            keep(_batch(record[field]), rate)
    if best:
        return best
    if anybatch:
        return {1: max(anybatch)}
    raise ConfigurationError(
        f"{path}: no record with {'/'.join(THROUGHPUT_FIELDS)} or {BY_BATCH_FIELD}"
        + (f" for model {model!r}" if model else "")
        + "; pass --throughput BATCH:RPS,… instead"
    )


def _ready_value(record: dict[str, Any]) -> float | None:
    value = next((record[f] for f in READY_FIELDS if _is_number(record.get(f))), None)
    return None if value is None or value < 0 else float(value)


def load_ready_s(path: Path, model: str | None = None) -> float:
    """Measured time to ready for ``model``: see the module docstring for which record wins."""
    data = _load(path)
    if model is None and isinstance(data, dict) and (headline := _ready_value(data)) is not None:
        return headline
    found: list[tuple[bool, float]] = []
    for record in _records(data):
        value = _ready_value(record)
        if value is not None and _matches(record, model):
            found.append((record.get("cache") == "cold", value))
    if not found:
        raise ConfigurationError(
            f"{path}: no record with {'/'.join(READY_FIELDS)}"
            + (f" for model {model!r}" if model else "")
            + "; pass --ready-s SECONDS instead"
        )
    return max(found)[1]
