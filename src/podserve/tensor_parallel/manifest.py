"""The tensor-parallel manifest: which bytes of every tensor each rank reads, and their digests.

``podserve split ROOT MODEL --tp K`` writes it once (after reading and verifying the whole
weight file); every rank reads it. Like the pipeline manifest it lives *outside* the model
repository (the volume is read-only): by default ``./pipelines/<model>-<version>-tp<K>.yaml``,
in Kubernetes a ConfigMap (``PODSERVE_TENSOR_PARALLEL_MANIFEST``)::

    kind: podserve-tensor-parallel
    model: minilm
    version: '1'
    model_type: bert
    k: 2
    heads: 12
    files:
      model.safetensors: {size: 90868376, sha256: 53aa…, header_length: 9376, header_blake3: 1f0c…}
    ranks:
    - rank: 0
      bytes: 45912064
      tensors:
      - name: encoder.layer.0.attention.self.query.weight
        file: model.safetensors
        dtype: F32
        shape: [192, 384]                # the slice this rank holds
        reads: [{offset: 9376, count: 1, stride: 0, pieces: [[0, 294912]]}]
        blake3: 6b1e…                    # of the bytes read, in order
      - name: encoder.layer.0.attention.output.dense.weight
        shape: [384, 192]                # a column block: one 768-byte piece per row
        reads: [{offset: 1190176, count: 384, stride: 1536, pieces: [[0, 768]]}]
        …

A read is ``count`` rows ``stride`` bytes apart, taking ``pieces`` (offset within the row,
length) of each: a row block is one contiguous piece, a column block one piece per row, and
GPT-2's fused QKV columns three pieces per row. The slice's bytes are those pieces in order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from podserve.errors import ConfigurationError
from podserve.pipeline.split_manifest import WeightFile

KIND = "podserve-tensor-parallel"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Read(_Strict):
    """``count`` rows ``stride`` bytes apart from ``offset``; ``pieces`` of each row."""

    offset: int = Field(ge=0)
    count: int = Field(ge=1)
    stride: int = Field(ge=0)
    pieces: tuple[tuple[int, int], ...] = Field(min_length=1)

    @property
    def length(self) -> int:
        return self.count * sum(n for _, n in self.pieces)

    @property
    def end(self) -> int:
        """One past the last byte read (absolute)."""
        return self.offset + (self.count - 1) * self.stride + max(o + n for o, n in self.pieces)


class TensorSlice(_Strict):
    """One tensor as a rank holds it: its block of the checkpoint tensor, or all of it."""

    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    reads: tuple[Read, ...]
    blake3: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def length(self) -> int:
        return sum(r.length for r in self.reads)


class RankPlan(_Strict):
    """What one rank reads: a slice of every split tensor and the replicated ones whole."""

    rank: int = Field(ge=0)
    bytes: int = Field(ge=0)
    tensors: tuple[TensorSlice, ...]


class TensorParallel(_Strict):
    """The contents of a tensor-parallel manifest file."""

    kind: Literal["podserve-tensor-parallel"] = "podserve-tensor-parallel"
    model: str
    version: str
    model_type: str
    k: int = Field(ge=1)
    heads: int = Field(ge=1)
    files: dict[str, WeightFile]
    ranks: tuple[RankPlan, ...] = Field(min_length=1)

    def to_yaml(self) -> str:
        head = (
            f"# podserve tensor parallelism: {self.model} version {self.version} over "
            f"{self.k} ranks.\n# Written by `podserve split --tp`; the model's own files are "
            "not touched.\n"
        )
        body: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        return head + body


def load_tensor_parallel(path: Path) -> TensorParallel:
    """Read, parse and validate a tensor-parallel manifest file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the tensor-parallel manifest: {exc}"
        ) from None
    return parse_tensor_parallel(text, str(path))


def parse_tensor_parallel(
    text: str, path: str = "PODSERVE_TENSOR_PARALLEL_MANIFEST"
) -> TensorParallel:
    """Parse and validate a manifest; errors name the source and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    try:
        plan = TensorParallel.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigurationError(f"{path}: invalid field '{where}': {first['msg']}") from None
    if [r.rank for r in plan.ranks] != list(range(plan.k)):
        raise ConfigurationError(f"{path}: ranks must be numbered 0..{plan.k - 1} in order")
    for rank in plan.ranks:
        for t in rank.tensors:
            if t.file not in plan.files:
                raise ConfigurationError(f"{path}: tensor {t.name} reads unknown file {t.file!r}")
    return plan


def parse_rank(value: str, k: int | None = None) -> tuple[int, int]:
    """``R/K`` → (R, K) with 0 ≤ R < K; K must match the manifest when given."""
    index, sep, total = value.partition("/")
    if not sep or not index.strip().isdigit() or not total.strip().isdigit():
        raise ConfigurationError(f"--tp-rank {value!r}: expected R/K (e.g. 0/2; rank 0 serves)")
    r, size = int(index), int(total)
    if not 0 <= r < size:
        raise ConfigurationError(f"--tp-rank {value}: R must be 0 to {size - 1}")
    if k is not None and size != k:
        raise ConfigurationError(
            f"--tp-rank {value}: the tensor-parallel manifest is for {k} ranks, not {size}"
        )
    return r, size


def default_path(model: str, version: str, k: int) -> Path:
    """Where ``podserve split --tp`` writes when no ``--out`` is given."""
    return Path("pipelines") / f"{model}-{version}-tp{k}.yaml"
