"""``podserve verify`` as a user runs it: a damaged or missing model, each with its exit code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_verify_exits_nonzero_with_the_reason(staged: Path) -> None:
    weights = staged / "ident" / "1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[5] ^= 1
    weights.write_bytes(bytes(data))
    proc = subprocess.run(
        [sys.executable, "-m", "podserve", "verify", str(staged), "ident"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 4
    assert f"FAILED  ident:1: {weights}: BLAKE3 checksum mismatch" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "podserve", "verify", str(staged / "nope")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 3
    assert "does not exist (volume not mounted?)" in missing.stderr
