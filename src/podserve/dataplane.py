"""The one seam every surface calls: served models, their states, metadata and inference.

HTTP, gRPC, the queue worker and pipeline stages all decode their wire format into a
:class:`~podserve.protocol.v2.InferRequest`, call :meth:`DataPlane.infer`, and encode the
answer; no surface holds inference logic. Model states move
``loading → ready → draining → stopped`` (or ``failed`` / ``unloaded``); the server is ready
only when every model it was asked to serve is ready and it is not draining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from podserve import __version__, metrics
from podserve.batching.batcher import Batcher
from podserve.errors import (
    DrainingError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    PodserveError,
)
from podserve.protocol.v2 import InferRequest, InferResponse, InferTensor, to_datatype
from podserve.runtime.memory import apply_plan, plan_memory
from podserve.runtime.model import Model
from podserve.settings import Settings
from podserve.storage.manifest import Manifest, TensorSpec
from podserve.storage.repository import ModelRepository, ModelVersion

log = logging.getLogger(__name__)

EXTENSIONS = ["binary_tensor_data", "model_repository", "statistics", "parameters"]

ModelFactory = Callable[[ModelVersion, Settings], Model]
StateListener = Callable[[str, str], None]


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


class DataPlane:
    """Loads models from a repository and answers live/ready/metadata/infer."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        *,
        factory: ModelFactory | None = None,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self._factory = factory
        self.models: dict[str, ServedModel] = {}
        self.state = "loading"
        self.accepting = True
        self.started = time.monotonic()
        self._listeners: list[StateListener] = []
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        metrics.set_state(metrics.SERVER_STATE, "loading")

    # --- lifecycle ------------------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> None:
        """``listener(model_or_'', state)``; the queue worker starts/stops consuming on it."""
        self._listeners.append(listener)

    def _set_model_state(self, served: ServedModel, state: str, reason: str = "") -> None:
        served.state, served.reason = state, reason
        metrics.set_state(metrics.MODEL_STATE, state, model=served.name)
        log.info("model %s: %s%s", served.name, state, f" ({reason})" if reason else "")
        for listener in self._listeners:
            listener(served.name, state)

    def _set_server_state(self, state: str) -> None:
        self.state = state
        metrics.set_state(metrics.SERVER_STATE, state)
        for listener in self._listeners:
            listener("", state)

    async def start(self, refs: list[tuple[str, str | None]]) -> None:
        """Load every requested model (all found models when ``refs`` is empty)."""
        if not refs:
            try:
                refs = [(name, None) for name in self.repository.models()]
            except PodserveError as exc:
                self._set_server_state("failed")
                log.error("cannot list models: %s", exc)
                self.startup_error = str(exc)
                return
            if not refs:
                self.startup_error = f"no models found under {self.repository.root}"
                log.error(self.startup_error)
        for name, version in refs:
            self.models[name] = ServedModel(name, version)
        await asyncio.gather(*(self.load(name, version) for name, version in refs))
        if self.all_ready():
            self._set_server_state("ready")
            metrics.TIME_TO_READY.set(time.monotonic() - self.started)
        elif self.state == "loading":
            self._set_server_state("failed")

    startup_error: str = ""

    async def load(self, name: str, version: str | None = None) -> ServedModel:
        """Verify, load and warm up one model; failures leave it ``failed`` with the reason."""
        served = self.models.get(name)
        if (
            served is not None
            and served.state in ("ready", "draining")
            and (version is None or version == served.version)
        ):
            return served  # already serving: loading again would orphan its batcher
        if served is None or served.state in ("unloaded", "failed", "stopped", "ready"):
            if served is not None and served.batcher is not None:
                await self.unload(name)  # a different version was asked for
            served = self.models[name] = ServedModel(name, version)
        self._set_model_state(served, "loading")
        try:
            mv, model = await asyncio.to_thread(self._load_blocking, name, version)
        except PodserveError as exc:
            self._set_model_state(served, "failed", str(exc))
            return served
        except Exception as exc:
            log.exception("loading model %s failed", name)
            self._set_model_state(served, "failed", f"{type(exc).__name__}: {exc}")
            return served
        served.version, served.manifest, served.model = mv.version, mv.manifest, model
        batching = mv.manifest.batching
        s = self.settings
        delay_ms = (
            s.max_queue_delay_ms
            if s.max_queue_delay_ms is not None
            else (batching.max_queue_delay_ms)
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
        )
        apply_plan(name, model, served.batcher, served.extra_metadata)  # memory: cap, budget
        served.batcher.start()
        served.loaded_at = time.time()
        metrics.MODEL_LOAD_SECONDS.labels(model=name, version=mv.version).set(model.report.seconds)
        metrics.MODEL_LOAD_BYTES.labels(model=name, version=mv.version).set(model.report.bytes_read)
        self._set_model_state(served, "ready")
        if self.state in ("loading", "failed") and self.all_ready() and self.accepting:
            self._set_server_state("ready")
        return served

    def _load_blocking(self, name: str, version: str | None) -> tuple[ModelVersion, Model]:
        """Off the event loop: cheap checks, read + verify, build, one warm-up inference."""
        started = time.monotonic()
        mv = self.repository.open(name, version)
        if self._factory is not None:
            model = self._factory(mv, self.settings)
        else:
            from podserve.runtime.registry import create_model

            model = create_model(mv, self.settings)
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
            raise ModelNotReadyError(
                f"model '{name}' warm-up returned no output {', '.join(missing)}"
            )
        model.report.details["memory_plan"] = plan_memory(model)  # GPU: probe → batch cap
        log.info(
            "model %s version %s loaded in %.2fs (%d bytes, verified: %s)",
            name,
            mv.version,
            time.monotonic() - started,
            model.report.bytes_read,
            model.report.verified,
        )
        return mv, model

    async def unload(self, name: str) -> None:
        served = self._get(name)
        if served.batcher is not None:
            await served.batcher.drain()
            await served.batcher.close()
        if served.model is not None:
            await asyncio.to_thread(served.model.unload)
        served.model, served.batcher = None, None
        self._set_model_state(served, "unloaded")
        if self.state == "ready":
            self._set_server_state("loading")

    def set_unavailable(self, name: str, error: PodserveError | None) -> None:
        """A loaded model whose dependency (a pipeline stage) is down is not ready, and its
        requests fail at once with ``error``; ``None`` makes it ready again. Idempotent."""
        served = self.models.get(name)
        if served is None or served.state not in ("ready", "unavailable"):
            return
        served.unavailable = error
        if error is not None and served.state == "ready":
            self._set_model_state(served, "unavailable", error.message)
        elif error is None and served.state == "unavailable":
            self._set_model_state(served, "ready")
            if self.state in ("loading", "failed") and self.all_ready() and self.accepting:
                self._set_server_state("ready")

    def begin_drain(self) -> None:
        """Ready goes false at once; requests are still accepted until ``stop_accepting``."""
        if self.state != "draining":
            self._set_server_state("draining")
            for served in self.models.values():
                if served.state == "ready":
                    self._set_model_state(served, "draining")

    def stop_accepting(self) -> None:
        self.accepting = False

    async def drain(self) -> None:
        """Wait for every accepted request to be answered."""
        while self._inflight:
            self._idle.clear()
            await self._idle.wait()
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.drain()

    async def stop(self) -> None:
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.close()
            if served.model is not None:
                await asyncio.to_thread(served.model.unload)
            served.model, served.batcher = None, None
            if served.state not in ("failed", "unloaded"):
                self._set_model_state(served, "stopped")
        self._set_server_state("stopped")

    # --- health and metadata ----------------------------------------------------------------

    def live(self) -> bool:
        return self.state != "stopped"

    def all_ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    def ready(self) -> bool:
        return self.state == "ready" and self.accepting and self.all_ready()

    def not_ready_reason(self) -> str:
        if self.state == "draining":
            return "server is draining"
        if not self.models:
            return self.startup_error or "no models are served"
        bad = [m for m in self.models.values() if not m.ready]
        if bad:
            return "; ".join(
                f"model '{m.name}' is {m.state}" + (f": {m.reason}" if m.reason else "")
                for m in bad
            )
        return f"server is {self.state}"

    def model_ready(self, name: str, version: str | None = None) -> bool:
        served = self._get(name, version)
        return served.ready and self.state != "draining"

    def server_metadata(self) -> dict[str, Any]:
        return {"name": "podserve", "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        served = self._get(name, version)
        if served.manifest is None:
            raise ModelNotReadyError(self._not_ready(served))
        m = served.manifest
        batch = [-1] if m.max_batch_size > 0 else []

        def spec(t: TensorSpec) -> dict[str, Any]:
            return {"name": t.name, "datatype": t.datatype, "shape": batch + list(t.shape)}

        meta: dict[str, Any] = {
            "name": served.name,
            "versions": [served.version],
            "platform": f"podserve_{m.runtime}",
            "inputs": [spec(t) for t in m.inputs],
            "outputs": [spec(t) for t in m.outputs],
            "parameters": {
                "max_batch_size": m.max_batch_size,
                "batch_cap": served.batcher.batch_cap if served.batcher else 0,
                "state": served.state,
            },
        }
        if served.model is not None:
            meta["parameters"]["verified"] = served.model.report.verified
            meta["parameters"]["device"] = served.model.report.device
        meta["parameters"].update(served.extra_metadata)
        return meta

    def model_stats(self, name: str | None = None) -> list[dict[str, Any]]:
        """Triton-style statistics (``/v2/models/{m}/stats``)."""
        out = []
        for served in [self._get(name)] if name else list(self.models.values()):
            st = served.batcher.stats if served.batcher else None
            out.append(
                {
                    "name": served.name,
                    "version": served.version or "",
                    "state": served.state,
                    "inference_count": st.inference_count if st else 0,
                    "execution_count": st.execution_count if st else 0,
                    "inference_stats": {
                        "success": {"count": st.success if st else 0},
                        "fail": {"count": st.fail if st else 0},
                        "queue": {"count": st.success if st else 0, "ns": st.queue_ns if st else 0},
                        "compute_infer": {
                            "count": st.execution_count if st else 0,
                            "ns": st.compute_ns if st else 0,
                        },
                    },
                    "batch_stats": [
                        {"batch_size": size, "compute_infer": {"count": count}}
                        for size, count in sorted((st.batch_sizes if st else {}).items())
                    ],
                }
            )
        return out

    def repository_index(self) -> list[dict[str, Any]]:
        names = set(self.models)
        with contextlib.suppress(PodserveError):
            names.update(self.repository.models())
        index = []
        for name in sorted(names):
            served = self.models.get(name)
            entry: dict[str, Any] = {"name": name}
            if served is not None:
                entry.update(
                    {
                        "version": served.version or "",
                        "state": served.state.upper(),
                        "reason": served.reason,
                    }
                )
            index.append(entry)
        return index

    # --- inference ------------------------------------------------------------------------

    async def infer(self, request: InferRequest, surface: str = "http") -> InferResponse:
        """Validate, batch, run and answer one request."""
        started = time.perf_counter()
        name = request.model_name
        outcome = "error"
        try:
            if not self.accepting:
                raise DrainingError("server is shutting down; send the request to another replica")
            served = self._get(name, request.model_version)
            if not served.ready or served.batcher is None or served.manifest is None:
                if served.state == "unavailable" and served.unavailable is not None:
                    err = served.unavailable  # a fresh instance: no traceback piles up
                    raise type(err)(err.message)
                raise ModelNotReadyError(self._not_ready(served))
            inputs = self._check_inputs(served.manifest, request)
            wanted = self._check_outputs(served.manifest, request)
            self._inflight += 1
            self._idle.clear()
            try:
                outputs = await served.batcher.submit(
                    inputs, priority=request.priority, timeout_s=request.timeout_s
                )
            finally:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.set()
            response = InferResponse(
                model_name=name,
                model_version=served.version or "",
                id=request.id,
                outputs=[
                    InferTensor(o, to_datatype(outputs[o]), tuple(outputs[o].shape), outputs[o])
                    for o in wanted
                ],
            )
            outcome = "success"
            return response
        finally:
            count, seconds = metrics.request_children(name, surface, outcome)
            count.inc()
            seconds.observe(time.perf_counter() - started)

    def served(self, name: str, version: str | None = None) -> ServedModel:
        """The served model, or ModelNotFoundError: surfaces check it before decoding."""
        return self._get(name, version)

    def _get(self, name: str, version: str | None = None) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ModelNotFoundError(f"unknown model '{name}'")
        if version and served.version and version != served.version:
            raise ModelNotFoundError(
                f"model '{name}' version {version} is not served (serving {served.version})"
            )
        return served

    def _not_ready(self, served: ServedModel) -> str:
        reason = f": {served.reason}" if served.reason else ""
        return f"model '{served.name}' is not ready ({served.state}{reason})"

    @staticmethod
    def _check_inputs(manifest: Manifest, request: InferRequest) -> dict[str, np.ndarray]:
        given = {t.name: t for t in request.inputs}
        if len(given) != len(request.inputs):
            raise InvalidRequestError("an input name appears twice")
        expected = {s.name for s in manifest.inputs}
        unknown = sorted(set(given) - expected)
        if unknown:
            raise InvalidRequestError(
                f"unknown input '{unknown[0]}'; model '{request.model_name}' takes "
                f"{', '.join(sorted(expected))}"
            )
        batched = manifest.max_batch_size > 0
        out: dict[str, np.ndarray] = {}
        rows: int | None = None
        for spec in manifest.inputs:
            tensor = given.get(spec.name)
            if tensor is None:
                raise InvalidRequestError(f"missing input '{spec.name}'")
            if tensor.datatype != spec.datatype:
                raise InvalidRequestError(
                    f"input '{spec.name}': datatype {tensor.datatype}, expected {spec.datatype}"
                )
            shape = tensor.shape
            dims = shape[1:] if batched else shape
            if batched and not shape:
                raise InvalidRequestError(f"input '{spec.name}': needs a batch dimension")
            if len(dims) != len(spec.shape) or any(
                e != -1 and d != e for d, e in zip(dims, spec.shape, strict=True)
            ):
                want = ([-1] if batched else []) + list(spec.shape)
                raise InvalidRequestError(
                    f"input '{spec.name}': shape {list(shape)} does not match {want}"
                )
            if batched:
                if shape[0] == 0:
                    raise InvalidRequestError(f"input '{spec.name}': empty batch")
                if rows is None:
                    rows = shape[0]
                elif shape[0] != rows:
                    raise InvalidRequestError("inputs disagree on the batch size")
            out[spec.name] = tensor.data
        return out

    @staticmethod
    def _check_outputs(manifest: Manifest, request: InferRequest) -> list[str]:
        if not request.outputs:
            return [o.name for o in manifest.outputs]
        names = [o.name for o in request.outputs]
        for n in names:
            if manifest.output(n) is None:
                raise InvalidRequestError(f"unknown output '{n}' requested")
        return names
