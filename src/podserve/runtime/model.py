"""The model contract every runtime implements, and which user classes follow.

A model is constructed from a verified :class:`~podserve.storage.repository.ModelVersion`,
``load()``-ed once (off the event loop), then called with whole batches::

    class Echo(Model):
        def load(self) -> None: ...
        def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {"y": inputs["x"]}

``infer`` receives one numpy array per input with the batch on axis 0 (when the manifest's
``max_batch_size`` > 0) and returns one array per output with the same leading size. BYTES
tensors are numpy object arrays of ``bytes``. ``infer`` runs on one dedicated thread per
model, so implementations need not be thread-safe, and may release the GIL. A runtime that
can hold several independent copies (``instances``) returns one callable per copy; the
batcher then runs each on its own thread.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from podserve.settings import Settings
    from podserve.storage.manifest import Manifest, TensorSpec
    from podserve.storage.repository import ModelVersion


@dataclass
class LoadReport:
    """What ``load`` did: shown in logs, metrics and metadata."""

    bytes_read: int = 0
    seconds: float = 0.0
    verified: str = "none"  # "blake3", "sha256", "size", or "none" when the runtime read nothing
    device: str = "cpu"
    # "shared": the weights in use are the page cache's pages (replicas on a node hold them
    # once); "private": this process holds its own copy (details["weights_private_because"]
    # says why); "none": the runtime reads no weight file.
    weights: str = "none"
    details: dict[str, Any] = field(default_factory=dict)


class Model(ABC):
    """Base class of every runtime (and of user models for the ``python`` runtime)."""

    def __init__(self, version: ModelVersion, settings: Settings) -> None:
        self.version = version
        self.settings = settings
        self.report = LoadReport()

    @property
    def manifest(self) -> Manifest:
        return self.version.manifest

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    @property
    def max_batch_size(self) -> int:
        return self.manifest.max_batch_size

    @abstractmethod
    def load(self) -> None:
        """Read and verify weights, build the model; raise a PodserveError on failure."""

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""

    def instances(self) -> list[Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]:
        """One ``infer`` per independent copy of the model; a single copy unless overridden."""
        return [self.infer]

    def unload(self) -> None:  # noqa: B027 - optional hook, default does nothing
        """Release weights and device memory; the object is not used afterwards."""

    def warmup_inputs(self) -> dict[str, np.ndarray]:
        """One small batch for the warm-up inference that gates readiness."""
        from podserve.runtime.warmup import warmup_batch

        return warmup_batch(self.manifest)
