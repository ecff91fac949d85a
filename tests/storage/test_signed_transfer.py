"""``podserve keygen`` → ``stage`` → ``sign`` → ``push`` → ``pull`` → ``serve``, through the CLI.

The bucket is a real S3 endpoint (moto on loopback); the pulling side and the server require
a signature from the trusted key, as a cluster with PODSERVE_REQUIRE_SIGNATURE=true would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import boto3
import httpx
import pytest

from tests.storage.transfer_servers import free_port, s3_env

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podserve", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=180,
    )


def ok(*args: str, env: dict[str, str]) -> str:
    proc = cli(*args, env=env)
    assert proc.returncode == 0, f"podserve {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@dataclass
class Publisher:
    env: dict[str, str]  # the publisher's (S3 credentials)
    cluster: dict[str, str]  # the cluster's: trusted key, signatures required
    version: Path  # the staged, signed version


@pytest.fixture
def publisher(tmp_path: Path, moto_endpoint: str, s3_bucket: str) -> Publisher:
    """A signing key, a staged and signed version, and the environments of both sides."""
    env = s3_env(moto_endpoint)
    keys = tmp_path / "keys"
    out = ok("keygen", str(keys / "release"), env=env)
    assert "release.key" in out
    assert oct((keys / "release.key").stat().st_mode & 0o777) == "0o600"
    trusted = tmp_path / "trusted"  # what the cluster mounts: the public key only
    trusted.mkdir()
    (keys / "release.pub").rename(trusted / "release.pub")
    src = tmp_path / "src"
    src.mkdir()
    (src / "weights.txt").write_text("identity: no weights\n")
    version = tmp_path / "staging" / "ident" / "1"
    ok(
        "stage", str(src), str(version), "--runtime", "python",
        "--input", "INPUT0:FP32:4", "--output", "OUTPUT0:FP32:4", "--max-batch-size", "8",
        "--option", "module=tests.models:Identity",
        env=env,
    )  # fmt: skip
    signed = ok("sign", str(version), "--key", str(keys / "release.key"), env=env)
    assert f"signed ident:1: {version / 'model.sig'}" in signed
    cluster = {
        **env,
        "PODSERVE_TRUSTED_KEYS_DIR": str(trusted),
        "PODSERVE_REQUIRE_SIGNATURE": "true",
        "PODSERVE_ALLOW_VOLUME_CODE": "no",
        "PODSERVE_ALLOWED_MODULES": "tests",
    }
    return Publisher(env, cluster, version)


def test_sign_push_pull_serve_with_a_required_signature(
    tmp_path: Path, s3_bucket: str, publisher: Publisher
) -> None:
    env, cluster = publisher.env, publisher.cluster
    uri = f"s3://{s3_bucket}/ident/1"
    ok("push", str(publisher.version), uri, env=env)
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="ident/1/")
    assert {o["Key"] for o in listed["Contents"]} == {
        f"ident/1/{n}" for n in ("model.sig", "podserve.yaml", "SHA256SUMS", "weights.txt")
    }
    volume = tmp_path / "volume"
    ok("pull", uri, str(volume / "ident" / "1"), env=cluster)
    assert (volume / "ident" / "1" / "model.sig").is_file()
    verified = ok("verify", str(volume), env=cluster)
    assert "ok      ident:1" in verified
    assert "signed by release (sha256:" in verified

    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "podserve", "serve", str(volume), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(port), "--grpc-port", "0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            env={**cluster, "PODSERVE_DRAIN_GRACE_SECONDS": "0"},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                            "data": [1.0, 2.0, 3.0, 4.0]}]}  # fmt: skip
        answer = httpx.post(f"{url}/v2/models/ident/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"][0]["data"] == [1.0, 2.0, 3.0, 4.0]
        meta = httpx.get(f"{url}/v2/models/ident", timeout=5).json()
        assert meta["parameters"]["signed_by"].startswith("release (sha256:")
        assert meta["parameters"]["verified"] == "blake3"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_pull_refuses_a_tampered_bucket_before_publishing(
    tmp_path: Path, s3_bucket: str, publisher: Publisher
) -> None:
    env, cluster = publisher.env, publisher.cluster
    version = publisher.version
    uri = f"s3://{s3_bucket}/ident/1"
    ok("push", str(version), uri, env=env)
    s3 = boto3.client("s3")
    manifest = (version / "podserve.yaml").read_text()
    tampered = manifest.replace("tests.models:Identity", "subprocess:Popen")
    s3.put_object(Bucket=s3_bucket, Key="ident/1/podserve.yaml", Body=tampered.encode())
    dest = tmp_path / "volume" / "ident" / "1"
    refused = cli("pull", uri, str(dest), env=cluster)
    assert refused.returncode == 4, refused.stderr
    assert "podserve.yaml: modified after signing" in refused.stderr
    assert not dest.exists()
    assert not [p for p in dest.parent.iterdir() if not p.name.startswith(".pull-")]


def test_pull_refuses_an_unsigned_version_when_signatures_are_required(
    tmp_path: Path, s3_bucket: str, publisher: Publisher
) -> None:
    env, cluster = publisher.env, publisher.cluster
    version = publisher.version
    (version / "model.sig").unlink()
    uri = f"s3://{s3_bucket}/ident/1"
    ok("push", str(version), uri, env=env)
    dest = tmp_path / "volume" / "ident" / "1"
    refused = cli("pull", uri, str(dest), env=cluster)
    assert refused.returncode == 4, refused.stderr
    assert "unsigned (model.sig missing) and PODSERVE_REQUIRE_SIGNATURE is set" in refused.stderr
    assert not dest.exists()
    # without the requirement (and without keys) the same pull succeeds
    plain = {k: v for k, v in cluster.items() if "SIGNATURE" not in k and "KEYS" not in k}
    ok("pull", uri, str(dest), env=plain)
    assert (dest / "weights.txt").is_file()


def test_pull_refuses_a_linked_model_directory(
    tmp_path: Path, s3_bucket: str, publisher: Publisher
) -> None:
    env, cluster = publisher.env, publisher.cluster
    uri = f"s3://{s3_bucket}/ident/1"
    ok("push", str(publisher.version), uri, env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "volume").mkdir()
    os.symlink(elsewhere, tmp_path / "volume" / "ident")
    refused = cli("pull", uri, str(tmp_path / "volume" / "ident" / "1"), env=cluster)
    assert refused.returncode == 4, refused.stderr
    assert "the model directory is a symbolic link" in refused.stderr
    assert list(elsewhere.iterdir()) == []
