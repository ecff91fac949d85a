"""``pull --policy if-not-present``: a version the node vouches for is kept without asking
the source; anything else goes to the source as with ``always``.

What the source was asked is counted on the wire (a proxy in front of moto S3), and a pull
that must not ask it is also run against a closed port, in a process whose imported
modules are inspected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from podserve.errors import ConfigurationError, IntegrityError, SignatureError
from podserve.storage.cache import NodeCache
from podserve.storage.pull import pull
from podserve.storage.push import push
from podserve.storage.signature import TrustPolicy, load_trusted_keys, sign_version
from podserve.storage.sources.base import SourceOptions
from tests.storage.test_cache import SMALL_OVERHEAD, publish, pulled_once, shards, verified
from tests.storage.test_cache_stamp import Lines, keys_of, overwrite_in_place
from tests.storage.test_signature import make_key
from tests.storage.transfer_servers import CountingProxy, free_port, make_model, s3_env

REPO = Path(__file__).resolve().parents[2]
KEPT = "no request was made to the source"

# Runs `podserve pull` in this process, then reports which remote clients it imported.
PULL_AND_REPORT = """
import json, sys
from podserve.cli import main
rc = main(sys.argv[1:])
remote = sorted(m for m in ("s3fs", "aiobotocore", "botocore", "aiohttp") if m in sys.modules)
print(json.dumps({"rc": rc, "imported": remote}))
"""


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[CountingProxy]:
    with CountingProxy(moto_endpoint) as p:
        yield p


def cli_pull(*args: str, env: dict[str, str]) -> tuple[dict[str, object], str]:
    """``podserve pull ARGS`` in a fresh process: ({rc, imported remote clients}, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-c", PULL_AND_REPORT, "pull", "--progress", "log", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    report: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, proc.stderr


def test_a_present_version_is_kept_without_a_request_or_the_remote_backend(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy, moto_endpoint: str
) -> None:
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    proxy.reset()
    lines = Lines()
    kept = pull(uri, first, options=options, cache=cache, policy="if-not-present", reporter=lines)
    assert proxy.bytes_down == 0
    assert (kept.already_present, kept.asked_source, kept.fetched_bytes) == (True, False, 0)
    assert any(KEPT in m for m in lines.messages), lines.messages
    assert cache.hashed == []  # every file still the blob the cache stamped

    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens: any request would fail
    env = {**os.environ, **s3_env(closed), "PYTHONPATH": str(REPO / "src")}
    args = (uri, str(first), "--cache", str(cache.directory), "--endpoint-url", closed)
    report, stderr = cli_pull(*args, "--policy", "if-not-present", env=env)
    assert report == {"rc": 0, "imported": []}, stderr
    assert KEPT in stderr
    report, stderr = cli_pull(*args, env={**env, "PODSERVE_PULL_POLICY": "if-not-present"})
    assert report == {"rc": 0, "imported": []}, stderr

    proxy.reset()  # the default still asks (one small request), and imports the backend
    env = {**env, **s3_env(moto_endpoint)}
    args = (uri, str(first), "--cache", str(cache.directory), "--endpoint-url", proxy.url)
    report, stderr = cli_pull(*args, env=env)
    assert report["rc"] == 0, stderr
    assert "s3fs" in str(report["imported"])
    assert 0 < proxy.bytes_down < SMALL_OVERHEAD


def test_a_version_republished_at_its_uri_is_not_noticed_where_present(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """The trade-off, as with a mutable image tag and IfNotPresent: the node keeps the bytes
    it verified, which the URI no longer names (``always`` refuses: test_cache.py)."""
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    push(make_model(tmp_path / "again" / "m" / "1", shards(changed=2)), uri, force=True)
    kept = pull(uri, first, options=options, cache=cache, policy="if-not-present")
    assert not kept.asked_source
    assert (first / "model-2.safetensors").read_bytes() == shards()["model-2.safetensors"]
    with pytest.raises(IntegrityError, match="already exists with other content"):
        pull(uri, first, options=options, cache=cache, policy="always")


def test_a_file_changed_since_verified_goes_to_the_source(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    uri, options, cache, first = pulled_once(tmp_path, s3_bucket, proxy)
    touched = first / "model-1.safetensors"
    touched.chmod(0o444)  # same mode, same bytes: only the change time moves
    proxy.reset()
    lines = Lines()
    again = pull(uri, first, options=options, cache=cache, policy="if-not-present", reporter=lines)
    assert again.asked_source
    assert again.already_present
    assert 0 < proxy.bytes_down < SMALL_OVERHEAD  # the checksums only: the bytes still match
    assert cache.hashed == [keys_of(first)["model-1.safetensors"]]
    assert any("model-1.safetensors is not the file the node cache verified" in m
               for m in lines.messages)  # fmt: skip
    proxy.reset()  # hashed and stamped again: the next pull keeps it without asking
    assert not pull(uri, first, options=options, cache=cache, policy="if-not-present").asked_source
    assert proxy.bytes_down == 0

    overwrite_in_place(first / "model-0.safetensors", 5)  # other bytes, same inode
    proxy.reset()
    with pytest.raises(IntegrityError, match=r"model-0\.safetensors: BLAKE3 checksum mismatch"):
        pull(uri, first, options=options, cache=cache, policy="if-not-present")
    assert proxy.bytes_down > 0  # refused as always refuses it, after asking the source


def test_a_partial_version_is_not_present(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    uri, options, cache, _first = pulled_once(tmp_path, s3_bucket, proxy)
    second = tmp_path / "b" / "m" / "1"  # absent here, every blob in the cache: linked
    proxy.reset()
    pulled = pull(uri, second, options=options, cache=cache, policy="if-not-present")
    assert pulled.asked_source
    assert not pulled.already_present
    assert 0 < proxy.bytes_down < SMALL_OVERHEAD
    verified(second)

    second.chmod(0o755)
    (second / "model-3.safetensors").unlink()  # a version directory missing a file
    proxy.reset()
    lines = Lines()
    with pytest.raises(IntegrityError, match=r"model-3\.safetensors"):
        pull(uri, second, options=options, cache=cache, policy="if-not-present", reporter=lines)
    assert proxy.bytes_down > 0
    assert any("asking the source" in m for m in lines.messages), lines.messages


def test_rehash_goes_to_the_source(tmp_path: Path, s3_bucket: str, proxy: CountingProxy) -> None:
    uri, options, _, first = pulled_once(tmp_path, s3_bucket, proxy)
    cache = NodeCache(tmp_path / "cache", rehash=True)
    proxy.reset()
    again = pull(uri, first, options=options, cache=cache, policy="if-not-present")
    assert again.asked_source
    assert 0 < proxy.bytes_down < SMALL_OVERHEAD
    assert set(cache.hashed) == set(keys_of(first).values())
    assert len(cache.hashed) == 4


def test_without_a_cache_every_file_is_hashed_instead(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    uri = publish(tmp_path, s3_bucket, "1", shards())
    options = SourceOptions(endpoint_url=proxy.url)
    dest = tmp_path / "a" / "m" / "1"
    pull(uri, dest, options=options)
    proxy.reset()
    assert not pull(uri, dest, options=options, policy="if-not-present").asked_source
    assert proxy.bytes_down == 0
    overwrite_in_place(dest / "model-2.safetensors", 9)
    with pytest.raises(IntegrityError, match=r"model-2\.safetensors: BLAKE3 checksum mismatch"):
        pull(uri, dest, options=options, policy="if-not-present")
    assert proxy.bytes_down > 0


def test_the_local_signature_is_checked_with_the_trusted_keys(
    tmp_path: Path, s3_bucket: str, proxy: CountingProxy
) -> None:
    """The present path checks the version's own model.sig (the always path does the same:
    it asks the source for SHA256SUMS only); a version the keys do not vouch for goes to the
    source, and is refused as always refuses it."""
    key, _ = make_key(tmp_path / "trusted", "release")
    staged = make_model(tmp_path / "staged" / "m" / "1", shards())
    sign_version(staged, key)
    uri = f"s3://{s3_bucket}/m/1"
    push(staged, uri)
    options = SourceOptions(endpoint_url=proxy.url)
    trust = TrustPolicy(load_trusted_keys(tmp_path / "trusted"), require=True)
    cache = NodeCache(tmp_path / "cache")
    dest = tmp_path / "a" / "m" / "1"
    pull(uri, dest, options=options, cache=cache, trust=trust)
    proxy.reset()
    kept = pull(uri, dest, options=options, cache=cache, trust=trust, policy="if-not-present")
    assert not kept.asked_source
    assert proxy.bytes_down == 0

    make_key(tmp_path / "other", "someone")
    stranger = TrustPolicy(load_trusted_keys(tmp_path / "other"), require=True)
    with pytest.raises(SignatureError):
        pull(uri, dest, options=options, cache=cache, trust=stranger, policy="if-not-present")
    assert proxy.bytes_down > 0


def test_an_unknown_policy_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown pull policy 'sometimes'"):
        pull(str(tmp_path / "src"), tmp_path / "m" / "1", policy="sometimes")  # type: ignore[arg-type]
    src = make_model(tmp_path / "staged" / "m" / "1", shards())
    dest = str(tmp_path / "models" / "m" / "1")
    command = [sys.executable, "-m", "podserve", "pull", str(src), dest]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    for extra, extra_env, expected in [
        (["--policy", "sometimes"], {}, "invalid choice: 'sometimes'"),
        ([], {"PODSERVE_PULL_POLICY": "sometimes"}, "PODSERVE_PULL_POLICY"),
    ]:
        proc = subprocess.run(
            [*command, *extra], capture_output=True, text=True, env={**env, **extra_env},
            timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc
        assert expected in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not Path(dest).exists()


def test_the_policy_values_are_the_same_for_the_flag_the_setting_and_the_pull() -> None:
    """Written out three times so that `--help` and Settings import no storage code."""
    import argparse
    from typing import get_args

    from podserve.cli import build_parser
    from podserve.settings import Settings
    from podserve.storage.pull_policy import PULL_POLICIES

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flag = next(a for a in commands.choices["pull"]._actions if a.dest == "policy")
    assert tuple(flag.choices or ()) == PULL_POLICIES
    assert get_args(Settings.model_fields["pull_policy"].annotation) == PULL_POLICIES
