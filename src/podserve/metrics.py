"""Prometheus metrics, defined once and recorded by the data plane and the surfaces.

Names follow Prometheus conventions (``_seconds``, ``_bytes``, ``_total``). The registry is
module-global because a process serves one data plane; tests read values through
:func:`sample`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

REQUESTS = Counter(
    "podserve_requests_total",
    "Inference requests by outcome.",
    ["model", "surface", "outcome"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram(
    "podserve_request_seconds",
    "Request latency inside the server (decode to encode).",
    ["model", "surface"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_SECONDS = Histogram(
    "podserve_queue_seconds",
    "Time a request waited in the batcher.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
COMPUTE_SECONDS = Histogram(
    "podserve_compute_seconds",
    "Time one batch spent in the model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "podserve_batch_size",
    "Rows per executed batch.",
    ["model"],
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "podserve_queue_depth", "Requests waiting in the batcher.", ["model"], registry=REGISTRY
)
MODEL_LOAD_SECONDS = Gauge(
    "podserve_model_load_seconds",
    "Seconds to read, verify and build the model.",
    ["model", "version"],
    registry=REGISTRY,
)
MODEL_LOAD_BYTES = Gauge(
    "podserve_model_load_bytes",
    "Weight bytes read at load.",
    ["model", "version"],
    registry=REGISTRY,
)
MODEL_STATE = Gauge(
    "podserve_model_state",
    "1 for the model's current state.",
    ["model", "state"],
    registry=REGISTRY,
)
SERVER_STATE = Gauge(
    "podserve_server_state", "1 for the server's current state.", ["state"], registry=REGISTRY
)
TIME_TO_READY = Gauge(
    "podserve_time_to_ready_seconds", "Process start to ready.", registry=REGISTRY
)
BATCH_CAP = Gauge(
    "podserve_batch_cap",
    "Largest batch the batcher will form (memory-limited).",
    ["model"],
    registry=REGISTRY,
)
OOM_SPLITS = Counter(
    "podserve_oom_splits_total",
    "Batches split in halves after running out of memory.",
    ["model"],
    registry=REGISTRY,
)

RESIDENT_BYTES = Gauge(
    "podserve_model_resident_bytes",
    "Measured bytes of a loaded model (0 when not resident).",
    ["model"],
    registry=REGISTRY,
)
MODEL_MEMORY_BUDGET = Gauge(
    "podserve_model_memory_budget_bytes", "Host memory budget for models.", registry=REGISTRY
)
MODEL_LOADS = Counter(
    "podserve_model_loads_total",
    "Loads of a model (start, API, on demand).",
    ["model"],
    registry=REGISTRY,
)
MODEL_EVICTIONS = Counter(
    "podserve_model_evictions_total",
    "On-demand models evicted to make room.",
    ["model"],
    registry=REGISTRY,
)
RESIDENCY_HITS = Counter(
    "podserve_residency_hits_total",
    "Requests that found their on-demand model loaded.",
    ["model"],
    registry=REGISTRY,
)
RESIDENCY_MISSES = Counter(
    "podserve_residency_misses_total",
    "Requests that waited for their on-demand model.",
    ["model"],
    registry=REGISTRY,
)
COLD_LOAD_WAIT = Histogram(
    "podserve_cold_load_wait_seconds",
    "What a request spent waiting for its on-demand model to load.",
    ["model"],
    buckets=(*_LATENCY_BUCKETS, 60.0, 120.0),
    registry=REGISTRY,
)

MEMORY_BUDGET = Gauge(
    "podserve_memory_budget_bytes",
    "Device memory budget (free at start x memory_fraction).",
    ["model"],
    registry=REGISTRY,
)
MEMORY_PER_SAMPLE = Gauge(
    "podserve_memory_per_sample_bytes",
    "Probed device memory one more sample of a batch costs.",
    ["model"],
    registry=REGISTRY,
)


class DeviceCollector:
    """Per-device memory and utilisation from NVML, read at scrape time (nothing without GPU).

    NVML answers in microseconds and needs no CUDA context; a machine without the driver is
    asked once and then never again.
    """

    def __init__(self) -> None:
        self._absent = False

    def describe(self) -> list[Any]:
        return []  # no NVML call when the collector is registered

    def collect(self) -> Iterator[Any]:
        if self._absent:
            return
        from podserve.runtime.devices import inventory

        inv = inventory()
        if inv.source == "none":
            self._absent = True
            return
        labels = ["device", "uuid", "name"]
        families = {
            "used": GaugeMetricFamily(
                "podserve_device_memory_used_bytes",
                "Device memory in use (all processes), from NVML.",
                labels=labels,
            ),
            "total": GaugeMetricFamily(
                "podserve_device_memory_total_bytes", "Device memory, from NVML.", labels=labels
            ),
            "util": GaugeMetricFamily(
                "podserve_device_utilization_ratio",
                "Share of the last sample period a kernel ran (NVML; absent for MIG instances).",
                labels=labels,
            ),
        }
        for d in inv.devices:
            values = [f"cuda:{d.index}", d.uuid, d.name]
            families["used"].add_metric(values, d.memory_used)
            families["total"].add_metric(values, d.memory_total)
            if d.utilization is not None:
                families["util"].add_metric(values, d.utilization)
        yield from families.values()


REGISTRY.register(DeviceCollector())

# --- queue worker (batch sizes are the batcher's BATCH_SIZE) --------------------------------
QUEUE_CONSUMED = Counter(
    "podserve_worker_consumed_total",
    "Messages delivered to the worker.",
    ["queue"],
    registry=REGISTRY,
)
QUEUE_REDELIVERED = Counter(
    "podserve_worker_redelivered_total",
    "Deliveries flagged redelivered by the broker.",
    ["queue"],
    registry=REGISTRY,
)
QUEUE_ACKED = Counter(
    "podserve_worker_acked_total",
    "Messages acked after their reply was confirmed.",
    ["queue"],
    registry=REGISTRY,
)
QUEUE_REQUEUED = Counter(
    "podserve_worker_requeued_total",
    "Messages handed back for a retry (retryable errors).",
    ["queue"],
    registry=REGISTRY,
)
QUEUE_DEAD_LETTERED = Counter(
    "podserve_worker_dead_lettered_total",
    "Messages sent to the dead-letter queue, by error.",
    ["queue", "error"],
    registry=REGISTRY,
)
QUEUE_INFLIGHT = Gauge(
    "podserve_worker_inflight",
    "Messages delivered and not yet acked, requeued or rejected.",
    ["queue"],
    registry=REGISTRY,
)

STATES = ("loading", "ready", "draining", "stopped", "failed", "unloading", "unloaded", "evicting")
# The ``model`` label of requests naming a model this process does not serve (any number of
# client-chosen names share it).
UNKNOWN_MODEL = "<unknown>"

_REQUEST_CHILDREN: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def request_children(model: str, surface: str, outcome: str) -> tuple[Any, Any]:
    """The labelled request counter and latency histogram, looked up once per label set:
    ``labels()`` takes a lock and builds a tuple on every call, on every request."""
    key = (model, surface, outcome)
    found = _REQUEST_CHILDREN.get(key)
    if found is None:
        found = _REQUEST_CHILDREN[key] = (
            REQUESTS.labels(model=model, surface=surface, outcome=outcome),
            REQUEST_SECONDS.labels(model=model, surface=surface),
        )
    return found


def set_state(gauge: Gauge, state: str, **labels: str) -> None:
    for s in STATES:
        gauge.labels(**labels, state=s).set(1.0 if s == state else 0.0)


def render() -> bytes:
    return generate_latest(REGISTRY)


def sample(name: str, labels: dict[str, str] | None = None) -> float | None:
    value = REGISTRY.get_sample_value(name, labels or {})
    return value
