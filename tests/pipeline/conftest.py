"""Pipeline stages as real processes on loopback: `python -m podserve serve --stage i/K`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podserve.demo import stage_demo
from podserve.pipeline.split import split_model
from podserve.pipeline.split_manifest import Pipeline
from podserve.pipeline.synthetic import stage_synthetic_decoder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(port: int, path: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    """(status, decoded JSON) of a GET, or of a POST when ``body`` is given."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def embed_request(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]}


@dataclass
class Node:
    """One podserve process: a stage (index ≥ 1) or the entry (0)."""

    index: int
    http_port: int
    grpc_port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Cluster:
    root: Path
    pipeline_path: Path
    pipeline: Pipeline
    env: dict[str, str]
    nodes: list[Node] = field(default_factory=list)

    @property
    def entry(self) -> Node:
        return self.nodes[0]

    def start(self, i: int) -> None:
        node = self.nodes[i]
        cmd = [
            sys.executable,
            "-m",
            "podserve",
            "serve",
            str(self.root),
            "--stage",
            f"{i}/{self.pipeline.k}",
            "--host",
            "127.0.0.1",
            "--http-port",
            str(node.http_port),
            "--grpc-port",
            str(node.grpc_port),
        ]
        with open(node.log, "ab") as log:
            node.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, i: int) -> None:
        proc = self.nodes[i].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def wait_ready(self, i: int, timeout: float = 90.0) -> None:
        node = self.nodes[i]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                pytest.fail(f"node {i} exited {node.proc.returncode}:\n{node.log.read_text()}")
            try:
                if http(node.http_port, "/v2/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"node {i} not ready after {timeout} s:\n{node.log.read_text()[-3000:]}")

    def stop(self) -> None:
        # SIGKILL: draining is lifecycle's business (tested there); this keeps teardown short.
        for i in range(len(self.nodes)):
            self.kill(i)


def start_cluster(
    root: Path, model: str, k: int, work: Path, ready_timeout: float = 90.0, **settings: str
) -> Cluster:
    pipeline = split_model(root, model, None, k)
    path = work / f"{model}-k{k}.yaml"
    path.write_text(pipeline.to_yaml())
    nodes = [Node(i, free_port(), free_port(), work / f"node{i}.log") for i in range(k + 1)]
    env = {
        **os.environ,
        "PODSERVE_PIPELINE": str(path),
        "PODSERVE_PIPELINE_STAGES": ",".join(f"127.0.0.1:{n.grpc_port}" for n in nodes[1:]),
        "PODSERVE_DRAIN_GRACE_SECONDS": "0",
        "PODSERVE_INTRA_OP_THREADS": "1",
        "PODSERVE_PIPELINE_WAIT_SECONDS": "120",
        **settings,
    }
    cluster = Cluster(root, path, pipeline, env, nodes)
    for i in range(k + 1):
        cluster.start(i)
    try:
        for i in range(k + 1):
            cluster.wait_ready(i, timeout=ready_timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def model_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    stage_demo(root)
    stage_synthetic_decoder(root, "decoder", layers=4, hidden=64)
    return root


@pytest.fixture(scope="module")
def minilm_k2(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = start_cluster(
        model_root, "minilm", 2, tmp_path_factory.mktemp("k2"), PODSERVE_PIPELINE_MICRO_BATCH="2"
    )
    yield cluster
    cluster.stop()
