"""The entry of a pipeline: the model users call, with the unsplit model's signature.

``podserve serve ROOT --stage entry`` (or ``0/K``) with ``PODSERVE_PIPELINE`` and
``PODSERVE_PIPELINE_STAGES=host:port,…`` serves the model under its own name and manifest
(for MiniLM: text in, 384-d embedding out) over HTTP, gRPC and the queue, like any model. It
holds no weights: it tokenises, cuts each batch into micro-batches of
``PODSERVE_PIPELINE_MICRO_BATCH`` rows, sends them through the stages with
``PODSERVE_PIPELINE_INFLIGHT`` in flight, and pools the last hidden states exactly as the
transformers runtime does (mean or CLS, optional L2 normalisation).

Faults: while a stage is down the entry's model is ``unavailable`` (not ready; readiness
probes fail) and its requests fail at once with UNAVAILABLE naming the stage; when the stage
is back the watcher notices and the model is ready again, without a restart.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from podserve.errors import ConfigurationError, IntegrityError, ManifestError
from podserve.pipeline.client import StageClients
from podserve.pipeline.split_manifest import Pipeline
from podserve.runtime.loading import VersionReader
from podserve.runtime.model import Model
from podserve.runtime.text import (
    TextEncoder,
    check_text_input,
    json_reader,
    mean_pool,
    resolve_max_length,
    texts_from,
)

if TYPE_CHECKING:
    from podserve.errors import StageUnavailableError
    from podserve.pipeline.client import Availability
    from podserve.settings import Settings
    from podserve.storage.repository import ModelVersion

log = logging.getLogger(__name__)


class PipelineEntry(Model):
    """Text in, embedding out, computed by the stages of a split model."""

    def __init__(
        self,
        version: ModelVersion,
        settings: Settings,
        pipeline: Pipeline,
        on_availability: Availability | None = None,
    ) -> None:
        super().__init__(version, settings)
        self.pipeline = pipeline
        self._on_availability = on_availability
        self.clients: StageClients | None = None

    def load(self) -> None:
        p, s = self.pipeline, self.settings
        if (self.version.name, self.version.version) != (p.model, p.version):
            raise ConfigurationError(
                f"the pipeline manifest is for {p.model} version {p.version}, not "
                f"{self.version.name} version {self.version.version}"
            )
        for name, spec in p.files.items():
            entry = self.version.listing.files.get(name)
            if entry is None or entry.sha256 != spec.sha256:
                raise IntegrityError(
                    f"{self.version.path / name}: not the file the pipeline was split from; "
                    "run `podserve split` again"
                )
        if len(s.pipeline_stages) != p.k:
            raise ConfigurationError(
                f"PODSERVE_PIPELINE_STAGES lists {len(s.pipeline_stages)} addresses; the "
                f"pipeline has {p.k} stages"
            )
        opts = self.manifest.options
        if opts.get("task", "embedding") != "embedding":
            raise ManifestError(
                f"{self.version.path}: the pipeline entry serves task 'embedding' only"
            )
        self._text = self.inputs[0]
        check_text_input(self._text)
        reader = VersionReader(self.version, s, self.report)
        read_json = json_reader(reader.has, reader.small)
        tokenizer = opts.get("tokenizer", "tokenizer.json")
        if not reader.has(tokenizer):
            raise ManifestError(f"invalid field 'options.tokenizer': {tokenizer} not found")
        self._tokenizer = TextEncoder(
            reader.small(tokenizer),
            resolve_max_length(opts, read_json),
            str(self.version.path / tokenizer),
        )
        self._pooling = opts.get("pooling", "mean")
        if self._pooling not in ("mean", "cls"):
            raise ManifestError("invalid field 'options.pooling': mean or cls")
        self._normalize = bool(opts.get("normalize", False))
        self.clients = StageClients(
            s.pipeline_stages,
            [p.stage_name(i) for i in range(1, p.k + 1)],
            timeout_s=s.pipeline_timeout_seconds,
            max_message_bytes=s.max_body_bytes,
            on_availability=self._on_availability,
        )
        log.info("waiting for %d pipeline stages: %s", p.k, ", ".join(s.pipeline_stages))
        self.clients.wait_ready(s.pipeline_wait_seconds)
        # Only small files were read (and checked); each stage verifies its own ranges.
        self.report.verified = "blake3" if reader.full else "size"
        self.report.details.update(
            {
                "pipeline_stages": p.k,
                "micro_batch": s.pipeline_micro_batch,
                "inflight": s.pipeline_inflight,
            }
        )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.clients is not None, "load() first"
        texts, lead = texts_from(inputs[self._text.name], self._text)
        out_name = self.outputs[0].name
        if not texts:
            return {out_name: np.zeros((*lead, *self.outputs[0].shape), np.float32)}
        size = self.settings.pipeline_micro_batch or len(texts)
        batches = [self._tokenizer.encode(texts[i : i + size]) for i in range(0, len(texts), size)]
        hidden = self.clients.run(batches, self.settings.pipeline_inflight)
        pooled = np.concatenate(
            [self._pool(h, b["attention_mask"]) for h, b in zip(hidden, batches, strict=True)]
        )
        return {out_name: pooled.reshape(*lead, pooled.shape[-1])}

    def _pool(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The transformers runtime's pooling (mean or CLS, L2 norm), in numpy: no torch here."""
        h = hidden.astype(np.float32, copy=False)
        if self._pooling == "mean":
            return mean_pool(h, mask, self._normalize)
        pooled = h[:, 0]
        if self._normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32, copy=False)

    def unload(self) -> None:
        if self.clients is not None:
            self.clients.close()
            self.clients = None


async def serve_entry(settings: Settings, pipeline: Pipeline) -> int:
    """Serve the entry until SIGTERM; its data-plane state follows the stages' health."""
    from podserve.lifecycle import Server

    loop = asyncio.get_running_loop()
    ref = f"{pipeline.model}:{pipeline.version}"
    settings = settings.model_copy(update={"models": [ref]})

    def on_availability(error: StageUnavailableError | None) -> None:
        loop.call_soon_threadsafe(server.dataplane.set_unavailable, pipeline.model, error)

    def factory(version: ModelVersion, s: Settings) -> Model:
        return PipelineEntry(version, s, pipeline, on_availability)

    server = Server(settings, factory=factory)
    return await server.run()
