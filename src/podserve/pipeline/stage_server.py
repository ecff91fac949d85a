"""A pipeline stage: a :class:`~podserve.runtime.model.Model` over one layer range.

``podserve serve ROOT --stage I/K`` (with ``PODSERVE_PIPELINE`` naming the manifest written
by ``podserve split``) serves model ``<model>-stage<I>`` on the usual surfaces. It reads only
the byte ranges of its own tensors from the shared read-only volume, verifies their BLAKE3
digest (and that of the file's header) as it reads, and answers raw tensors over gRPC::

    stage 1:    input_ids, attention_mask, token_type_ids (INT64 [b, s]) → hidden [b, s, d]
    stage i>1:  hidden (FP32/FP16 [b, s, d]), attention_mask (INT64 [b, s]) → hidden

The last stage applies the architecture's ``final`` step, so its ``hidden`` is the model's
last hidden state. ``--stage 0/K`` (or ``entry``) serves the entry instead
(:mod:`podserve.pipeline.entry`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import blake3
import numpy as np

from podserve.errors import ConfigurationError, IntegrityError, ManifestError, ModelNotFoundError
from podserve.pipeline.split_manifest import (
    Pipeline,
    StagePlan,
    load_pipeline,
    parse_pipeline,
    parse_stage,
)
from podserve.runtime.loading import VersionReader
from podserve.runtime.model import Model
from podserve.storage.manifest import Manifest, TensorSpec
from podserve.storage.reader import read_range
from podserve.storage.repository import ModelRepository, ModelVersion
from podserve.storage.signature import TrustPolicy

if TYPE_CHECKING:
    from collections.abc import Coroutine

    import torch

    from podserve.settings import Settings

log = logging.getLogger(__name__)

TOKENS = ("input_ids", "attention_mask", "token_type_ids")


def stage_manifest(base: Manifest, pipeline: Pipeline, index: int) -> Manifest:
    """The signature stage ``index`` serves: raw tensors, one request = one micro-batch."""
    plan = pipeline.stages[index - 1]
    hidden = TensorSpec(
        name="hidden", datatype=pipeline.activations, shape=(-1, -1, pipeline.hidden_size)
    )
    mask = TensorSpec(name="attention_mask", datatype="INT64", shape=(-1, -1))
    if plan.embeddings:
        inputs = tuple(TensorSpec(name=n, datatype="INT64", shape=(-1, -1)) for n in TOKENS)
    else:
        inputs = (hidden, mask)
    return Manifest(
        runtime=base.runtime,
        inputs=inputs,
        outputs=(hidden,),
        max_batch_size=0,  # the entry forms the (micro-)batches; shapes vary between them
        device=base.device,
        verify=base.verify,
        description=f"{pipeline.model} stage {index}/{pipeline.k}, layers "
        f"[{plan.layers[0]}, {plan.layers[1]})",
    )


class StageRepository(ModelRepository):
    """The real repository, seen by a stage: one model, ``<model>-stage<I>``."""

    def __init__(
        self, root: Any, pipeline: Pipeline, index: int, trust: TrustPolicy | None = None
    ) -> None:
        super().__init__(root, trust)
        self.pipeline, self.index = pipeline, index
        self.name = pipeline.stage_name(index)

    def models(self) -> list[str]:
        return [self.name]

    def open(self, name: str, version: str | None = None) -> ModelVersion:
        if name != self.name:
            raise ModelNotFoundError(f"this is pipeline stage {self.name}; no model '{name}'")
        mv = super().open(self.pipeline.model, self.pipeline.version)
        manifest = stage_manifest(mv.manifest, self.pipeline, self.index)
        return dataclasses.replace(mv, name=name, manifest=manifest)


@dataclasses.dataclass
class StageWeights:
    """The tensors of one stage as views over the buffers that hold its ranges."""

    tensors: dict[str, torch.Tensor]
    buffers: list[np.ndarray]
    bytes_read: int
    verified: str


def read_stage_weights(
    version: ModelVersion, pipeline: Pipeline, plan: StagePlan, *, verify: bool
) -> StageWeights:
    """Read (positional reads) and check the header and the ranges of one stage only."""
    from podserve.runtime.safetensors_view import SafetensorsHeader, parse_header

    headers: dict[str, SafetensorsHeader] = {}
    total = 0
    for name, spec in pipeline.files.items():
        entry = version.listing.files.get(name)
        path = version.path / name
        if entry is None or entry.sha256 != spec.sha256 or entry.size != spec.size:
            raise IntegrityError(
                f"{path}: not the file the pipeline manifest was split from (SHA256SUMS "
                "differs); run `podserve split` again for this version"
            )
        head = read_range(path, 0, spec.header_length)
        total += spec.header_length
        if verify and blake3.blake3(head.data).hexdigest() != spec.header_blake3:
            raise IntegrityError(f"{path}: safetensors header BLAKE3 mismatch")
        headers[name] = parse_header(head, str(path), file_size=entry.size)
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO) if verify else None
    tensors: dict[str, torch.Tensor] = {}
    buffers: list[np.ndarray] = []
    for r in plan.ranges:
        header = headers.get(r.file)
        if header is None:
            raise IntegrityError(f"pipeline manifest: range in unknown file {r.file!r}")
        buf = read_range(version.path / r.file, r.offset, r.length)
        total += r.length
        if hasher is not None:
            hasher.update(buf.data)
        inside = [
            i.name
            for i in header.tensors.values()
            if r.offset <= i.start and i.end <= r.offset + r.length
        ]
        tensors |= header.view(buf, inside, offset=r.offset)
        buffers.append(buf)
    if hasher is not None and hasher.hexdigest() != plan.blake3:
        raise IntegrityError(
            f"{version.path}: the bytes of stage {plan.stage} do not match the BLAKE3 digest "
            "the pipeline manifest recorded (weights changed or damaged)"
        )
    return StageWeights(tensors, buffers, total, "blake3" if verify else "size")


class StageModel(Model):
    """Runs layers ``[start, stop)`` of a split model on raw hidden states."""

    def __init__(
        self, version: ModelVersion, settings: Settings, pipeline: Pipeline, index: int
    ) -> None:
        super().__init__(version, settings)
        self.pipeline, self.index = pipeline, index
        self.plan = pipeline.stages[index - 1]

    def load(self) -> None:
        import torch

        from podserve.runtime.architectures import find_architecture

        started = time.perf_counter()
        if self.settings.intra_op_threads:
            torch.set_num_threads(self.settings.intra_op_threads)
        reader = VersionReader(self.version, self.settings, self.report)
        if not reader.has("config.json"):
            raise ManifestError(f"{self.version.path}: config.json missing (not a HF model dir)")
        config = json.loads(reader.small("config.json"))  # checked against SHA256SUMS
        arch = find_architecture(config)
        if arch is None or config.get("model_type") != self.pipeline.model_type:
            raise ManifestError(
                f"{self.version.path}: model_type {config.get('model_type')!r} does not match "
                f"the pipeline manifest ({self.pipeline.model_type!r}) or has no lean class"
            )
        verify = self.settings.verify == "full" and self.manifest.verify == "full"
        weights = read_stage_weights(self.version, self.pipeline, self.plan, verify=verify)
        self._buffers = weights.buffers
        plan = self.plan
        self._model = arch.from_tensors(
            config,
            weights.tensors,
            layers=plan.layer_range,
            embeddings=plan.embeddings,
            head=plan.head,
            where=str(self.version.path),
        )
        self._dtype = torch.float16 if self.pipeline.activations == "FP16" else torch.float32
        self.report.bytes_read += weights.bytes_read
        self.report.verified = weights.verified
        self.report.seconds = time.perf_counter() - started
        self.report.details.update(
            {
                "pipeline_stage": f"{self.index}/{self.pipeline.k}",
                "layers": f"{plan.layers[0]}-{plan.layers[1] - 1}",
                "bytes_read": self.report.bytes_read,
                "weight_bytes": plan.bytes,
                "tensors": len(weights.tensors),
            }
        )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        def tensor(name: str) -> torch.Tensor:
            return torch.from_numpy(np.require(inputs[name], requirements=["W", "C"]))

        mask = tensor("attention_mask")
        model, plan = self._model, self.plan
        with torch.inference_mode():
            if plan.embeddings:
                hidden = model.embed(tensor("input_ids"), mask, tensor("token_type_ids"))
            else:
                hidden = tensor("hidden").float()
            hidden = model.run_layers(hidden, mask, *plan.layers)
            if plan.head:
                hidden = model.final(hidden)
            return {"hidden": hidden.to(self._dtype).numpy()}

    def warmup_inputs(self) -> dict[str, np.ndarray]:
        ones = np.ones((1, 4), dtype=np.int64)
        if self.plan.embeddings:
            return {"input_ids": ones, "attention_mask": ones, "token_type_ids": 0 * ones}
        dtype = np.float16 if self.pipeline.activations == "FP16" else np.float32
        hidden = np.zeros((1, 4, self.pipeline.hidden_size), dtype=dtype)
        return {"hidden": hidden, "attention_mask": ones}

    def unload(self) -> None:
        self._model = None  # type: ignore[assignment]
        self._buffers = []


def run_stage(settings: Settings) -> int:
    """``podserve serve --stage I/K``: serve stage I (or the entry for I = 0) until SIGTERM."""
    if settings.pipeline is not None:
        pipeline = load_pipeline(settings.pipeline)
    elif settings.pipeline_manifest:
        pipeline = parse_pipeline(settings.pipeline_manifest)
    else:
        raise ConfigurationError(
            "--stage needs the pipeline manifest: set PODSERVE_PIPELINE to the file written "
            "by `podserve split` (or PODSERVE_PIPELINE_MANIFEST to its contents)"
        )
    index = parse_stage(settings.stage or "", pipeline)
    if index == 0:
        from podserve.pipeline.entry import serve_entry

        return _run(serve_entry(settings, pipeline))
    return _run(_serve_stage(settings, pipeline, index))


def _run(main: Coroutine[Any, Any, int]) -> int:
    """uvloop when available, as lifecycle.run_server does."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve_stage(settings: Settings, pipeline: Pipeline, index: int) -> int:
    from podserve.lifecycle import Server

    name = pipeline.stage_name(index)
    settings = settings.model_copy(update={"models": [name]})

    def factory(version: ModelVersion, s: Settings) -> Model:
        return StageModel(version, s, pipeline, index)

    server = Server(settings, factory=factory)
    dataplane = server.dataplane
    dataplane.repository = StageRepository(
        settings.model_root, pipeline, index, TrustPolicy.from_settings(settings)
    )

    def on_state(model: str, state: str) -> None:
        served = dataplane.models.get(model)
        if state == "ready" and served is not None and served.model is not None:
            # The stage's own facts; the batch curve and memory plan are the batcher's, and
            # are reported by the data plane in their own form.
            served.extra_metadata.update(
                {
                    k: v
                    for k, v in served.model.report.details.items()
                    if k not in ("batch_curve", "memory_plan")
                }
            )

    dataplane.on_state_change(on_state)
    log.info(
        "pipeline stage %d/%d of %s (layers %s)",
        index,
        pipeline.k,
        pipeline.model,
        pipeline.stages[index - 1].layers,
    )
    return await server.run()
