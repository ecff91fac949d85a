"""The warm-up batch: from the manifest's ``warmup`` section, or synthesised from shapes."""

from __future__ import annotations

from typing import Any

import numpy as np

from podserve.errors import ManifestError
from podserve.storage.manifest import Manifest
from podserve.v2 import to_numpy_dtype


def warmup_batch(manifest: Manifest) -> dict[str, np.ndarray]:
    batched = manifest.max_batch_size > 0
    out: dict[str, np.ndarray] = {}
    given: dict[str, Any] = manifest.warmup or {}
    for spec in manifest.inputs:
        if spec.name in given:
            value = given[spec.name]
            if spec.datatype == "BYTES":
                items = value if isinstance(value, list) else [value]
                arr = np.array([str(v).encode() for v in items], dtype=object)
            else:
                arr = np.asarray(value, dtype=to_numpy_dtype(spec.datatype))
            if batched and arr.ndim == len(spec.shape):
                arr = arr[None, ...]
        else:
            dims = tuple(1 if d == -1 else d for d in spec.shape)
            shape = ((1,) if batched else ()) + dims
            if spec.datatype == "BYTES":
                arr = np.full(shape, b"warm-up", dtype=object)
            else:
                arr = np.zeros(shape, dtype=to_numpy_dtype(spec.datatype))
        if not batched and arr.shape != tuple(1 if d == -1 else d for d in spec.shape):
            raise ManifestError(f"warmup.{spec.name}: shape {arr.shape} does not fit the input")
        out[spec.name] = arr
    return out
