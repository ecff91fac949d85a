"""``podserve.yaml``: what a model version is and how to serve it.

The manifest sits beside the weights in ``<root>/<model>/<version>/`` and is the only file a
user edits by hand; ``podserve stage`` writes a complete one. Errors name the offending field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from podserve.errors import ManifestError

MANIFEST_NAME = "podserve.yaml"
# libyaml's safe loader parses a manifest ~10x faster than the pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

DATATYPES = (
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input or output; ``shape`` is per item (without the batch axis), -1 = any size."""

    name: str = Field(min_length=1, max_length=256)
    datatype: str
    shape: tuple[int, ...] = ()

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, value: str) -> str:
        if value not in DATATYPES:
            raise ValueError(f"unknown datatype {value!r}; one of {', '.join(DATATYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d < -1 or d == 0 for d in value):
            raise ValueError("dimensions are positive or -1 (variable)")
        return value


class Batching(_Strict):
    policy: Literal["adaptive", "fixed_delay"] = "adaptive"
    max_queue_delay_ms: float = Field(2.0, ge=0, le=10_000)
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int | None = Field(None, ge=1)


class FileEntry(_Strict):
    """Size and fast digest of one file, recorded by ``podserve stage``."""

    size: int = Field(ge=0)
    blake3: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class Manifest(_Strict):
    """The contents of ``podserve.yaml``."""

    runtime: Literal["transformers", "torch", "onnx", "python"]
    inputs: tuple[TensorSpec, ...] = Field(min_length=1)
    outputs: tuple[TensorSpec, ...] = Field(min_length=1)
    max_batch_size: int = Field(1, ge=0, le=65_536)
    batching: Batching = Batching()
    warmup: dict[str, Any] | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    device: str = "auto"
    require_accelerator: bool = False
    verify: Literal["full", "size"] = "full"
    residency: Literal["pinned", "on-demand"] = "pinned"
    allow_torch_load: bool = False
    files: dict[str, FileEntry] = Field(default_factory=dict)
    description: str = ""

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not (
            value.startswith("cuda:") and value[5:].isdigit()
        ):
            raise ValueError("device is auto, cpu, cuda or cuda:N")
        return value

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", exclude_defaults=True)
        data["runtime"] = self.runtime
        text: str = yaml.safe_dump(data, sort_keys=False)
        return text


def parse_manifest(text: str, where: str = MANIFEST_NAME) -> Manifest:
    """Parse and validate manifest text; the error names the field and the file."""
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise ManifestError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected a mapping at the top level")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ManifestError(f"{where}: invalid field '{field}': {first['msg']}") from None


def read_manifest_bytes(version_dir: Path) -> bytes:
    path = version_dir / MANIFEST_NAME
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest missing") from None
    except PermissionError:
        raise ManifestError(f"{path}: manifest not readable (permission denied)") from None


def load_manifest(version_dir: Path, data: bytes | None = None) -> Manifest:
    """Parse the version's manifest (``data``: its bytes as already read and checked)."""
    path = version_dir / MANIFEST_NAME
    raw = read_manifest_bytes(version_dir) if data is None else data
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    return parse_manifest(text, str(path))
