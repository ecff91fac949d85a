"""Attacks on the model volume, against a real ``podserve serve`` process.

One server requires signatures (a trusted key in PODSERVE_TRUSTED_KEYS_DIR), allows no
volume code and imports only ``tests`` (the suite's model classes, as if installed in the
image). Beside one good signed model, each other model is one attack. Every attack must be
refused with its precise reason while the server stays up and serves the good model
(THREAT_MODEL.md names these tests).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from podserve.storage.integrity import digest_files, format_sums
from podserve.storage.signature import sign_version
from podserve.storage.staging import stage_model
from tests.models import MODELS
from tests.storage.test_signature import make_key
from tests.storage.transfer_servers import free_port

REPO = Path(__file__).resolve().parents[1]
IDENTITY = {"runtime": "python", **MODELS["identity"][1]}
GOOD = {**IDENTITY, "options": {"module": "tests.models:Identity"}}

MARKER_PY = """
import pathlib
pathlib.Path({marker!r}).write_text("model.py ran")

class Echo:
    def infer(self, inputs):
        return {{"OUTPUT0": inputs["INPUT0"]}}
"""


@dataclass
class Attack:
    model: str
    reason: str  # a substring of the refusal the server reports


@dataclass
class Server:
    url: str
    root: Path
    markers: Path
    log: Path


def _stage(root: Path, name: str, files: dict[str, Path], manifest: dict[str, object]) -> Path:
    dest = root / name / "1"
    stage_model(files, dest, manifest)
    return dest


def _rewrite_consistently(version: Path) -> None:
    """Write access to the volume: new weights, and SHA256SUMS and manifest to match."""
    (version / "weights.txt").write_text("attacker's weights\n")
    digests = digest_files(version, ["weights.txt"])
    (version / "SHA256SUMS").write_text(format_sums({n: d[1] for n, d in digests.items()}))
    manifest = yaml.safe_load((version / "podserve.yaml").read_text())
    manifest["files"] = {n: {"size": d[0], "blake3": d[2]} for n, d in digests.items()}
    (version / "podserve.yaml").write_text(yaml.safe_dump(manifest))


def _build(tmp: Path) -> tuple[Path, Path, list[Attack]]:
    root, markers, keys = tmp / "models", tmp / "markers", tmp / "keys"
    markers.mkdir()
    release, _ = make_key(keys / "trusted", "release")
    intruder, _ = make_key(keys / "untrusted", "intruder")
    weights = tmp / "weights.txt"
    weights.write_text("test model: no weights\n")
    w = {"weights.txt": weights}

    def signed(name: str, manifest: dict[str, object], files: dict[str, Path] = w) -> Path:
        version = _stage(root, name, files, manifest)
        sign_version(version, release)
        return version

    signed("good", GOOD)
    attacks: list[Attack] = []

    popen = {"module": "subprocess:Popen", "kwargs": {"args": ["touch", str(markers / "popen")]}}
    signed("popen", {**IDENTITY, "options": popen})  # even signed: the module is not allowed
    attacks.append(Attack("popen", "module 'subprocess' is not allowed"))

    signed("outside-list", {**IDENTITY, "options": {"module": "collections:OrderedDict"}})
    attacks.append(Attack("outside-list", "module 'collections' is not allowed"))

    code = tmp / "model.py"
    code.write_text(MARKER_PY.format(marker=str(markers / "model-py")))
    signed("volume-code", {**IDENTITY, "options": {"module": "model.py:Echo"}}, {"model.py": code})
    attacks.append(Attack("volume-code", "model.py is code from the model volume"))

    _stage(root, "unsigned", w, GOOD)
    attacks.append(Attack("unsigned", "unsigned (model.sig missing)"))

    flipped = signed("flipped", GOOD)
    data = bytearray((flipped / "weights.txt").read_bytes())
    data[3] ^= 0x01
    (flipped / "weights.txt").write_bytes(bytes(data))
    attacks.append(Attack("flipped", "weights.txt: BLAKE3 checksum mismatch"))

    sign_version(_stage(root, "intruder", w, GOOD), intruder)
    attacks.append(Attack("intruder", "model.sig: signed by an unknown key"))

    _rewrite_consistently(signed("rewritten", GOOD))
    attacks.append(Attack("rewritten", "podserve.yaml: modified after signing"))

    outside = tmp / "outside"
    shutil.copytree(root / "good", outside / "good")
    os.symlink(root / "good", root / "alias-in")
    attacks.append(Attack("alias-in", "the model directory is a symbolic link"))
    os.symlink(outside / "good", root / "alias-out")
    attacks.append(Attack("alias-out", "the model directory is a symbolic link"))
    signed("version-in", GOOD)
    os.symlink("1", root / "version-in" / "2")
    attacks.append(Attack("version-in", "the version directory is a symbolic link"))
    (root / "version-out").mkdir()
    os.symlink(outside / "good" / "1", root / "version-out" / "1")
    attacks.append(Attack("version-out", "the version directory is a symbolic link"))
    return root, keys / "trusted", attacks


ATTACKS = [
    "popen",
    "outside-list",
    "volume-code",
    "unsigned",
    "flipped",
    "intruder",
    "rewritten",
    "alias-in",
    "alias-out",
    "version-in",
    "version-out",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[Attack]]]:
    tmp = tmp_path_factory.mktemp("attacks")
    root, trusted, attacks = _build(tmp)
    port = free_port()
    env = {
        **os.environ,
        "PODSERVE_TRUSTED_KEYS_DIR": str(trusted),
        "PODSERVE_REQUIRE_SIGNATURE": "true",
        "PODSERVE_ALLOW_VOLUME_CODE": "no",
        "PODSERVE_ALLOWED_MODULES": "tests",
        "PODSERVE_DRAIN_GRACE_SECONDS": "0",
    }
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "podserve", "serve", str(root), "--host", "127.0.0.1"]
    cmd += ["--http-port", str(port), "--grpc-port", "0"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/v2/models/good/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        yield Server(url, root, tmp / "markers", log), attacks
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _settled(url: str, model: str) -> httpx.Response:
    """The model's metadata once its load has finished (ready or refused)."""
    deadline = time.monotonic() + 60
    while True:
        answer = httpx.get(f"{url}/v2/models/{model}", timeout=5)
        if answer.status_code == 200 or "LOADING" not in answer.text.upper():
            return answer
        assert time.monotonic() < deadline, answer.text
        time.sleep(0.2)


@pytest.mark.parametrize("model", ATTACKS)
def test_each_attack_is_refused_with_its_reason(
    server: tuple[Server, list[Attack]], model: str
) -> None:
    srv, attacks = server
    attack = next(a for a in attacks if a.model == model)
    answer = _settled(srv.url, model)
    assert answer.status_code == 503, answer.text
    assert attack.reason in answer.json()["error"], answer.text
    assert httpx.get(f"{srv.url}/v2/models/{model}/ready", timeout=5).status_code != 200


def test_no_attack_ran_code(server: tuple[Server, list[Attack]]) -> None:
    srv, attacks = server
    for attack in attacks:
        _settled(srv.url, attack.model)
    assert sorted(p.name for p in srv.markers.iterdir()) == []


def test_the_server_stays_up_and_serves_the_good_model(
    server: tuple[Server, list[Attack]],
) -> None:
    srv, attacks = server
    for attack in attacks:
        _settled(srv.url, attack.model)
    assert httpx.get(f"{srv.url}/v2/health/live", timeout=5).status_code == 200
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 384],
                        "data": [0.5] * 384}]}  # fmt: skip
    answer = httpx.post(f"{srv.url}/v2/models/good/infer", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["data"] == [0.5] * 384
    meta = httpx.get(f"{srv.url}/v2/models/good", timeout=5).json()
    assert meta["parameters"]["signed_by"].startswith("release (sha256:")
