"""Health semantics: 200 means true, non-2xx means false with a JSON reason."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from podserve.errors import ManifestError
from podserve.runtime.model import Model
from podserve.settings import Settings
from podserve.storage.repository import ModelVersion
from tests.models import SLOW_SECONDS, model_factory
from tests.protocol.http.conftest import ServerThread


def test_live_and_ready_bodies(server: ServerThread) -> None:
    r = requests.get(f"{server.base}/v2/health/live", timeout=5)
    assert (r.status_code, r.json()) == (200, {"live": True})
    r = requests.get(f"{server.base}/v2/health/ready", timeout=5)
    assert (r.status_code, r.json()) == (200, {"ready": True})
    r = requests.get(f"{server.base}/v2/models/identity/ready", timeout=5)
    assert (r.status_code, r.json()) == (200, {"name": "identity", "ready": True})
    r = requests.get(f"{server.base}/v2/models/unknown/ready", timeout=5)
    assert r.status_code == 404
    assert "unknown" in r.json()["error"]


def test_never_ready_for_an_empty_repository(
    tmp_path: Path, make_server: Callable[..., ServerThread]
) -> None:
    (tmp_path / "empty").mkdir()
    srv = make_server(root=tmp_path / "empty")
    assert requests.get(f"{srv.base}/v2/health/live", timeout=5).status_code == 200
    r = requests.get(f"{srv.base}/v2/health/ready", timeout=5)
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert "no models found" in r.json()["error"]
    assert not httpclient.InferenceServerClient(srv.url).is_server_ready()


def test_not_ready_when_one_model_failed(make_server: Callable[..., ServerThread]) -> None:
    def factory(version: ModelVersion, settings: Settings) -> Model:
        if version.name == "identity":
            raise ManifestError("weights are missing on purpose")
        return model_factory(version, settings)

    srv = make_server(refs=[("identity", None), ("add_sub", None)], factory=factory)
    r = requests.get(f"{srv.base}/v2/health/ready", timeout=5)
    assert r.status_code == 503
    assert "identity" in r.json()["error"]
    assert "missing on purpose" in r.json()["error"]
    r = requests.get(f"{srv.base}/v2/models/identity/ready", timeout=5)
    assert r.status_code == 503
    assert r.json()["ready"] is False
    assert requests.get(f"{srv.base}/v2/models/add_sub/ready", timeout=5).status_code == 200
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 384], "data": [0] * 384}]
    }
    r = requests.post(f"{srv.base}/v2/models/identity/infer", json=body, timeout=5)
    assert r.status_code == 503
    assert "failed" in r.json()["error"]


def test_ready_goes_false_when_draining(make_server: Callable[..., ServerThread]) -> None:
    srv = make_server(refs=[("identity", None)])
    assert requests.get(f"{srv.base}/v2/health/ready", timeout=5).status_code == 200

    async def drain() -> None:
        assert srv.dataplane is not None
        srv.dataplane.begin_drain()

    srv.call(drain)
    r = requests.get(f"{srv.base}/v2/health/ready", timeout=5)
    assert r.status_code == 503
    assert "draining" in r.json()["error"]
    assert requests.get(f"{srv.base}/v2/health/live", timeout=5).status_code == 200


@pytest.mark.slow
def test_live_answers_fast_while_a_slow_batch_runs_and_queue_timeout(server: ServerThread) -> None:
    """A 2 s batch runs off the loop: liveness stays < 100 ms; a queued request times out."""
    client = httpclient.InferenceServerClient(server.url, network_timeout=30)
    x = np.ones((1, 1), np.float32)
    results: dict[str, object] = {}

    def call(key: str, timeout_us: int | None) -> None:
        tensor = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(x)
        own = httpclient.InferenceServerClient(server.url, network_timeout=30)
        try:
            results[key] = own.infer("slow", [tensor], timeout=timeout_us).as_numpy("OUTPUT0")
        except InferenceServerException as exc:
            results[key] = exc

    first = threading.Thread(target=call, args=("first", None))
    started = time.monotonic()
    first.start()
    time.sleep(0.3)  # the first batch is now sleeping in the model
    second = threading.Thread(target=call, args=("second", 100_000))  # 100 ms, in µs
    second.start()
    worst = 0.0
    while time.monotonic() - started < SLOW_SECONDS - 0.3:
        t0 = time.perf_counter()
        assert client.is_server_live()
        worst = max(worst, time.perf_counter() - t0)
        time.sleep(0.05)
    first.join(10)
    second.join(10)
    assert worst < 0.1, f"liveness took {worst * 1000:.0f} ms during a slow batch"
    np.testing.assert_array_equal(results["first"], x)
    err = results["second"]
    assert isinstance(err, InferenceServerException)
    assert err.status() == "504"
    assert "timed out" in str(err.message())


@pytest.mark.slow
def test_stop_finishes_inflight_requests_then_refuses(
    make_server: Callable[..., ServerThread],
) -> None:
    srv = make_server(refs=[("slow", None)])
    x = np.full((1, 1), 3.0, np.float32)
    results: list[object] = []

    def call() -> None:
        tensor = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(x)
        client = httpclient.InferenceServerClient(srv.url, network_timeout=30)
        results.append(client.infer("slow", [tensor]).as_numpy("OUTPUT0"))

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.3)
    assert srv.server is not None
    server = srv.server
    started = time.monotonic()
    srv.call(server.stop)
    assert time.monotonic() - started > 1.0, "stop() returned before the request finished"
    worker.join(10)
    np.testing.assert_array_equal(results[0], x)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{server.port}/v2/health/live", timeout=2)
