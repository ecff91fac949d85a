"""The pipeline manifest: which layers each stage runs and which bytes it may read.

``podserve split`` writes it once (after reading and verifying the whole weight file); every
stage and the entry read it. It lives *outside* the model repository (the volume is
read-only in production): by default ``./pipelines/<model>-<version>-k<K>.yaml``, in
Kubernetes a ConfigMap mounted at ``PODSERVE_PIPELINE``::

    kind: podserve-pipeline
    model: minilm
    version: '1'
    model_type: bert
    num_layers: 6
    hidden_size: 384
    balance: bytes
    files:
      model.safetensors: {size: 90868376, sha256: 53aa…, header_blake3: 1f0c…}
    stages:
    - stage: 1
      layers: [0, 1]          # start, stop (exclusive)
      embeddings: true
      head: false
      bytes: 53312000
      cost: 53312000.0
      ranges: [{file: model.safetensors, offset: 9376, length: 53312000}]
      blake3: 6b1e…          # of the ranges, in order: what the stage verifies as it reads

A stage cannot check the whole-file digest without reading the whole file, so it checks the
digest of exactly the bytes it reads, plus the header that says what those bytes are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from podserve.errors import ConfigurationError

KIND = "podserve-pipeline"
WIRE_DTYPES = ("FP32", "FP16")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ByteRange(_Strict):
    """Contiguous bytes of one weight file (absolute offsets)."""

    file: str
    offset: int = Field(ge=0)
    length: int = Field(ge=0)


class WeightFile(_Strict):
    """What the split saw: the file's listed digest and the digest of its header bytes."""

    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    header_length: int = Field(ge=8)
    header_blake3: str = Field(pattern=r"^[0-9a-f]{64}$")


class StagePlan(_Strict):
    """One stage: a layer range, with the embeddings (first) or the head (last)."""

    stage: int = Field(ge=1)
    layers: tuple[int, int]
    embeddings: bool = False
    head: bool = False
    bytes: int = Field(ge=0)
    cost: float = Field(ge=0)
    ranges: tuple[ByteRange, ...]
    blake3: str = Field(pattern=r"^[0-9a-f]{64}$")

    @property
    def layer_range(self) -> range:
        return range(*self.layers)


class Pipeline(_Strict):
    """The contents of a pipeline manifest file."""

    kind: Literal["podserve-pipeline"] = "podserve-pipeline"
    model: str
    version: str
    model_type: str
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    balance: Literal["bytes", "time"] = "bytes"
    activations: Literal["FP32", "FP16"] = "FP32"
    files: dict[str, WeightFile]
    stages: tuple[StagePlan, ...] = Field(min_length=1)

    @property
    def k(self) -> int:
        return len(self.stages)

    def stage_name(self, index: int) -> str:
        """The model name stage ``index`` (1-based) serves under."""
        return f"{self.model}-stage{index}"

    def to_yaml(self) -> str:
        head = (
            f"# podserve pipeline: {self.model} version {self.version} in {self.k} stages.\n"
            "# Written by `podserve split`; the model's own files are not touched.\n"
        )
        body: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
        return head + body


def load_pipeline(path: Path) -> Pipeline:
    """Read, parse and validate a pipeline manifest file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the pipeline manifest: {exc}") from None
    return parse_pipeline(text, str(path))


def parse_pipeline(text: str, path: str = "PODSERVE_PIPELINE_MANIFEST") -> Pipeline:
    """Parse and validate a pipeline manifest; errors name the source and the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{path}: not valid YAML: {exc}") from None
    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigurationError(f"{path}: invalid field '{where}': {first['msg']}") from None
    expected = 0
    for i, plan in enumerate(pipeline.stages, 1):
        start, stop = plan.layers
        if plan.stage != i or start != expected or stop <= start:
            raise ConfigurationError(
                f"{path}: stage {i} has layers [{start}, {stop}); stages must be numbered "
                f"1..K and cover the layers in order without gaps"
            )
        expected = stop
    if expected != pipeline.num_layers:
        raise ConfigurationError(
            f"{path}: the stages cover {expected} of {pipeline.num_layers} layers"
        )
    return pipeline


def parse_stage(value: str, pipeline: Pipeline) -> int:
    """``I/K`` (or ``entry``) → I, where 0 is the entry; K must match the manifest."""
    if value.strip().lower() == "entry":
        return 0
    index, sep, total = value.partition("/")
    if not sep or not index.strip().isdigit() or not total.strip().isdigit():
        raise ConfigurationError(f"--stage {value!r}: expected I/K (e.g. 1/2) or 'entry'")
    i, k = int(index), int(total)
    if k != pipeline.k:
        raise ConfigurationError(
            f"--stage {value}: the pipeline manifest has {pipeline.k} stages, not {k}"
        )
    if not 0 <= i <= k:
        raise ConfigurationError(f"--stage {value}: I must be 0 (the entry) to {k}")
    return i


def default_path(model: str, version: str, k: int) -> Path:
    """Where ``podserve split`` writes when no ``--out`` is given (the current directory)."""
    return Path("pipelines") / f"{model}-{version}-k{k}.yaml"
