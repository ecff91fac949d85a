"""K = 2 and K = 3 stage processes on loopback with real gRPC (stage_server and entry)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest

from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.protocol.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from podserve.runtime.registry import create_model
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository

from .conftest import Cluster, embed_request, http, start_cluster

pytestmark = pytest.mark.slow

TEXTS = [
    "Kubernetes runs my model",
    "a pipeline splits the layers over several pods",
    "short",
    "w5 w17 w300 w2 w9 w1000 w44",
    "the entry cuts batches into micro-batches and keeps several in flight",
]

Reference = Callable[[str, list[str]], np.ndarray]


@pytest.fixture(scope="module")
def reference(model_root: Path) -> Reference:
    """The unsplit model, in this process, through the transformers runtime."""
    models = {}

    def embed(name: str, texts: list[str]) -> np.ndarray:
        if name not in models:
            model = create_model(ModelRepository(model_root).open(name), Settings())
            model.load()
            models[name] = model
        out = models[name].infer({"text": np.array([t.encode() for t in texts], dtype=object)})
        return out["embedding"]

    return embed


def infer(cluster: Cluster, texts: list[str]) -> np.ndarray:
    status, body = http(
        cluster.entry.http_port, f"/v2/models/{cluster.pipeline.model}/infer", embed_request(texts)
    )
    assert status == 200, body
    (out,) = body["outputs"]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def check_bytes_read(cluster: Cluster) -> None:
    """Each stage read its own ranges (plus the header and config.json), nothing else."""
    file_size = sum(f.size for f in cluster.pipeline.files.values())
    header = sum(f.header_length for f in cluster.pipeline.files.values())
    config = (cluster.root / cluster.pipeline.model / "1" / "config.json").stat().st_size
    total = 0
    for plan in cluster.pipeline.stages:
        node = cluster.nodes[plan.stage]
        status, meta = http(node.http_port, f"/v2/models/{cluster.pipeline.stage_name(plan.stage)}")
        assert status == 200, meta
        params = meta["parameters"]
        assert params["pipeline_stage"] == f"{plan.stage}/{cluster.pipeline.k}"
        assert params["bytes_read"] == plan.bytes + header + config
        assert params["verified"] == "blake3"
        total += plan.bytes
    # The shares add up to (almost) the file: only unused tensors (position_ids) are skipped.
    assert 0.99 * (file_size - header) <= total <= file_size - header


def test_minilm_two_stages_match_the_single_process(
    minilm_k2: Cluster, reference: Reference
) -> None:
    got = infer(minilm_k2, TEXTS)  # 5 rows in micro-batches of 2: 2 + 2 + 1
    np.testing.assert_allclose(got, reference("minilm", TEXTS), atol=1e-5, rtol=0)
    check_bytes_read(minilm_k2)
    plans = minilm_k2.pipeline.stages
    # By bytes: the embeddings (half of MiniLM) share stage 1 with one layer.
    assert [p.layers for p in plans] == [(0, 1), (1, 6)]


def test_decoder_three_stages_match_the_single_process(
    model_root: Path, tmp_path: Path, reference: Reference
) -> None:
    texts = ["w2 w3 w4 w5", "w900 w17", "w6 w7 w8 w9 w10 w11 w12 w13 w14", "unknown words"]
    # One row per micro-batch, all in flight: the stages overlap and answers keep their order.
    cluster = start_cluster(
        model_root,
        "decoder",
        3,
        tmp_path,
        PODSERVE_PIPELINE_MICRO_BATCH="1",
        PODSERVE_PIPELINE_INFLIGHT="4",
    )
    try:
        assert [p.layers[1] - p.layers[0] for p in cluster.pipeline.stages] in (
            [1, 1, 2],
            [1, 2, 1],
        )
        np.testing.assert_allclose(
            infer(cluster, texts), reference("decoder", texts), atol=1e-5, rtol=0
        )
        check_bytes_read(cluster)
    finally:
        cluster.stop()


def test_a_stage_down_fails_fast_and_recovers(minilm_k2: Cluster, reference: Reference) -> None:
    cluster, port = minilm_k2, minilm_k2.entry.http_port
    assert http(port, "/v2/health/ready")[0] == 200
    cluster.kill(2)
    started = time.monotonic()
    status, body = http(port, "/v2/models/minilm/infer", embed_request(["hello"]))
    assert time.monotonic() - started < 5
    assert status == 503
    assert "pipeline stage 2/2" in body["error"]
    with grpc.insecure_channel(f"127.0.0.1:{cluster.entry.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.ModelInferRequest(model_name="minilm")
        request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
            b"hello"
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "pipeline stage 2/2" in (caught.value.details() or "")
    deadline = time.monotonic() + 10
    while http(port, "/v2/health/ready")[0] != 503:
        assert time.monotonic() < deadline, "the entry stayed ready with a stage down"
        time.sleep(0.2)
    status, body = http(port, "/v2/health/ready")
    assert "pipeline stage 2/2" in body["error"]

    cluster.start(2)
    cluster.wait_ready(2)
    cluster.wait_ready(0, timeout=30)  # the entry notices by itself: no restart
    assert cluster.entry.proc is not None
    assert cluster.entry.proc.poll() is None
    np.testing.assert_allclose(
        infer(cluster, TEXTS[:2]), reference("minilm", TEXTS[:2]), atol=1e-5, rtol=0
    )
