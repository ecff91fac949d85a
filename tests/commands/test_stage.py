"""``podserve stage`` as a user runs it (and ``verify`` on what it wrote)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from podserve.cli import main
from podserve.storage.repository import ModelRepository


def test_stage_then_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(b"\x08\x01" * 100)
    (src / ".gitattributes").write_text("*.onnx lfs")  # not staged
    dest = tmp_path / "root" / "m" / "3"
    rc = main(
        [
            "stage",
            str(src),
            str(dest),
            "--runtime",
            "onnx",
            "--input",
            "x:FP32:4",
            "--output",
            "y:FP32:4",
            "--max-batch-size",
            "16",
            "--option",
            "intra_op_threads=2",
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in dest.iterdir()) == ["SHA256SUMS", "model.onnx", "podserve.yaml"]
    mv = ModelRepository(tmp_path / "root").verify("m")
    assert mv.manifest.options == {"intra_op_threads": 2}
    assert mv.manifest.max_batch_size == 16
    # sha256sum -c agrees with what we wrote (interoperability)
    subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=dest, check=True)
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "root")]) == 0
    out = capsys.readouterr().out
    assert "ok      m:3: manifest (runtime onnx), 1 files, 0.0 MB, BLAKE3 digests checked" in out
    assert main(["verify", str(tmp_path / "root"), "m:3", "--sha256"]) == 0
    assert "SHA-256 digests checked" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "root"), "m", "--size-only"]) == 0
    assert "sizes only (digests NOT checked)" in capsys.readouterr().out


def test_stage_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "w.onnx"
    f.write_bytes(b"1")
    args = [
        "stage",
        str(f),
        str(tmp_path / "r" / "m" / "1"),
        "--runtime",
        "onnx",
        "--input",
        "x:FP32:1",
        "--output",
        "y:FP32:1",
    ]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0


def test_stage_rejects_bad_manifest_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "w.onnx"
    f.write_bytes(b"1")
    rc = main(
        [
            "stage",
            str(f),
            str(tmp_path / "r" / "m" / "1"),
            "--runtime",
            "onnx",
            "--input",
            "x:FLOAT:1",
            "--output",
            "y:FP32:1",
        ]
    )
    assert rc == 4
    assert "invalid field 'inputs.0.datatype'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "m" / "1").exists()
