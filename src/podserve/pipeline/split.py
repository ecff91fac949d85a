"""``podserve split``: plan balanced layer ranges and record what each stage may read.

The split reads and verifies the whole weight file once (the stages never can: each reads
only its share), then writes a :class:`~podserve.pipeline.split_manifest.Pipeline` with, for every
stage, its layers, the byte ranges of its tensors and their BLAKE3 digest.

Balancing is a min-max contiguous partition (dynamic programming, exact): by parameter
bytes (what bounds each pod's memory) or, with ``by="time"``, by measured per-layer compute
time on a sample batch (what bounds the pipeline's throughput). The embeddings count towards
the first stage and the head towards the last; every stage gets at least one layer.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import blake3

from podserve.errors import ConfigurationError, ManifestError
from podserve.pipeline.split_manifest import ByteRange, Pipeline, StagePlan, WeightFile
from podserve.runtime.architectures import LayeredModel, find_architecture
from podserve.runtime.safetensors_view import SafetensorsHeader, parse_header
from podserve.storage.integrity import check_digest, expected_digest, new_hasher
from podserve.storage.repository import ModelRepository, ModelVersion
from podserve.storage.signature import TrustPolicy

Balance = Literal["bytes", "time"]
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def balance(costs: Sequence[float], k: int, first: float = 0.0, last: float = 0.0) -> list[range]:
    """Split layers into ``k`` contiguous non-empty ranges minimising the largest stage cost.

    ``first`` is added to the first stage's cost (embeddings), ``last`` to the last's (head).
    """
    n = len(costs)
    if not 1 <= k <= n:
        raise ConfigurationError(f"cannot split {n} layers into {k} stages (1 ≤ K ≤ layers)")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(k + 1)]
    cut = [[0] * (n + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for s in range(1, k + 1):
        for j in range(s, n - (k - s) + 1):
            for i in range(s - 1, j):
                cost = prefix[j] - prefix[i] + (first if s == 1 else 0.0)
                cost += last if s == k else 0.0
                worst = max(best[s - 1][i], cost)
                if worst < best[s][j]:
                    best[s][j], cut[s][j] = worst, i
    bounds = [n]
    for s in range(k, 0, -1):
        bounds.append(cut[s][bounds[-1]])
    bounds.reverse()
    return [range(bounds[i], bounds[i + 1]) for i in range(k)]


def split_model(
    root: Path,
    name: str,
    version: str | None,
    k: int,
    *,
    by: Balance = "bytes",
    activations: str = "FP32",
    trust: TrustPolicy | None = None,
) -> Pipeline:
    """Plan ``k`` stages of a model version; reads (and verifies) its weights once."""
    mv = ModelRepository(root, trust).open(name, version)
    config = read_config(mv)
    arch = find_architecture(config)
    if arch is None:
        raise ManifestError(
            f"{mv.path}: model_type {config.get('model_type')!r} has no layered "
            "implementation in podserve.runtime.architectures; see docs/pipeline.md"
        )
    num_layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    files = weight_files(mv)
    with MappedWeights(mv, files) as mapped:
        where = {n: f for f, h in mapped.headers.items() for n in h.tensors}
        sizes = _part_sizes(arch, mapped.headers, num_layers)
        costs = [float(b) for b in sizes["layers"]]
        first, last = float(sizes["embeddings"]), float(sizes["head"])
        if by == "time":
            costs, first, last = measure_times(arch, config, mapped, num_layers)
        ranges = balance(costs, k, first, last)
        stages = []
        for i, layers in enumerate(ranges):
            is_first, is_last = i == 0, i == k - 1
            names = arch.select_tensors(where, layers=layers, embeddings=is_first, head=is_last)
            spans = _merge([(where[n], *mapped.headers[where[n]].ranges([n])[n]) for n in names])
            hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
            for file, offset, length in spans:
                hasher.update(mapped.views[file][offset : offset + length])
            cost = sum(costs[j] for j in layers) + (first if is_first else 0.0)
            stages.append(
                StagePlan(
                    stage=i + 1,
                    layers=(layers.start, layers.stop),
                    embeddings=is_first,
                    head=is_last,
                    bytes=sum(length for _, _, length in spans),
                    cost=cost + (last if is_last else 0.0),
                    ranges=tuple(ByteRange(file=f, offset=o, length=n) for f, o, n in spans),
                    blake3=hasher.hexdigest(),
                )
            )
        file_specs = weight_file_specs(mv, mapped)
    return Pipeline(
        model=mv.name,
        version=mv.version,
        model_type=str(config.get("model_type")),
        num_layers=num_layers,
        hidden_size=hidden,
        balance=by,
        activations=activations,
        files=file_specs,
        stages=tuple(stages),
    )


def weight_file_specs(mv: ModelVersion, mapped: MappedWeights) -> dict[str, WeightFile]:
    """Each weight file's size, SHA-256 and verified header, as a split manifest records them."""
    return {
        f: WeightFile(
            size=mv.listing.files[f].size,
            sha256=mv.listing.files[f].sha256,
            header_length=h.data_start,
            header_blake3=blake3.blake3(mapped.views[f][: h.data_start]).hexdigest(),
        )
        for f, h in mapped.headers.items()
    }


def read_config(mv: ModelVersion) -> dict[str, Any]:
    path = mv.path / "config.json"
    if "config.json" not in mv.listing.files:
        raise ManifestError(f"{path}: missing; only Hugging Face model directories can be split")
    entry = mv.listing.files["config.json"]
    data = path.read_bytes()
    algorithm, expected = expected_digest(entry)
    hasher = new_hasher(algorithm)
    hasher.update(data)
    check_digest(path, algorithm, expected, hasher.hexdigest())
    config: dict[str, Any] = json.loads(data)
    return config


def weight_files(mv: ModelVersion) -> list[str]:
    if SAFETENSORS_INDEX in mv.listing.files:
        index = json.loads((mv.path / SAFETENSORS_INDEX).read_bytes())
        return sorted(set((index.get("weight_map") or {}).values()))
    if SAFETENSORS in mv.listing.files:
        return [SAFETENSORS]
    raise ManifestError(f"{mv.path}: no {SAFETENSORS}; only safetensors weights can be split")


class MappedWeights:
    """Every weight file memory-mapped read-only and verified against SHA256SUMS/BLAKE3."""

    def __init__(self, mv: ModelVersion, files: list[str]) -> None:
        self.mv, self.files = mv, files
        self.views: dict[str, memoryview] = {}
        self.headers: dict[str, SafetensorsHeader] = {}
        self._maps: list[mmap.mmap] = []

    def __enter__(self) -> MappedWeights:
        for name in self.files:
            entry = self.mv.listing.files.get(name)
            path = self.mv.path / name
            if entry is None:
                raise ManifestError(f"{path}: not listed in SHA256SUMS")
            with open(path, "rb") as fh:
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps.append(mm)
            view = memoryview(mm)
            algorithm, expected = expected_digest(entry)
            hasher = new_hasher(algorithm)
            hasher.update(view)
            check_digest(path, algorithm, expected, hasher.hexdigest())
            self.views[name] = view
            self.headers[name] = parse_header(view, str(path))
        return self

    def __exit__(self, *exc: object) -> None:
        for view in self.views.values():
            view.release()
        for mm in self._maps:
            with contextlib.suppress(BufferError):  # a view still alive: the GC unmaps it
                mm.close()


def _part_sizes(
    arch: type[LayeredModel], headers: dict[str, SafetensorsHeader], num_layers: int
) -> dict[str, Any]:
    """Bytes of each layer, of the embeddings and of the head."""
    infos = {n: i for h in headers.values() for n, i in h.tensors.items()}

    def size(names: list[str]) -> int:
        return sum(infos[n].length for n in names)

    none = range(0)
    return {
        "layers": [
            size(arch.select_tensors(infos, layers=range(i, i + 1), embeddings=False, head=False))
            for i in range(num_layers)
        ],
        "embeddings": size(arch.select_tensors(infos, layers=none, embeddings=True, head=False)),
        "head": size(arch.select_tensors(infos, layers=none, embeddings=False, head=True)),
    }


def _merge(spans: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Sorted, with touching ranges of the same file joined (fewer, larger reads)."""
    out: list[tuple[str, int, int]] = []
    for file, offset, length in sorted(spans):
        if out and out[-1][0] == file and out[-1][1] + out[-1][2] == offset:
            out[-1] = (file, out[-1][1], out[-1][2] + length)
        elif length:
            out.append((file, offset, length))
    return out


def measure_times(
    arch: type[LayeredModel],
    config: dict[str, Any],
    mapped: MappedWeights,
    num_layers: int,
    *,
    batch: int = 8,
    seq: int = 64,
    repeats: int = 3,
) -> tuple[list[float], float, float]:
    """Seconds per layer, for the embeddings and for the head, on a random sample batch."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    for name, header in mapped.headers.items():
        buf = bytearray(mapped.views[name])  # a writable copy: the mapping is read-only
        tensors |= header.view(buf)
    model = arch.from_tensors(config, tensors, where=str(mapped.mv.path))
    vocab = int(config.get("vocab_size") or 2)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.int64)

    def timed(fn: Any) -> tuple[float, Any]:
        best, out = float("inf"), None
        for _ in range(repeats):
            start = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - start)
        return best, out

    with torch.inference_mode():
        first, hidden = timed(lambda: model.embed(ids, mask))
        bias = model.attention_bias(mask, hidden)
        costs = []
        for i in range(num_layers):
            layer = model.layer(i)
            seconds, _ = timed(lambda layer=layer: layer(hidden, bias))
            costs.append(seconds)
        last, _ = timed(lambda: model.final(hidden))
    return costs, first, last
