"""Rank 0: the model users call, computed by the whole tensor-parallel group.

``podserve serve ROOT --tp-rank 0/K`` serves the unsplit model under its own name and
manifest (for MiniLM: text in, 384-d embedding out) over HTTP, gRPC and the queue, with the
usual batcher. Its ``load`` forms the group (bounded waits naming a missing rank), reads and
verifies its own slices, waits for every rank's report, and the data plane's warm-up then runs
through the whole group: the model is ready only when every rank has loaded and answered.
Each batch is tokenised here, broadcast, computed by all ranks together, and pooled here
exactly as the transformers runtime pools (mean or CLS, optional L2 normalisation).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from podserve.errors import IntegrityError, ManifestError
from podserve.runtime.loading import VersionReader
from podserve.runtime.model import Model
from podserve.runtime.text import (
    TextEncoder,
    check_text_input,
    json_reader,
    resolve_max_length,
    texts_from,
)
from podserve.tensor_parallel import group
from podserve.tensor_parallel.steps import Driver
from podserve.tensor_parallel.weights import load_shards

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch._C._distributed_c10d import TCPStore

    from podserve.errors import RankUnavailableError
    from podserve.settings import Settings
    from podserve.storage.repository import ModelVersion
    from podserve.tensor_parallel.manifest import TensorParallel

log = logging.getLogger(__name__)


class TensorParallelModel(Model):
    """Text in, embedding out; the encoder runs split over the group's K ranks."""

    def __init__(
        self,
        version: ModelVersion,
        settings: Settings,
        plan: TensorParallel,
        on_failure: Callable[[RankUnavailableError], None] | None = None,
    ) -> None:
        super().__init__(version, settings)
        self.plan = plan
        self._on_failure = on_failure or (lambda error: None)
        self.driver: Driver | None = None
        self.store: TCPStore | None = None
        self.metadata: dict[str, Any] = {}

    def load(self) -> None:
        s, plan = self.settings, self.plan
        started = time.perf_counter()
        opts = self.manifest.options
        if opts.get("task", "embedding") != "embedding":
            raise ManifestError(f"{self.version.path}: tensor parallelism serves task 'embedding'")
        self._text = self.inputs[0]
        check_text_input(self._text)
        self._pooling = opts.get("pooling", "mean")
        if self._pooling not in ("mean", "cls"):
            raise ManifestError("invalid field 'options.pooling': mean or cls")
        self._normalize = bool(opts.get("normalize", False))
        for name, spec in plan.files.items():
            entry = self.version.listing.files.get(name)
            if entry is None or entry.sha256 != spec.sha256:
                raise IntegrityError(
                    f"{self.version.path / name}: not the file the manifest was split from; "
                    "run `podserve split --tp` again"
                )
        deadline = time.monotonic() + s.tp_wait_seconds
        where = f"port {s.tp_port}"
        store = group.open_store(0, "", s.tp_port, s.tp_wait_seconds, s.tp_timeout_seconds)
        self.store = store
        log.info("tensor-parallel rank 0/%d: waiting for ranks 1..%d on %s", plan.k, plan.k - 1,
                 where)  # fmt: skip
        group.wait_for(store, plan.k, "join", deadline, where)
        self._model = load_shards(self.version, s, plan, 0, self.report)
        reader = VersionReader(self.version, s, self.report)
        tokenizer = opts.get("tokenizer", "tokenizer.json")
        if not reader.has(tokenizer):
            raise ManifestError(f"invalid field 'options.tokenizer': {tokenizer} not found")
        self._tokenizer = TextEncoder(
            reader.small(tokenizer),
            resolve_max_length(opts, json_reader(reader.has, reader.small)),
            str(self.version.path / tokenizer),
        )
        group.wait_for(store, plan.k, "loaded", deadline, where)
        reports = group.loaded_reports(store, plan.k)
        pg = group.form(store, 0, plan.k, s.tp_timeout_seconds)
        store.set("formed", "1")
        self.driver = Driver(pg, store, self._model, plan.k, self._on_failure)
        self.driver.start()
        self.report.seconds = time.perf_counter() - started
        details: dict[str, Any] = {
            "tp_rank": f"0/{plan.k}",
            "tp_ranks": plan.k,
            "bytes_read": self.report.bytes_read,
            "weight_bytes": plan.ranks[0].bytes,
        }
        for r, rep in reports.items():
            details[f"rank{r}_bytes_read"] = rep["bytes_read"]
            details[f"rank{r}_weight_bytes"] = rep["weight_bytes"]
        self.report.details.update(details)
        self.metadata = details  # what /v2/models/<model> shows, beside the usual parameters

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.driver is not None, "load() first"
        texts, lead = texts_from(inputs[self._text.name], self._text)
        out_name = self.outputs[0].name
        if not texts:
            return {out_name: np.zeros((*lead, *self.outputs[0].shape), np.float32)}
        enc = {k: torch.from_numpy(v) for k, v in self._tokenizer.encode(texts).items()}
        hidden = self.driver.run(enc)
        mask = enc["attention_mask"]
        with torch.inference_mode():
            if self._pooling == "cls":
                pooled = hidden[:, 0]
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            if self._normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
        out = pooled.float().numpy()
        return {out_name: out.reshape(*lead, out.shape[-1])}

    def unload(self) -> None:
        if self.driver is not None:
            self.driver.stop()
            self.driver = None
        self.store = None


async def serve_leader(settings: Settings, plan: TensorParallel) -> int:
    """Serve rank 0 until SIGTERM; its data-plane state follows the group's health."""
    from podserve.lifecycle import Server

    loop = asyncio.get_running_loop()
    settings = settings.model_copy(update={"models": [f"{plan.model}:{plan.version}"]})

    def on_failure(error: RankUnavailableError) -> None:
        loop.call_soon_threadsafe(server.dataplane.set_unavailable, plan.model, error)

    def factory(version: ModelVersion, s: Settings) -> Model:
        return TensorParallelModel(version, s, plan, on_failure)

    server = Server(settings, factory=factory)
    dataplane = server.dataplane

    def on_state(model: str, state: str) -> None:
        served = dataplane.models.get(model)
        if state == "ready" and served is not None and served.model is not None:
            served.extra_metadata.update(getattr(served.model, "metadata", {}))

    dataplane.on_state_change(on_state)
    return await server.run()
