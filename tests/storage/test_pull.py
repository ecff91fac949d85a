"""``podserve pull`` against real servers: moto S3 over HTTP, a local HTTP server, a path."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from podserve.errors import (
    IntegrityError,
    InvalidNameError,
    PermanentTransferError,
    RepositoryError,
    UnsafeWeightsError,
)
from podserve.storage.pull import pull
from podserve.storage.push import push
from podserve.storage.repository import ModelRepository
from podserve.storage.sources.base import SourceOptions, redact
from tests.storage.transfer_servers import MANIFEST, RangeServer, free_port, make_model, s3_env

WEIGHTS = os.urandom(3 * 1024 * 1024 + 17)
FILES = {"model.safetensors": WEIGHTS, "config.json": b'{"a": 1}', "sub/vocab.txt": b"a\nb\n"}
MiB = 1024 * 1024


class Lines:
    """A reporter that keeps what it was told."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.advanced = 0

    def start(self, total: int, done: int) -> None: ...
    def advance(self, nbytes: int) -> None:
        self.advanced += nbytes

    def message(self, text: str) -> None:
        self.messages.append(text)

    def finish(self) -> None: ...


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podserve", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def assert_same(dest: Path, files: dict[str, bytes]) -> None:
    for rel, content in files.items():
        assert (dest / rel).read_bytes() == content
    ModelRepository(dest.parent.parent).verify(dest.parent.name, dest.name)


def test_pull_from_s3_is_verified_atomic_and_idempotent(tmp_path: Path, s3_bucket: str) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    push(src, f"s3://{s3_bucket}/m/1")
    dest = tmp_path / "models" / "m" / "1"
    first = pull(f"s3://{s3_bucket}/m/1", dest, part_size=MiB, concurrency=4)
    assert not first.already_present
    assert first.fetched_bytes == first.total_bytes
    assert_same(dest, FILES)
    assert sorted(p.name for p in dest.parent.iterdir()) == [".pull-1.lock", "1"]
    again = pull(f"s3://{s3_bucket}/m/1", dest)
    assert again.already_present
    assert again.fetched_bytes == 0


def test_checksum_mismatch_names_the_file_and_publishes_nothing(
    tmp_path: Path, s3_bucket: str
) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    push(src, f"s3://{s3_bucket}/m/1")
    tampered = bytearray(WEIGHTS)
    tampered[2 * MiB + 5] ^= 0xFF  # same size, one byte flipped, in a later part
    boto3.client("s3").put_object(
        Bucket=s3_bucket, Key="m/1/model.safetensors", Body=bytes(tampered)
    )
    dest = tmp_path / "models" / "m" / "1"
    for sha256 in (False, True):
        with pytest.raises(IntegrityError, match=r"model\.safetensors: (BLAKE3|SHA-256) checksum"):
            pull(f"s3://{s3_bucket}/m/1", dest, part_size=MiB, force_sha256=sha256)
        assert not dest.exists()
        assert ModelRepository(dest.parent.parent).versions("m") == []


def test_local_manifest_size_mismatch_refused(tmp_path: Path) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    (src / "config.json").write_bytes(b'{"a": 12}')
    dest = tmp_path / "models" / "m" / "1"
    with pytest.raises(IntegrityError, match=r"config\.json: size mismatch"):
        pull(str(src), dest)
    assert not dest.exists()


def test_pull_from_plain_http_server_and_local_path(tmp_path: Path) -> None:
    src = make_model(tmp_path / "staged" / "m" / "3", FILES)
    with RangeServer(tmp_path / "staged", ranges=False) as server:
        dest = tmp_path / "models" / "m" / "3"
        pull(f"{server.url}/m/3/", dest, part_size=MiB)
        assert_same(dest, FILES)
    dest2 = tmp_path / "models" / "n" / "1"
    pull(f"file://{src}", dest2)
    assert_same(dest2, FILES)


def test_transient_errors_are_retried_permanent_ones_are_not(tmp_path: Path) -> None:
    make_model(tmp_path / "staged" / "m" / "1", FILES)
    with RangeServer(tmp_path / "staged") as server:
        server.fail["model.safetensors"] = [503, 500]  # HEAD then one GET part fail
        lines = Lines()
        pull(f"{server.url}/m/1", tmp_path / "models" / "m" / "1", part_size=MiB, reporter=lines)
        assert any("503" in m for m in lines.messages) or any("500" in m for m in lines.messages)
        server.fail["SHA256SUMS"] = [403]
        with pytest.raises(PermanentTransferError, match=r"access denied \(403\)"):
            pull(f"{server.url}/m/1", tmp_path / "models" / "m" / "2")
        assert not (tmp_path / "models" / "m" / ".tmp-2").exists()


def test_s3_not_found_is_a_clear_permanent_error(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    result = run_cli(
        "pull",
        f"s3://{s3_bucket}/nope/1",
        str(tmp_path / "models" / "m" / "1"),
        env=s3_env(moto_endpoint),
    )
    assert result.returncode == PermanentTransferError.exit_code
    assert "not found (404)" in result.stderr
    assert "nope/1/SHA256SUMS" in result.stderr


def test_wrong_credentials_are_denied_and_never_printed(tmp_path: Path) -> None:
    """A second moto server that enforces authentication: unknown keys get 403."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                import urllib.request

                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        secret = "Sup3rS3cretValue-do-not-print"
        creds = tmp_path / "secret"
        creds.mkdir()
        (creds / "AWS_ACCESS_KEY_ID").write_text("AKIAWRONGKEY0000000\n")
        (creds / "AWS_SECRET_ACCESS_KEY").write_text(secret + "\n")
        run_env = s3_env(endpoint)
        run_env["AWS_SECRET_ACCESS_KEY"] = secret
        for extra in ([], ["--credentials-dir", str(creds)]):
            result = run_cli(
                "pull",
                "s3://somebucket/m/1",
                str(tmp_path / "models" / "m" / "1"),
                "--progress",
                "log",
                *extra,
                env=run_env,
            )
            assert result.returncode == PermanentTransferError.exit_code, result.stderr
            assert "access denied (403)" in result.stderr
            assert secret not in result.stdout + result.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_credentials_dir_is_used(tmp_path: Path, s3_bucket: str, moto_endpoint: str) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    push(src, f"s3://{s3_bucket}/m/1")
    creds = tmp_path / "secret"
    creds.mkdir()
    (creds / "aws_access_key_id").write_text("testing")
    (creds / "aws_secret_access_key").write_text("testing")
    env = s3_env(moto_endpoint)
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    dest = tmp_path / "models" / "m" / "1"
    no_creds = run_cli("pull", f"s3://{s3_bucket}/m/1", str(dest), env=env)
    assert no_creds.returncode == PermanentTransferError.exit_code
    assert "no S3 credentials" in no_creds.stderr
    env["PODSERVE_S3_CREDENTIALS_DIR"] = str(creds)
    ok = run_cli("pull", f"s3://{s3_bucket}/m/1", str(dest), env=env)
    assert ok.returncode == 0, ok.stderr
    assert "verified" in ok.stdout
    assert "MB to transfer" in ok.stderr
    assert_same(dest, FILES)


@pytest.mark.slow
def test_killed_pull_resumes_from_written_parts(tmp_path: Path) -> None:
    big = os.urandom(24 * MiB)
    make_model(tmp_path / "staged" / "m" / "1", {"model.safetensors": big, "c.json": b"{}"})
    dest = tmp_path / "models" / "m" / "1"
    journal = dest.parent / ".tmp-1" / "journal.jsonl"
    with RangeServer(tmp_path / "staged") as server:
        server.delay_per_mb = 0.15  # ~7 MB/s per connection: ~1.7 s for 24 MiB over 2
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "podserve",
                "pull",
                f"{server.url}/m/1",
                str(dest),
                "--part-size-mb",
                "1",
                "--concurrency",
                "2",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count('"f": "model') >= 6:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert not dest.exists()
        kept = [json.loads(line) for line in journal.read_text().splitlines()[1:]]
        kept_bytes = sum(r["e"] - r["s"] for r in kept if r["f"] == "model.safetensors")
        assert 6 * MiB <= kept_bytes < len(big)
        server.delay_per_mb = 0.0
        time.sleep(0.3)  # let the server threads of the killed connections notice
        sent_before = server.bytes_sent
        lines = Lines()
        result = pull(f"{server.url}/m/1", dest, part_size=MiB, concurrency=2, reporter=lines)
        fetched_again = server.bytes_sent - sent_before
    assert result.fetched_bytes == result.total_bytes - kept_bytes - 2 * (
        any(r["f"] == "c.json" for r in kept)
    )
    # Only the missing parts travel again (plus metadata, plus what the killed connections'
    # server threads may still have been writing when we started counting).
    assert fetched_again <= len(big) - kept_bytes + 512 * 1024
    assert any("resuming" in m for m in lines.messages)
    assert_same(dest, {"model.safetensors": big})
    assert not journal.parent.exists()


@pytest.mark.slow
def test_concurrent_pulls_of_one_version(
    tmp_path: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    files = {"model.safetensors": os.urandom(16 * MiB), "c.json": b"{}"}
    push(make_model(tmp_path / "staged" / "m" / "1", files), f"s3://{s3_bucket}/m/1")
    dest = tmp_path / "models" / "m" / "1"
    env = s3_env(moto_endpoint)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "podserve",
                "pull",
                f"s3://{s3_bucket}/m/1",
                str(dest),
                "--part-size-mb",
                "2",
                "--progress",
                "log",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stdout = "".join(o[0] for o in outs)
    assert stdout.count("pulled ") == 1
    assert stdout.count("already present and verified") == 1
    assert_same(dest, files)
    assert sorted(p.name for p in dest.parent.iterdir()) == [".pull-1.lock", "1"]


def test_archive_pull_over_http(tmp_path: Path) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="m-1")  # one top-level directory, stripped on extraction
    (tmp_path / "pub").mkdir()
    (tmp_path / "pub" / "m-1.tar.gz").write_bytes(buf.getvalue())
    with RangeServer(tmp_path / "pub") as server:
        dest = tmp_path / "models" / "m" / "1"
        pull(f"{server.url}/m-1.tar.gz", dest, part_size=64 * 1024)
    assert_same(dest, FILES)
    assert not (dest.parent / ".tmp-1").exists()


def test_names_and_pickles_are_refused(tmp_path: Path) -> None:
    src = make_model(tmp_path / "staged" / "m" / "1", FILES)
    for bad in ("../1", "m/..", "m/0", "m/latest", "bad name/1"):
        with pytest.raises(InvalidNameError):
            pull(str(src), tmp_path / "models" / bad)
    with pytest.raises(UnsafeWeightsError):  # stage refuses it as verify and serve do
        make_model(tmp_path / "staged" / "p" / "1", {"model.bin": b"x"})
    # a hand-made version with a pickle (manifest without allow_torch_load): pull refuses it
    pickled = tmp_path / "staged" / "p" / "1"
    pickled.mkdir(parents=True)
    (pickled / "model.bin").write_bytes(b"x")
    (pickled / "SHA256SUMS").write_text(f"{hashlib.sha256(b'x').hexdigest()}  model.bin\n")
    (pickled / "podserve.yaml").write_text(yaml.safe_dump(MANIFEST))
    with pytest.raises(UnsafeWeightsError):
        pull(str(pickled), tmp_path / "models" / "p" / "1")
    assert not (tmp_path / "models" / "p" / "1").exists()


def test_redact_hides_credentials_in_uris() -> None:
    uri = "https://user:pa55@host/m.tar?X-Amz-Signature=abc&X-Amz-Credential=k&v=1"
    shown = redact(uri)
    assert "pa55" not in shown
    assert "abc" not in shown
    assert "=k" not in shown
    assert "v=1" in shown
    assert SourceOptions().credentials_dir is None


@pytest.fixture
def tiny_volume(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs with room for 12 inodes (root only): it fills up in the middle of a pull."""
    mnt = tmp_path / "volume"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=10m,nr_inodes=12", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_a_full_volume_is_a_clear_error_and_nothing_is_published(
    tmp_path: Path, tiny_volume: Path
) -> None:
    files = {f"w{i}.txt": os.urandom(1000) for i in range(8)}
    src = make_model(tmp_path / "staged" / "m" / "1", files)
    dest = tiny_volume / "models" / "m" / "1"
    done = run_cli("pull", str(src), str(dest))
    assert done.returncode == RepositoryError.exit_code == 3, done.stderr
    assert "No space left on device" in done.stderr
    assert "nothing was published" in done.stderr
    assert "Traceback" not in done.stderr
    assert not dest.exists()
