"""A real ``podserve serve`` process with on-demand models under a byte budget, driven by
tritonclient over HTTP and gRPC: its anonymous resident memory stays within the budget while
models are loaded and evicted, 100 concurrent first requests cause one load, a model larger
than the budget gets a clear 503 / RESOURCE_EXHAUSTED, and readiness never drops."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.ballast import MIB, stage_ballast

BUDGET = 60 * MIB
PINNED = 8 * MIB
SIZE = 20 * MIB  # the pin + two on-demand models fit, three do not
SLACK = 12 * MIB  # allocator arenas, request buffers, hashing buffers of a load
X = np.arange(4, dtype=np.float32).reshape(1, 4)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _anon_rss(pid: int) -> int:
    """RssAnon: the process's own memory, without the page cache of files it mapped."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^RssAnon:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1)) * 1024


class Server:
    def __init__(self, root: Path, log: Path) -> None:
        self.http_port, self.grpc_port = _port(), _port()
        env = {
            **os.environ,
            "PODSERVE_MODEL_MEMORY_BYTES": str(BUDGET),
            "PODSERVE_REPOSITORY_API": "true",
            "PODSERVE_LOG_LEVEL": "INFO",
        }
        cmd = [sys.executable, "-m", "podserve", "serve", str(root), "--host", "127.0.0.1"]
        cmd += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.log = log
        self.base = f"http://127.0.0.1:{self.http_port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                if requests.get(f"{self.base}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready:\n{log.read_text()}")

    def metric(self, name: str, model: str) -> float:
        text = requests.get(f"{self.base}/metrics", timeout=10).text
        match = re.search(rf'^{name}\{{model="{model}"\}} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def index(self) -> dict[str, dict[str, object]]:
        r = requests.post(f"{self.base}/v2/repository/index", timeout=10)
        return {e["name"]: e for e in r.json()}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("residency") / "models"
    stage_ballast(root, "pin", PINNED, residency="pinned")
    for i in range(4):
        stage_ballast(root, f"m{i}", SIZE)
    stage_ballast(root, "herd", SIZE, load_sleep=0.5)
    stage_ballast(root, "giant", BUDGET + MIB)
    srv = Server(root, tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    srv.stop()


def _http_infer(url: str, model: str) -> np.ndarray:
    client = httpclient.InferenceServerClient(url)
    tensor = httpclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    out = client.infer(model, [tensor]).as_numpy("OUTPUT0")
    client.close()
    assert out is not None
    return out


def _grpc_infer(url: str, model: str) -> np.ndarray:
    client = grpcclient.InferenceServerClient(url)
    tensor = grpcclient.InferInput("INPUT0", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    out = client.infer(model, [tensor]).as_numpy("OUTPUT0")
    client.close()
    assert out is not None
    return out


def test_budget_holds_across_loads_and_evictions(server: Server) -> None:
    http_url, grpc_url = f"127.0.0.1:{server.http_port}", f"127.0.0.1:{server.grpc_port}"
    index = server.index()
    assert index["m0"]["state"] == "UNLOADED"
    assert index["m0"]["residency"] == "on-demand"
    assert index["pin"]["state"] == "READY"
    base = _anon_rss(server.proc.pid)  # the pin and the runtime's imports are in it
    peak, stop = [base], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _anon_rss(server.proc.pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for round_ in range(3):
            for i in (0, 1, 2, 3, 1):
                infer = _grpc_infer if (round_ + i) % 2 else _http_infer
                url = grpc_url if infer is _grpc_infer else http_url
                np.testing.assert_array_equal(infer(url, f"m{i}"), X)
                assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
    finally:
        stop.set()
        sampler.join()
    on_demand_room = BUDGET - PINNED
    assert peak[0] - base <= on_demand_room + SLACK, (peak[0] - base) / MIB
    assert peak[0] - base >= 2 * SIZE - SLACK  # two on-demand models were resident at once
    evictions = sum(server.metric("podserve_model_evictions_total", f"m{i}") for i in range(4))
    assert evictions >= 8
    assert server.metric("podserve_model_evictions_total", "pin") == 0
    index = server.index()
    resident = [n for n, e in index.items() if e.get("state") == "READY"]
    assert sum(int(index[n]["bytes"]) for n in resident) <= BUDGET  # type: ignore[call-overload]


def test_one_load_for_100_concurrent_first_requests(server: Server) -> None:
    url = f"127.0.0.1:{server.http_port}"
    with ThreadPoolExecutor(32) as pool:
        outs = list(pool.map(lambda _: _http_infer(url, "herd"), range(100)))
    assert len(outs) == 100
    assert server.metric("podserve_model_loads_total", "herd") == 1
    assert server.metric("podserve_residency_misses_total", "herd") >= 1
    assert (
        "podserve_cold_load_wait_seconds_bucket"
        in requests.get(f"{server.base}/metrics", timeout=10).text
    )


def test_too_large_for_the_budget(server: Server) -> None:
    with pytest.raises(InferenceServerException) as info:
        _http_infer(f"127.0.0.1:{server.http_port}", "giant")
    assert info.value.status() == "503"
    assert "budget of 60.0 MiB" in str(info.value)
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(f"127.0.0.1:{server.grpc_port}", "giant")
    assert info.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "61.0 MiB" in str(info.value)
    assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200


def test_repository_load_makes_room_like_a_request(server: Server) -> None:
    http_url, grpc_url = f"127.0.0.1:{server.http_port}", f"127.0.0.1:{server.grpc_port}"
    for i in (0, 1):
        _http_infer(http_url, f"m{i}")
    evictions = sum(server.metric("podserve_model_evictions_total", f"m{i}") for i in range(4))
    http = httpclient.InferenceServerClient(http_url)
    http.load_model("m2")  # POST /v2/repository/models/m2/load
    http.close()
    grpc = grpcclient.InferenceServerClient(grpc_url)
    grpc.load_model("m3")  # RepositoryModelLoad
    index = server.index()
    assert index["m2"]["state"] == "READY" or index["m3"]["state"] == "READY"
    assert index["m3"]["state"] == "READY"
    resident = [n for n, e in index.items() if e.get("state") == "READY"]
    assert sum(int(index[n]["bytes"]) for n in resident) <= BUDGET  # type: ignore[call-overload]
    after = sum(server.metric("podserve_model_evictions_total", f"m{i}") for i in range(4))
    assert after >= evictions + 2
    with pytest.raises(InferenceServerException) as info:
        grpc.load_model("giant")
    assert "budget of 60.0 MiB" in str(info.value)
    grpc.close()
    assert requests.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200
