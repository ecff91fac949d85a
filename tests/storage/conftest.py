"""Fixtures for the model repository: a small staged model to break in precise ways."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from podserve.storage.staging import stage_model

IDENT_MANIFEST = {
    "runtime": "python",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
    "max_batch_size": 8,
    "options": {"module": "tests.models:Identity"},
}


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    """``<root>/ident/1`` with two files (one nested); returns the repository root."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "weights.safetensors").write_bytes(bytes(range(256)) * 64)
    (src / "sub" / "config.json").write_text('{"a": 1}')
    root = tmp_path / "root"
    files = {
        "weights.safetensors": src / "weights.safetensors",
        "sub/config.json": src / "sub" / "config.json",
    }
    stage_model(files, root / "ident" / "1", IDENT_MANIFEST)
    return root


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory that other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="podserve-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def staged_open(staged: Path, open_tmp: Path) -> Path:
    """The staged repository copied under a traversable directory."""
    root = open_tmp / "root"
    shutil.copytree(staged, root)
    for p in [root, *root.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return root


# --- pull / push: a real S3 endpoint (moto server over HTTP on loopback) ---------------------


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto S3 server for the session; tests use their own bucket."""
    from moto.server import ThreadedMotoServer

    from tests.storage.transfer_servers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> str:
    """A fresh bucket on the moto endpoint, with this process's AWS_* pointing at it."""
    import re

    import boto3

    from tests.storage.transfer_servers import s3_env

    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3_env(moto_endpoint).items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
