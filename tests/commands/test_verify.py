"""``podserve verify`` as a user runs it: a damaged or missing model, each with its exit code."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from podserve.storage.staging import stage_model


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


def _verify(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podserve", "verify", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
    )


def _torch_version(root: Path, name: str, options: dict[str, object], tmp_path: Path) -> Path:
    src = tmp_path / "w.safetensors"
    src.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    manifest = {
        "runtime": "torch",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
        "options": options,
    }
    stage_model({"w.safetensors": src}, root / name / "1", manifest)
    return root / name / "1"


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({}, r"podserve\.yaml: invalid field 'options\.module': 'package\.module:Class'"),
        ({"module": "net.py:Net"}, r"invalid field 'options\.module': net\.py is not a file of"),
        ({"module": "subprocess:Popen"}, r"module 'subprocess' is not allowed"),
        (
            {"module": "tests.models:X", "weights": "gone.safetensors"},
            r"gone\.safetensors not found",
        ),
        ({"module": "tests.models:X", "kwargs": {"when": "2024-01-01"}}, None),
    ],
)
def test_verify_refuses_what_serve_refuses_before_reading_weights(
    tmp_path: Path, options: dict[str, object], reason: str | None
) -> None:
    """Until now a torch manifest without options.module verified "ok" and failed at load."""
    root = tmp_path / "root"
    _torch_version(root, "m", options, tmp_path)
    proc = _verify(str(root), "m", PODSERVE_ALLOW_VOLUME_CODE="yes")
    if reason is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 4, proc.stdout
    assert re.search(reason, proc.stderr), proc.stderr


def test_verify_refuses_volume_code_unless_allowed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    src = tmp_path / "net.py"
    src.write_text("class Net: ...\n")
    manifest = {
        "runtime": "python",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
        "options": {"module": "net.py:Net"},
    }
    stage_model({"net.py": src}, root / "m" / "1", manifest)
    refused = _verify(str(root), PODSERVE_ALLOW_VOLUME_CODE="no")
    assert refused.returncode == 4
    assert "net.py is code from the model volume and volume code is not allowed" in refused.stderr
    assert _verify(str(root), PODSERVE_ALLOW_VOLUME_CODE="yes").returncode == 0


@pytest.mark.parametrize("level", ["model", "version"])
def test_verify_refuses_linked_directories(staged: Path, level: str) -> None:
    if level == "model":
        os.symlink(staged / "ident", staged / "alias")
        link, args = staged / "alias", [str(staged), "alias"]
    else:
        os.symlink("1", staged / "ident" / "5")
        link, args = staged / "ident" / "5", [str(staged), "ident:5"]
    proc = _verify(*args)
    assert proc.returncode == 4
    assert f"{link}: the {level} directory is a symbolic link" in proc.stderr
    every = _verify(str(staged))  # all models: the link is reported, not skipped
    assert every.returncode == 4
    assert f"{link}: the {level} directory is a symbolic link" in every.stderr
