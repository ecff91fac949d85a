"""One rank's weights: positional reads of its slices only, each checked against its digest.

For every weight file the rank reads the safetensors header (and checks its BLAKE3 against
the manifest), then for every tensor the reads the manifest lists — one range for a row block
or a replicated tensor, one piece per row for a column block — into a buffer of the slice's
size, and checks the BLAKE3 of those bytes. Nothing else of the file is read, so resident
memory is this rank's share of the weights, not the file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import numpy as np
import torch

from podserve.errors import ConfigurationError, IntegrityError, ManifestError
from podserve.runtime.architectures import LayeredModel, find_architecture
from podserve.runtime.loading import VersionReader
from podserve.runtime.safetensors_view import DTYPES, SafetensorsHeader, parse_header
from podserve.storage.reader import read_range
from podserve.tensor_parallel.manifest import RankPlan, TensorParallel, TensorSlice
from podserve.tensor_parallel.sharded import build_sharded

if TYPE_CHECKING:
    from pathlib import Path

    from podserve.runtime.model import LoadReport
    from podserve.settings import Settings
    from podserve.storage.repository import ModelVersion


@dataclass
class RankWeights:
    """A rank's tensors (checkpoint names → its slice) and what reading them took."""

    tensors: dict[str, torch.Tensor]
    bytes_read: int
    verified: str


def read_rank_weights(
    version: ModelVersion, plan: TensorParallel, rank: int, *, verify: bool
) -> RankWeights:
    """Read and check rank ``rank``'s slices; raises :class:`IntegrityError` naming the file."""
    headers: dict[str, SafetensorsHeader] = {}
    total = 0
    for name, spec in plan.files.items():
        entry = version.listing.files.get(name)
        path = version.path / name
        if entry is None or entry.sha256 != spec.sha256 or entry.size != spec.size:
            raise IntegrityError(
                f"{path}: not the file the tensor-parallel manifest was split from (SHA256SUMS "
                "differs); run `podserve split --tp` again for this version"
            )
        head = read_range(path, 0, spec.header_length)
        total += spec.header_length
        if verify and blake3.blake3(head.data).hexdigest() != spec.header_blake3:
            raise IntegrityError(f"{path}: safetensors header BLAKE3 mismatch")
        headers[name] = parse_header(head, str(path), file_size=entry.size)
    ranked: RankPlan = plan.ranks[rank]
    tensors: dict[str, torch.Tensor] = {}
    fds: dict[str, int] = {}
    try:
        for piece in ranked.tensors:
            path = version.path / piece.file
            if piece.file not in fds:
                fds[piece.file] = os.open(path, os.O_RDONLY)
            _check_slice(piece, headers[piece.file], path)
            buf = _read_slice(fds[piece.file], piece, path)
            total += piece.length
            if verify and blake3.blake3(buf.data).hexdigest() != piece.blake3:
                raise IntegrityError(
                    f"{path}: tensor {piece.name!r}: the bytes of tensor-parallel rank "
                    f"{rank}/{plan.k} do not match the BLAKE3 digest the manifest recorded "
                    "(weights changed or damaged)"
                )
            dtype = DTYPES[piece.dtype]
            tensors[piece.name] = torch.frombuffer(buf, dtype=dtype).reshape(piece.shape)
    finally:
        for fd in fds.values():
            os.close(fd)
    return RankWeights(tensors, total, "blake3" if verify else "size")


def _check_slice(piece: TensorSlice, header: SafetensorsHeader, path: Path) -> None:
    """The manifest's reads stay inside the tensor the (verified) header describes."""
    info = header.tensors.get(piece.name)
    dtype = DTYPES.get(piece.dtype)
    if info is None or dtype is None or info.dtype != piece.dtype:
        raise IntegrityError(
            f"{path}: tensor {piece.name!r} is not in the file as the manifest says"
        )
    if math.prod(piece.shape) * dtype.itemsize != piece.length or any(
        r.offset < info.start or r.end > info.end for r in piece.reads
    ):
        raise IntegrityError(
            f"{path}: the manifest's reads of tensor {piece.name!r} do not fit its "
            f"[{info.start}, {info.end}) bytes"
        )


def _read_slice(fd: int, piece: TensorSlice, path: Path) -> np.ndarray:
    """The slice's bytes, in manifest order, with one positional read per piece."""
    buf = np.empty(piece.length, dtype=np.uint8)
    view = buf.data
    pos = 0
    for r in piece.reads:
        for row in range(r.count):
            base = r.offset + row * r.stride
            for offset, length in r.pieces:
                end = pos + length
                while pos < end:
                    n = os.preadv(fd, [view[pos:end]], base + offset + length - (end - pos))
                    if not n:
                        raise IntegrityError(f"{path}: unexpected end of file")
                    pos += n
    return buf


def load_shards(
    version: ModelVersion, settings: Settings, plan: TensorParallel, rank: int, report: LoadReport
) -> LayeredModel:
    """Read, verify and assemble rank ``rank``'s slices (shared by every rank)."""
    if (version.name, version.version) != (plan.model, plan.version):
        raise ConfigurationError(
            f"the tensor-parallel manifest is for {plan.model} version {plan.version}, not "
            f"{version.name} version {version.version}"
        )
    if settings.intra_op_threads:
        torch.set_num_threads(settings.intra_op_threads)
    reader = VersionReader(version, settings, report)
    if not reader.has("config.json"):
        raise ManifestError(f"{version.path}: config.json missing (not a HF model dir)")
    config = json.loads(reader.small("config.json"))  # checked against SHA256SUMS
    arch = find_architecture(config)
    if arch is None or config.get("model_type") != plan.model_type:
        raise ManifestError(
            f"{version.path}: model_type {config.get('model_type')!r} does not match the "
            f"tensor-parallel manifest ({plan.model_type!r}) or has no lean class"
        )
    verify = settings.verify == "full" and version.manifest.verify == "full"
    weights = read_rank_weights(version, plan, rank, verify=verify)
    model = build_sharded(arch, config, weights.tensors, str(version.path))
    report.bytes_read += weights.bytes_read
    report.verified = weights.verified
    report.details.update(
        {
            "tp_rank": f"{rank}/{plan.k}",
            "weight_bytes": plan.ranks[rank].bytes,
            "tensors": len(weights.tensors),
        }
    )
    return model
