"""``podserve split --tp K``: record each rank's slices of every tensor and their digests.

Like the pipeline split, it reads and verifies the whole weight file once (against
``SHA256SUMS``/BLAKE3) — the ranks never can, each reads only its share — then writes a
:class:`~podserve.tensor_parallel.manifest.TensorParallel` with, for each rank and each tensor,
the positional reads of its block (:func:`~podserve.tensor_parallel.sharding.shard_reads`)
and the BLAKE3 digest of the bytes those reads return.
"""

from __future__ import annotations

from pathlib import Path

import blake3

from podserve.errors import ManifestError
from podserve.pipeline.split import MappedWeights, read_config, weight_file_specs, weight_files
from podserve.runtime.architectures import find_architecture
from podserve.storage.repository import ModelRepository
from podserve.tensor_parallel.manifest import RankPlan, Read, TensorParallel, TensorSlice
from podserve.tensor_parallel.sharding import check_divisible, rules_for, shard_reads, split_of


def split_tensor_parallel(root: Path, name: str, version: str | None, k: int) -> TensorParallel:
    """Plan ``k`` ranks of a model version; reads (and verifies) its weights once."""
    mv = ModelRepository(root).open(name, version)
    config = read_config(mv)
    arch = find_architecture(config)
    model_type = str(config.get("model_type"))
    if arch is None:
        raise ManifestError(
            f"{mv.path}: model_type {model_type!r} has no layered implementation in "
            "podserve.runtime.architectures; see docs/tensor-parallel.md"
        )
    rules = rules_for(model_type)
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    inner = int(config.get("intermediate_size") or config.get("n_inner") or 4 * hidden)
    check_divisible(heads, {"hidden size": hidden, "MLP width": inner}, k)
    with MappedWeights(mv, weight_files(mv)) as mapped:
        infos = [(f, i) for f, h in mapped.headers.items() for i in h.tensors.values()]
        ranks = []
        for rank in range(k):
            slices = []
            for file, info in infos:
                canon = arch.canonical(info.name)
                if canon is None:
                    continue  # buffers and heads the lean class drops: never read
                shape, reads = shard_reads(info, split_of(canon, arch.LAYER_PREFIX, rules), rank, k)
                hasher = blake3.blake3()
                for chunk in _pieces(mapped.views[file], reads):
                    hasher.update(chunk)
                slices.append(
                    TensorSlice(
                        name=info.name,
                        file=file,
                        dtype=info.dtype,
                        shape=shape,
                        reads=reads,
                        blake3=hasher.hexdigest(),
                    )
                )
            ranks.append(
                RankPlan(rank=rank, bytes=sum(s.length for s in slices), tensors=tuple(slices))
            )
        files = weight_file_specs(mv, mapped)
    return TensorParallel(
        model=mv.name,
        version=mv.version,
        model_type=model_type,
        k=k,
        heads=heads,
        files=files,
        ranks=tuple(ranks),
    )


def _pieces(view: memoryview, reads: tuple[Read, ...]) -> list[memoryview]:
    """The byte pieces ``reads`` return, in order (views of the mapped file)."""
    out: list[memoryview] = []
    for r in reads:
        for row in range(r.count):
            base = r.offset + row * r.stride
            out.extend(view[base + o : base + o + n] for o, n in r.pieces)
    return out
