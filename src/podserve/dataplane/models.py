"""A served model: its state, and how it is loaded (verify, build, warm up, batcher).

States move ``loading → ready → draining → stopped`` (or ``failed`` / ``unloaded``, and
``unavailable`` while a pipeline stage it depends on is down); :class:`~podserve.dataplane.
DataPlane` drives the transitions, this module does the work of one load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from podserve import metrics
from podserve.batching.batcher import Batcher
from podserve.batching.policy import measure_curve
from podserve.errors import ModelNotReadyError, PodserveError
from podserve.runtime.memory import MemoryPlan, plan_memory
from podserve.runtime.model import Model
from podserve.settings import Settings
from podserve.storage.manifest import Manifest
from podserve.storage.repository import ModelRepository, ModelVersion

log = logging.getLogger(__name__)

ModelFactory = Callable[[ModelVersion, Settings], Model]


@dataclass
class ServedModel:
    """A model this process was asked to serve, whatever its state."""

    name: str
    version: str | None
    state: str = "loading"
    reason: str = ""
    manifest: Manifest | None = None
    model: Model | None = None
    batcher: Batcher | None = None
    loaded_at: float = 0.0
    extra_metadata: dict[str, Any] = field(default_factory=dict)
    unavailable: PodserveError | None = None  # why a loaded model is "unavailable"

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def not_ready_message(self) -> str:
        reason = f": {self.reason}" if self.reason else ""
        return f"model '{self.name}' is not ready ({self.state}{reason})"


def load_blocking(
    repository: ModelRepository,
    settings: Settings,
    factory: ModelFactory | None,
    name: str,
    version: str | None,
) -> tuple[ModelVersion, Model]:
    """Off the event loop: cheap checks, read + verify, build, one warm-up inference."""
    started = time.monotonic()
    mv = repository.open(name, version)
    if factory is not None:
        model = factory(mv, settings)
    else:
        from podserve.runtime.registry import create_model

        model = create_model(mv, settings)
    model.load()
    if not model.report.seconds:
        model.report.seconds = time.monotonic() - started
    warm = model.warmup_inputs()
    try:
        outputs = model.infer(warm)
    except Exception as exc:
        model.unload()
        raise ModelNotReadyError(f"model '{name}' failed its warm-up inference: {exc}") from exc
    missing = [o.name for o in mv.manifest.outputs if o.name not in outputs]
    if missing:
        model.unload()
        raise ModelNotReadyError(f"model '{name}' warm-up returned no output {', '.join(missing)}")
    plan = model.report.details["memory_plan"] = plan_memory(model)  # GPU: batch cap
    if adaptive(mv.manifest, settings) and plan.cap > 1:  # the curve the policy decides on
        try:
            model.report.details["batch_curve"] = measure_curve(model.infer, warm, plan.cap)
        except Exception as exc:  # the warm-up batch passed: serve, learn the curve live
            log.warning("model %s: batch sizes not timed at warm-up: %s", name, exc)
    log.info(
        "model %s version %s loaded in %.2fs (%d bytes, verified: %s)",
        name,
        mv.version,
        time.monotonic() - started,
        model.report.bytes_read,
        model.report.verified,
    )
    return mv, model


def adaptive(manifest: Manifest, settings: Settings) -> bool:
    """Whether the model's batcher follows the adaptive policy with a queue delay to spend."""
    delay = settings.max_queue_delay_ms
    if delay is None:
        delay = manifest.batching.max_queue_delay_ms
    return (settings.batching_policy or manifest.batching.policy) == "adaptive" and delay > 0


def start_batcher(served: ServedModel, mv: ModelVersion, model: Model, settings: Settings) -> None:
    """Give a loaded model its batcher (manifest batching, capped by settings and memory)."""
    name = served.name
    served.version, served.manifest, served.model = mv.version, mv.manifest, model
    batching = mv.manifest.batching
    s = settings
    delay_ms = (
        s.max_queue_delay_ms if s.max_queue_delay_ms is not None else batching.max_queue_delay_ms
    )
    max_batch = mv.manifest.max_batch_size
    if s.max_batch_size is not None and max_batch > 0:
        max_batch = min(max_batch, s.max_batch_size)
    served.batcher = Batcher(
        name,
        model.infer,
        max_batch_size=max_batch,
        max_queue_delay_s=delay_ms / 1000.0,
        preferred_batch_sizes=batching.preferred_batch_sizes,
        max_queue_size=batching.max_queue_size or s.max_queue_size,
        inline_below_s=s.inline_infer_us / 1e6,
        policy=s.batching_policy or batching.policy,
        curve=model.report.details.get("batch_curve"),
        instances=model.instances(),
    )
    apply_plan(name, model, served.batcher, served.extra_metadata)  # memory: cap, budget
    served.batcher.start()
    served.loaded_at = time.time()
    metrics.MODEL_LOAD_SECONDS.labels(model=name, version=mv.version).set(model.report.seconds)
    metrics.MODEL_LOAD_BYTES.labels(model=name, version=mv.version).set(model.report.bytes_read)


def apply_plan(name: str, model: Model, batcher: Batcher, extra: dict[str, Any]) -> None:
    """Hand the memory plan made at load to the model's batcher, metadata and metrics."""
    plan = model.report.details.get("memory_plan")
    if not isinstance(plan, MemoryPlan):
        return
    if batcher.batched:
        batcher.lower_cap(plan.cap)
    extra.update(plan.metadata())
    if plan.budget is not None:
        metrics.MEMORY_BUDGET.labels(model=name).set(plan.budget)
    if plan.per_sample is not None:
        metrics.MEMORY_PER_SAMPLE.labels(model=name).set(plan.per_sample)
