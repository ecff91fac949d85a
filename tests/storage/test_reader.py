"""Weight reads verify in the same pass, with either strategy."""

from __future__ import annotations

from pathlib import Path

import pytest

from podserve.errors import IntegrityError
from podserve.storage.integrity import CheckedFile
from podserve.storage.reader import read_range, read_weights
from podserve.storage.repository import ModelRepository

STRATEGIES = ["mmap", "read"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_read_returns_the_bytes(staged: Path, strategy: str) -> None:
    mv = ModelRepository(staged).open("ident")
    path = mv.path / "weights.safetensors"
    buf = read_weights(path, mv.listing.files["weights.safetensors"], strategy=strategy)  # type: ignore[arg-type]
    assert buf.data.tobytes() == path.read_bytes()
    assert buf.verified == "blake3"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_corruption_is_caught_while_reading(staged: Path, strategy: str) -> None:
    mv = ModelRepository(staged).open("ident")
    path = mv.path / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=rf"{path.name}: BLAKE3 checksum mismatch"):
        read_weights(path, mv.listing.files["weights.safetensors"], strategy=strategy)  # type: ignore[arg-type]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_sha256_used_when_no_fast_digest(staged: Path, strategy: str) -> None:
    mv = ModelRepository(staged).open("ident")
    entry = mv.listing.files["weights.safetensors"]
    sha_only = CheckedFile(entry.name, entry.size, entry.sha256, None)
    buf = read_weights(mv.path / entry.name, sha_only, strategy=strategy)  # type: ignore[arg-type]
    assert buf.verified == "sha256"
    bad = CheckedFile(entry.name, entry.size, "0" * 64, None)
    with pytest.raises(IntegrityError, match="SHA-256 checksum mismatch"):
        read_weights(mv.path / entry.name, bad, strategy=strategy)  # type: ignore[arg-type]


def test_size_only_is_reported(staged: Path) -> None:
    mv = ModelRepository(staged).open("ident")
    entry = mv.listing.files["weights.safetensors"]
    assert read_weights(mv.path / entry.name, entry, verify=False).verified == "size"


def test_read_range(staged: Path) -> None:
    path = staged / "ident" / "1" / "weights.safetensors"
    assert read_range(path, 256, 10).tobytes() == path.read_bytes()[256:266]
    with pytest.raises(IntegrityError, match="unexpected end of file"):
        read_range(path, path.stat().st_size - 2, 10)
