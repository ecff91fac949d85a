"""The data plane: the one seam every surface calls.

HTTP, gRPC, the queue worker and pipeline stages all decode their wire format into a
:class:`~podserve.v2.InferRequest`, call :meth:`DataPlane.infer`, and encode the
answer; no surface holds inference logic. Model states move
``loading → ready → draining → stopped`` (or ``failed``, or ``unloading → unloaded``); the
server is ready only when every model it was asked to serve is ready and it is not draining.
A draining model still serves (the SIGTERM grace window) until :meth:`DataPlane.stop_accepting`;
an unloading one admits nothing new and finishes what it accepted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from podserve import metrics
from podserve.dataplane import metadata
from podserve.dataplane.models import ModelFactory, ServedModel, load_blocking, start_batcher
from podserve.dataplane.residency import Residency
from podserve.dataplane.validation import check_inputs, check_outputs
from podserve.errors import DrainingError, ModelNotFoundError, ModelNotReadyError, PodserveError
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.v2 import InferRequest, InferResponse, InferTensor, to_datatype

log = logging.getLogger(__name__)

SERVING = ("ready", "draining")  # model states that take requests while the server accepts
StateListener = Callable[[str, str], None]


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
        self._model_locks: dict[str, asyncio.Lock] = {}  # one load/unload of a model at a time
        self.residency = Residency(self, settings)
        metrics.set_state(metrics.SERVER_STATE, "loading")

    # --- lifecycle ------------------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> None:
        """``listener(model_or_'', state)``; the queue worker starts/stops consuming on it."""
        self._listeners.append(listener)

    def set_model_state(self, served: ServedModel, state: str, reason: str = "") -> None:
        served.state, served.reason = state, reason
        metrics.set_state(metrics.MODEL_STATE, state, model=served.name)
        # A model that failed to load is an error a log-based alert must see.
        level = logging.ERROR if state == "failed" else logging.INFO
        log.log(level, "model %s: %s%s", served.name, state, f" ({reason})" if reason else "")
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
        refs += [(n, None) for n in self.settings.on_demand_models if n not in dict(refs)]
        pinned = []
        for name, version in refs:
            self.models[name] = ServedModel(name, version)
            estimate = await asyncio.to_thread(self._on_demand_estimate, name, version)
            if estimate is None:
                pinned.append((name, version))
                continue
            self.residency.register(name, pinned=False, estimate=estimate)
            self.set_model_state(self.models[name], "unloaded", "on demand: loads on first request")
        await asyncio.gather(*(self.load(name, version) for name, version in pinned))
        if self.all_ready():
            self._set_server_state("ready")
            metrics.TIME_TO_READY.set(time.monotonic() - self.started)
        elif self.state == "loading":
            self._set_server_state("failed")

    startup_error: str = ""

    def _lock(self, name: str) -> asyncio.Lock:
        # Callers resolved ``name`` in the repository (or the settings named it): bounded.
        return self._model_locks.setdefault(name, asyncio.Lock())

    def _on_demand_estimate(self, name: str, version: str | None) -> int | None:
        """The manifest's file sizes when ``name`` is served on demand, else None (pinned)."""
        try:
            mv = self.repository.open(name, version)
        except PodserveError:
            return 0 if name in self.settings.on_demand_models else None  # load reports it
        if name in self.settings.on_demand_models or mv.manifest.residency == "on-demand":
            return sum(f.size for f in mv.manifest.files.values())
        return None

    async def load(self, name: str, version: str | None = None) -> ServedModel:
        """Verify, load and warm up one model; failures leave it ``failed`` with the reason.

        A second call while one runs waits for it and returns the same model."""
        async with self._lock(name):
            return await self._load(name, version)

    async def _load(self, name: str, version: str | None) -> ServedModel:
        served = self.models.get(name)
        if (
            served is not None
            and served.state in ("ready", "draining")
            and (version is None or version == served.version)
        ):
            return served  # already serving: loading again would orphan its batcher
        if served is None or served.state in ("unloaded", "failed", "stopped", "ready"):
            if served is not None and served.batcher is not None:
                await self._unload(served)  # a different version was asked for
            served = self.models[name] = ServedModel(name, version)
        self.set_model_state(served, "loading")
        try:
            mv, model = await self.residency.run_load(
                name,
                lambda: load_blocking(self.repository, self.settings, self._factory, name, version),
            )
        except PodserveError as exc:
            self.set_model_state(served, "failed", str(exc))
            return served
        except Exception as exc:
            log.exception("loading model %s failed", name)
            self.set_model_state(served, "failed", f"{type(exc).__name__}: {exc}")
            return served
        start_batcher(served, mv, model, self.settings)
        self.set_model_state(served, "ready")
        if self.state in ("loading", "failed") and self.all_ready() and self.accepting:
            self._set_server_state("ready")
        return served

    async def api_load(self, name: str, version: str | None = None) -> ServedModel:
        """The repository API's load: an on-demand model makes room under the budget first,
        as its first request would (503 when it cannot fit); any other model as :meth:`load`."""
        if name in self.models and self.residency.on_demand(name):
            await self.residency.ensure(name)
            return self.models[name]
        return await self.load(name, version)

    async def unload(self, name: str) -> None:
        """Stop admitting requests for the model, finish those accepted, then unload it."""
        served = self._get(name)
        async with self._lock(name):
            await self._unload(served)

    async def _unload(self, served: ServedModel) -> None:
        if served.state in SERVING or served.state == "unavailable":
            self.set_model_state(served, "unloading")  # new requests: 503 from here on
        if served.batcher is not None:
            await served.batcher.drain()
            await served.batcher.close()
        if served.model is not None:
            await asyncio.to_thread(served.model.unload)
        served.model, served.batcher = None, None
        self.set_model_state(served, "unloaded")
        if self.state == "ready" and not self.all_ready():  # on-demand models do not gate it
            self._set_server_state("loading")

    def set_unavailable(self, name: str, error: PodserveError | None) -> None:
        """A loaded model whose dependency (a pipeline stage) is down is not ready, and its
        requests fail at once with ``error``; ``None`` makes it ready again. Idempotent."""
        served = self.models.get(name)
        if served is None or served.state not in ("ready", "unavailable"):
            return
        served.unavailable = error
        if error is not None and served.state == "ready":
            self.set_model_state(served, "unavailable", error.message)
        elif error is None and served.state == "unavailable":
            self.set_model_state(served, "ready")
            if self.state in ("loading", "failed") and self.all_ready() and self.accepting:
                self._set_server_state("ready")

    def begin_drain(self) -> None:
        """Ready goes false at once; requests are still accepted until ``stop_accepting``."""
        if self.state != "draining":
            self._set_server_state("draining")
            for served in self.models.values():
                if served.state == "ready":
                    self.set_model_state(served, "draining")

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
        await self.residency.close()
        for served in self.models.values():
            if served.batcher is not None:
                await served.batcher.close()
            if served.model is not None:
                await asyncio.to_thread(served.model.unload)
            served.model, served.batcher = None, None
            if served.state not in ("failed", "unloaded"):
                self.set_model_state(served, "stopped")
        self._set_server_state("stopped")

    # --- health and metadata ----------------------------------------------------------------

    def live(self) -> bool:
        return self.state != "stopped"

    def all_ready(self) -> bool:
        """Every pinned model is ready: on-demand ones load when asked and never gate it."""
        return bool(self.models) and all(m.ready for m in self._pinned())

    def _pinned(self) -> list[ServedModel]:
        return [m for m in self.models.values() if not self.residency.on_demand(m.name)]

    def ready(self) -> bool:
        return self.state == "ready" and self.accepting and self.all_ready()

    def not_ready_reason(self) -> str:
        if self.state == "draining":
            return "server is draining"
        if not self.models:
            return self.startup_error or "no models are served"
        bad = [m for m in self._pinned() if not m.ready]
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
        return metadata.server_metadata()

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return metadata.model_metadata(self._get(name, version))

    def model_stats(self, name: str | None = None) -> list[dict[str, Any]]:
        """Triton-style statistics (``/v2/models/{m}/stats``)."""
        return metadata.model_stats([self._get(name)] if name else list(self.models.values()))

    def repository_index(self) -> list[dict[str, Any]]:
        """Each model's state, and its residency and resident bytes."""
        entries = metadata.repository_index(self.models, self.repository)
        for entry in entries:
            entry.update(self.residency.describe(entry["name"]))
        return entries

    # --- inference ------------------------------------------------------------------------

    async def infer(self, request: InferRequest, surface: str = "http") -> InferResponse:
        """Validate, batch, run and answer one request."""
        started = time.perf_counter()
        name = request.model_name
        # A client-chosen name becomes a metric label only when it is a served model: every
        # label set lives as long as the process.
        label = name if name in self.models else metrics.UNKNOWN_MODEL
        outcome = "error"
        try:
            if not self.accepting:
                raise DrainingError("server is shutting down; send the request to another replica")
            served = self._get(name, request.model_version)
            self._inflight += 1  # a request waiting for its on-demand model is accepted too
            self._idle.clear()
            try:
                lease = await self.residency.admit(served, request.timeout_s)  # may load
                try:
                    response = await self._run(self._get(name, request.model_version), request)
                finally:
                    self.residency.release(lease)
            finally:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.set()
            outcome = "success"
            return response
        finally:
            count, seconds = metrics.request_children(label, surface, outcome)
            count.inc()
            seconds.observe(time.perf_counter() - started)

    async def _run(self, served: ServedModel, request: InferRequest) -> InferResponse:
        """Validate against the manifest, submit to the batcher, pick the outputs asked for."""
        if served.state not in SERVING or served.batcher is None or served.manifest is None:
            if served.state == "unavailable" and served.unavailable is not None:
                err = served.unavailable  # a fresh instance: no traceback piles up
                raise type(err)(err.message)
            raise ModelNotReadyError(served.not_ready_message())
        inputs = check_inputs(served.manifest, request)
        wanted = check_outputs(served.manifest, request)
        outputs = await served.batcher.submit(
            inputs, priority=request.priority, timeout_s=request.timeout_s
        )
        return InferResponse(
            model_name=served.name,
            model_version=served.version or "",
            id=request.id,
            outputs=[
                InferTensor(o, to_datatype(outputs[o]), tuple(outputs[o].shape), outputs[o])
                for o in wanted
            ],
        )

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
