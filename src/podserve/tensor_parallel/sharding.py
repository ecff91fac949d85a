"""Megatron-style sharding rules: which dimension of which tensor each rank takes a block of.

Inside every layer the attention heads (Q, K and V) and the MLP up-projection are split by
their *output* features, and the attention output and MLP down-projection by their *input*
features, so each rank computes a partial sum of those two projections and one all-reduce
after each restores the full hidden state. Everything else (embeddings, norms, the biases
added after a reduction, pooler and classifier) is replicated.

Which of those is a row block and which a column block depends on the layout:

==================  =================  ==========================  =========================
architecture        weight layout      output-split (QKV, up)      input-split (out, down)
==================  =================  ==========================  =========================
BERT (``Linear``)   ``[out, in]``      row block: one range        column block: strided
GPT-2 (``Conv1D``)  ``[in, out]``      column block: strided       row block: one range
==================  =================  ==========================  =========================

GPT-2's ``c_attn`` holds Q, K and V side by side (``[in, 3·d]``): rank r takes block r of
each third (``parts=3``), three pieces per row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from podserve.errors import ConfigurationError
from podserve.runtime.safetensors_view import DTYPES, TensorInfo
from podserve.tensor_parallel.manifest import Read


@dataclass(frozen=True)
class Split:
    """Dimension ``dim`` holds ``parts`` equal parts; a rank takes its block of each."""

    dim: int
    parts: int = 1


#: Layer-relative canonical names → how they are split; any other tensor is replicated.
RULES: dict[str, dict[str, Split]] = {
    "bert": {
        "attention.self.query.weight": Split(0),
        "attention.self.query.bias": Split(0),
        "attention.self.key.weight": Split(0),
        "attention.self.key.bias": Split(0),
        "attention.self.value.weight": Split(0),
        "attention.self.value.bias": Split(0),
        "attention.output.dense.weight": Split(1),
        "intermediate.dense.weight": Split(0),
        "intermediate.dense.bias": Split(0),
        "output.dense.weight": Split(1),
    },
    "decoder": {
        "attn.c_attn.weight": Split(1, parts=3),
        "attn.c_attn.bias": Split(0, parts=3),
        "attn.c_proj.weight": Split(0),
        "mlp.c_fc.weight": Split(1),
        "mlp.c_fc.bias": Split(0),
        "mlp.c_proj.weight": Split(0),
    },
}
FAMILY = {"bert": "bert", "gpt2": "decoder", "podserve-decoder": "decoder"}


def rules_for(model_type: str) -> dict[str, Split]:
    family = FAMILY.get(model_type)
    if family is None:
        raise ConfigurationError(
            f"model_type {model_type!r} has no tensor-parallel rules (supported: "
            f"{', '.join(sorted(FAMILY))}); see docs/tensor-parallel.md"
        )
    return RULES[family]


def split_of(canonical: str, layer_prefix: str, rules: dict[str, Split]) -> Split | None:
    """The split of a canonical tensor name, or None when every rank holds all of it."""
    if not canonical.startswith(layer_prefix):
        return None
    inside = canonical[len(layer_prefix) :].split(".", 1)[-1]
    return rules.get(inside)


def check_divisible(heads: int, sizes: dict[str, int], k: int) -> None:
    """K must divide the head count (and so the hidden size) and the MLP width."""
    if heads % k:
        choices = [str(d) for d in range(1, heads + 1) if heads % d == 0]
        raise ConfigurationError(
            f"--tp {k}: the model has {heads} attention heads; K must divide the head count "
            f"(one of {', '.join(choices)})"
        )
    for what, size in sizes.items():
        if size % k:
            raise ConfigurationError(f"--tp {k}: the model's {what} ({size}) is not divisible by K")


def shard_reads(info: TensorInfo, split: Split | None, rank: int, k: int) -> tuple[
    tuple[int, ...], tuple[Read, ...]
]:  # fmt: skip
    """(slice shape, reads) of rank ``rank``'s block of one tensor (whole when not split)."""
    shape = info.shape
    if split is None:
        return shape, (Read(offset=info.start, count=1, stride=0, pieces=((0, info.length),)),)
    itemsize = DTYPES[info.dtype].itemsize
    dim, parts = split.dim, split.parts
    if dim >= len(shape) or shape[dim] % (parts * k):
        raise ConfigurationError(
            f"tensor {info.name} {list(shape)}: dimension {dim} does not split into "
            f"{parts} x {k} equal blocks"
        )
    part = shape[dim] // parts
    block = part // k
    out = (*shape[:dim], block * parts, *shape[dim + 1 :])
    inner = math.prod(shape[dim + 1 :]) * itemsize  # bytes of one index along ``dim``
    starts = [(p * part + rank * block) * inner for p in range(parts)]
    if dim == 0:
        reads = tuple(
            Read(offset=info.start + s, count=1, stride=0, pieces=((0, block * inner),))
            for s in starts
        )
        return out, reads
    rows = math.prod(shape[:dim])
    row = shape[dim] * inner
    pieces = tuple((s, block * inner) for s in starts)
    return out, (Read(offset=info.start, count=rows, stride=row, pieces=pieces),)
