"""A request checked against its model's manifest before it reaches the batcher."""

from __future__ import annotations

import numpy as np

from podserve.errors import InvalidRequestError
from podserve.storage.manifest import Manifest
from podserve.v2 import InferRequest


def check_inputs(manifest: Manifest, request: InferRequest) -> dict[str, np.ndarray]:
    """The request's arrays by input name, checked against the manifest (names, datatypes,
    shapes, one batch size); an :class:`InvalidRequestError` names the first problem."""
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
    first = ""
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
                rows, first = shape[0], spec.name
            elif shape[0] != rows:
                raise InvalidRequestError(
                    f"inputs disagree on the batch size: '{first}' has {rows} rows, "
                    f"'{spec.name}' has {shape[0]}"
                )
        out[spec.name] = tensor.data
    return out


def check_outputs(manifest: Manifest, request: InferRequest) -> list[str]:
    """The outputs to answer with: those requested (each must exist), else all."""
    if not request.outputs:
        return [o.name for o in manifest.outputs]
    names = [o.name for o in request.outputs]
    for n in names:
        if manifest.output(n) is None:
            raise InvalidRequestError(f"unknown output '{n}' requested")
    return names
