"""The whole store works with the model root mounted read-only, and never writes to it."""

from __future__ import annotations

import asyncio
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from podserve.dataplane import DataPlane
from podserve.runtime.model import Model
from podserve.settings import Settings
from podserve.storage.reader import read_weights
from podserve.storage.repository import ModelRepository
from podserve.v2 import InferRequest, InferTensor


@pytest.fixture
def readonly_root(staged: Path, tmp_path: Path) -> Iterator[Path]:
    """A read-only bind mount of the staged root (as a ReadOnlyMany volume is mounted)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(staged), str(mnt)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot bind-mount here (needs root or CAP_SYS_ADMIN): {exc}")
    try:
        subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(mnt)], check=True, capture_output=True
        )
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_writes_are_really_denied(readonly_root: Path) -> None:
    with pytest.raises(OSError, match="Read-only file system") as info:
        (readonly_root / "ident" / "probe").write_text("x")
    assert info.value.errno == errno.EROFS


@pytest.mark.parametrize("strategy", ["mmap", "read"])
def test_verify_and_read_on_readonly_root(readonly_root: Path, strategy: str) -> None:
    repo = ModelRepository(readonly_root)
    mv = repo.verify("ident")
    assert mv.version == "1"
    entry = mv.listing.files["weights.safetensors"]
    buf = read_weights(mv.path / "weights.safetensors", entry, strategy=strategy)  # type: ignore[arg-type]
    assert buf.verified == "blake3"
    if strategy == "mmap":  # the page cache, mapped read-only and shared
        assert buf.shared
        with pytest.raises(ValueError, match="read-only"):
            buf.data[0] = 7
    else:  # a private buffer of this process
        assert not buf.shared
        buf.data[0] = 7
    assert (mv.path / "weights.safetensors").read_bytes()[0] == 0
    buf.close()


class Doubler(Model):
    def load(self) -> None:
        entry = self.version.listing.files["weights.safetensors"]
        self.buf = read_weights(self.version.path / "weights.safetensors", entry)

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": inputs["x"] * 2}


def test_serving_from_readonly_root(readonly_root: Path) -> None:
    async def scenario() -> np.ndarray:
        dp = DataPlane(ModelRepository(readonly_root), Settings(), factory=Doubler)
        await dp.start([])
        assert dp.ready(), dp.not_ready_reason()
        x = np.ones((1, 4), np.float32)
        resp = await dp.infer(InferRequest("ident", [InferTensor("x", "FP32", (1, 4), x)]))
        await dp.stop()
        return resp.outputs[0].data

    np.testing.assert_array_equal(asyncio.run(scenario()), np.full((1, 4), 2, np.float32))
