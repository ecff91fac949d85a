"""Which bytes of a tensor each rank reads (podserve.tensor_parallel.sharding)."""

from __future__ import annotations

import numpy as np
import pytest

from podserve.errors import ConfigurationError
from podserve.runtime.safetensors_view import TensorInfo
from podserve.tensor_parallel.manifest import Read
from podserve.tensor_parallel.sharding import Split, check_divisible, rules_for, shard_reads


def gather(data: bytes, reads: tuple[Read, ...]) -> bytes:
    """What the positional reads return, from the file's bytes."""
    out = b""
    for r in reads:
        for row in range(r.count):
            base = r.offset + row * r.stride
            out += b"".join(data[base + o : base + o + n] for o, n in r.pieces)
    return out


@pytest.mark.parametrize(
    ("split", "rank", "expected"),
    [
        (None, 1, lambda w: w),
        (Split(0), 0, lambda w: w[:3]),
        (Split(0), 1, lambda w: w[3:]),
        (Split(1), 1, lambda w: w[:, 4:]),
        (Split(1, parts=2), 1, lambda w: np.concatenate([w[:, 2:4], w[:, 6:8]], axis=1)),
        (Split(0, parts=3), 0, lambda w: np.concatenate([w[0:1], w[2:3], w[4:5]])),
    ],
)
def test_each_rank_reads_exactly_its_block(
    split: Split | None, rank: int, expected: object
) -> None:
    weight = np.arange(6 * 8, dtype=np.float32).reshape(6, 8)
    prefix = b"\0" * 40  # the tensor starts mid-file
    data = prefix + weight.tobytes()
    info = TensorInfo("w", "F32", (6, 8), len(prefix), len(data))
    shape, reads = shard_reads(info, split, rank, 2)
    got = np.frombuffer(gather(data, reads), dtype=np.float32).reshape(shape)
    np.testing.assert_array_equal(got, expected(weight))  # type: ignore[operator]
    assert all(r.offset >= info.start and r.end <= info.end for r in reads)


def test_a_column_block_is_a_strided_read_and_a_row_block_one_range() -> None:
    info = TensorInfo("w", "F32", (384, 1536), 0, 384 * 1536 * 4)
    _, (cols,) = shard_reads(info, Split(1), 1, 2)
    assert (cols.count, cols.stride, cols.pieces) == (384, 1536 * 4, ((768 * 4, 768 * 4),))
    _, (rows,) = shard_reads(info, Split(0), 1, 2)
    assert (rows.offset, rows.count, rows.length) == (192 * 1536 * 4, 1, 192 * 1536 * 4)


def test_k_must_divide_the_head_count() -> None:
    with pytest.raises(
        ConfigurationError, match=r"12 attention heads; K must divide .*1, 2, 3, 4, 6, 12"
    ):
        check_divisible(12, {"hidden size": 384}, 5)
    with pytest.raises(ConfigurationError, match="MLP width"):
        check_divisible(4, {"MLP width": 6}, 4)
    check_divisible(12, {"hidden size": 384, "MLP width": 1536}, 4)


def test_an_indivisible_dimension_is_refused() -> None:
    info = TensorInfo("w", "F32", (5, 4), 0, 80)
    with pytest.raises(ConfigurationError, match="does not split"):
        shard_reads(info, Split(0), 0, 2)


def test_unknown_families_are_named() -> None:
    with pytest.raises(ConfigurationError, match="'llama' has no tensor-parallel rules"):
        rules_for("llama")
