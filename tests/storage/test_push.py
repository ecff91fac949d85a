"""``podserve push``: verify, upload (checksums last), refuse to clobber, round trip."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest

from podserve.errors import IntegrityError, PermanentTransferError
from podserve.storage.pull import pull
from podserve.storage.push import push
from podserve.storage.repository import ModelRepository
from tests.storage.test_pull import run_cli
from tests.storage.transfer_servers import make_model, s3_env

FILES = {"model.safetensors": os.urandom(2 * 1024 * 1024), "tok/vocab.txt": b"a\nb\n"}


def test_push_pull_round_trip_through_the_cli(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    src = make_model(tmp_path / "staged" / "bert" / "7", FILES)
    env = s3_env(moto_endpoint)
    out = run_cli("push", str(src), f"s3://{s3_bucket}/models/bert/7", env=env)
    assert out.returncode == 0, out.stderr
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert keys == {f"models/bert/7/{n}" for n in [*FILES, "podserve.yaml", "SHA256SUMS"]}
    again = run_cli("push", str(src), f"s3://{s3_bucket}/models/bert/7", env=env)
    assert again.returncode == 0
    assert "already holds this version" in again.stdout
    dest = tmp_path / "volume" / "bert" / "7"
    got = run_cli("pull", f"s3://{s3_bucket}/models/bert/7", str(dest), env=env)
    assert got.returncode == 0, got.stderr
    ModelRepository(dest.parent.parent).verify("bert", "7")
    for rel, content in FILES.items():
        assert (dest / rel).read_bytes() == content


def test_push_verifies_first_and_refuses_to_clobber(tmp_path: Path, s3_bucket: str) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    other = make_model(tmp_path / "staged" / "m" / "2", {"model.safetensors": b"other"})
    push(src, f"s3://{s3_bucket}/m")
    with pytest.raises(PermanentTransferError, match="different model version"):
        push(other, f"s3://{s3_bucket}/m")
    push(other, f"s3://{s3_bucket}/m", force=True)
    pull(f"s3://{s3_bucket}/m", tmp_path / "vol" / "m" / "2")
    assert (tmp_path / "vol" / "m" / "2" / "model.safetensors").read_bytes() == b"other"
    (src / "model.safetensors").write_bytes(b"\0" * len(FILES["model.safetensors"]))
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        push(src, f"s3://{s3_bucket}/corrupt")
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="corrupt")
