"""Stacking requests along the batch axis and splitting the results back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from podserve.errors import InferenceError


def batch_key(inputs: dict[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """Requests can share a batch only if every input agrees beyond the batch axis."""
    return tuple((name, arr.shape[1:], arr.dtype.str) for name, arr in sorted(inputs.items()))


class Queued(Protocol):
    @property
    def rows(self) -> int: ...
    @property
    def key(self) -> tuple[object, ...]: ...


def rows_like_first(items: Sequence[Queued]) -> int:
    """Rows of the items that can share a batch with the first (the same :func:`batch_key`)."""
    key = items[0].key
    return sum(i.rows for i in items if i.key == key)


def concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Inverse of :func:`concat`; views, no copies."""
    if len(sizes) == 1:
        return [outputs]
    result: list[dict[str, np.ndarray]] = [{} for _ in sizes]
    for name, arr in outputs.items():
        start = 0
        for i, n in enumerate(sizes):
            result[i][name] = arr[start : start + n]
            start += n
    return result


def check_rows(model: str, outputs: dict[str, np.ndarray], rows: int) -> None:
    """Every output of a batch of ``rows`` must lead with ``rows``, or nothing can be split."""
    for name, arr in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != rows:
            raise InferenceError(
                f"model '{model}' returned output '{name}' with shape {list(arr.shape)} "
                f"for a batch of {rows}"
            )
