"""Two `podserve serve --tp-rank R/2` processes on loopback, called with real clients."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from podserve.runtime.registry import create_model
from podserve.runtime.safetensors_view import read_header
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from podserve.tensor_parallel.manifest import TensorParallel
from podserve.tensor_parallel.split import split_tensor_parallel
from tests.pipeline.conftest import embed_request, free_port, http

pytestmark = pytest.mark.slow

TEXTS = [
    "Kubernetes runs my model",
    "tensor parallelism splits every layer's matrices",
    "short",
    "w5 w17 w300 w2 w9 w1000 w44",
    "each rank reads only its slices of the weights from the volume",
    "w3 w4",
    "the leader broadcasts each batch",
]


@dataclass
class Group:
    root: Path
    plan: TensorParallel
    env: dict[str, str]
    work: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, rank: int, **env: str) -> None:
        cmd = [sys.executable, "-m", "podserve", "serve", str(self.root)]
        cmd += ["--tp-rank", f"{rank}/{self.plan.k}", "--host", "127.0.0.1"]
        if rank == 0:
            cmd += ["--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port)]
        with open(self.log(rank), "ab") as log:
            self.procs[rank] = subprocess.Popen(
                cmd, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
            )

    def log(self, rank: int) -> Path:
        return self.work / f"rank{rank}.log"

    def kill(self, rank: int, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(rank)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(30)

    def stop(self) -> None:
        for rank in sorted(self.procs, reverse=True):
            self.kill(rank)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for rank, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(
                        f"rank {rank} exited {proc.returncode}:\n{self.log(rank).read_text()}"
                    )
            try:
                if http(self.http_port, "/v2/health/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"group not ready after {timeout} s:\n{self.log(0).read_text()[-3000:]}")

    def infer(self, texts: list[str]) -> np.ndarray:
        status, body = http(self.http_port, f"/v2/models/{self.plan.model}/infer",
                            embed_request(texts), timeout=120)  # fmt: skip
        assert status == 200, body
        (out,) = body["outputs"]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def make_group(root: Path, model: str, work: Path, **settings: str) -> Group:
    plan = split_tensor_parallel(root, model, None, 2)
    path = work / f"{model}-tp2.yaml"
    path.write_text(plan.to_yaml())
    env = {
        **os.environ,
        "PODSERVE_TENSOR_PARALLEL": str(path),
        "PODSERVE_TP_LEADER": "127.0.0.1",
        "PODSERVE_TP_PORT": str(free_port()),
        "PODSERVE_TP_WAIT_SECONDS": "180",
        "PODSERVE_DRAIN_GRACE_SECONDS": "0",
        "PODSERVE_INTRA_OP_THREADS": "1",
        **settings,
    }
    return Group(root, plan, env, work)


def start_group(root: Path, model: str, work: Path) -> Group:
    group = make_group(root, model, work)
    group.start(0)
    group.start(1)
    try:
        group.wait_ready()
    except BaseException:
        group.stop()
        raise
    return group


def reference(root: Path, model: str, texts: list[str]) -> np.ndarray:
    """The unsplit model in this process, through the transformers runtime."""
    m = create_model(ModelRepository(root).open(model), Settings())
    m.load()
    out: np.ndarray = m.infer({"text": np.array([t.encode() for t in texts], dtype=object)})[
        "embedding"
    ]
    return out


@pytest.fixture(scope="module")
def minilm(tp_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Group]:
    group = start_group(tp_root, "minilm", tmp_path_factory.mktemp("minilm-tp"))
    yield group
    group.stop()


@pytest.mark.parametrize("n", [1, 3, 7])
def test_minilm_two_ranks_equal_the_single_process(minilm: Group, tp_root: Path, n: int) -> None:
    expected = reference(tp_root, "minilm", TEXTS[:n])
    np.testing.assert_allclose(minilm.infer(TEXTS[:n]), expected, atol=1e-5, rtol=0)


def test_grpc_serves_the_unsplit_signature(minilm: Group, tp_root: Path) -> None:
    tritonclient = pytest.importorskip("tritonclient.grpc")
    client = tritonclient.InferenceServerClient(f"127.0.0.1:{minilm.grpc_port}")
    meta = client.get_model_metadata("minilm", as_json=True)
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": ["-1", "384"]}]
    inp = tritonclient.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(np.array([t.encode() for t in TEXTS[:2]], dtype=object))
    got = client.infer("minilm", [inp]).as_numpy("embedding")
    np.testing.assert_allclose(got, reference(tp_root, "minilm", TEXTS[:2]), atol=1e-5, rtol=0)


def test_each_rank_read_only_its_slices(minilm: Group, tp_root: Path) -> None:
    status, meta = http(minilm.http_port, "/v2/models/minilm")
    assert status == 200, meta
    params = meta["parameters"]
    header = minilm.plan.files["model.safetensors"].header_length
    config = (tp_root / "minilm" / "1" / "config.json").stat().st_size
    r0, r1 = minilm.plan.ranks
    assert params["tp_ranks"] == 2
    assert params["verified"] == "blake3"
    assert params["rank1_bytes_read"] == header + r1.bytes + config
    # Rank 0 also reads the tokenizer files; both read far less than the file.
    assert header + r0.bytes + config < params["bytes_read"] < header + r0.bytes + 2_000_000
    file_size = (tp_root / "minilm" / "1" / "model.safetensors").stat().st_size
    assert r1.bytes < 0.8 * file_size


def test_decoder_two_ranks_equal_the_single_process(tp_root: Path, tmp_path: Path) -> None:
    group = start_group(tp_root, "decoder", tmp_path)
    try:
        for n in (1, 3, 7):
            expected = reference(tp_root, "decoder", TEXTS[:n])
            np.testing.assert_allclose(group.infer(TEXTS[:n]), expected, atol=1e-5, rtol=0)
    finally:
        group.stop()


def test_a_killed_rank_fails_requests_fast_and_a_restarted_group_is_ready(
    tp_root: Path, tmp_path: Path
) -> None:
    group = start_group(tp_root, "decoder", tmp_path)
    try:
        before = group.infer(TEXTS[:3])
        group.kill(1)
        started = time.monotonic()
        status, body = http(group.http_port, "/v2/models/decoder/infer", embed_request(TEXTS[:1]))
        assert time.monotonic() - started < 5.0
        assert status == 503, body
        assert "tensor-parallel rank 1/2 is unavailable" in body["error"]
        status, ready = http(group.http_port, "/v2/health/ready")
        assert status == 503
        assert "rank 1/2" in ready["error"]
        # A rank restarted alone cannot rejoin the broken group: it says so and exits.
        group.start(1)
        assert group.procs[1].wait(120) == 8
        assert "restart the whole group" in group.log(1).read_text()
        # Recovery is a restart of the whole group (what a LeaderWorkerSet does by itself).
        group.kill(0)
        group.start(0)
        group.start(1)
        group.wait_ready()
        np.testing.assert_allclose(group.infer(TEXTS[:3]), before, atol=1e-6, rtol=0)
    finally:
        group.stop()


def test_a_flipped_byte_in_rank_1s_slice_is_refused_by_rank_1(
    tp_root: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(tp_root / "decoder", root / "decoder")
    group = make_group(root, "decoder", tmp_path)  # split first: the manifest has the digests
    path = root / "decoder" / "1" / "model.safetensors"
    info = read_header(path).tensors["h.0.attn.c_proj.weight"]  # [128, 128]: rank 1 rows 64+
    data = bytearray(path.read_bytes())
    data[info.start + 100 * 128 * 4 + 8] ^= 0x01
    path.write_bytes(data)
    group.start(0)
    group.start(1)
    try:
        assert group.procs[1].wait(120) != 0
        log = group.log(1).read_text()
        assert f"{path}: tensor 'h.0.attn.c_proj.weight'" in log
        assert "tensor-parallel rank 1/2 do not match the BLAKE3 digest" in log
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            meta = http(group.http_port, "/v2/models/decoder")[1] if _up(group) else {}
            if meta.get("parameters", {}).get("state") == "failed":
                break
            time.sleep(0.2)
        assert "rank 1/2 failed to load" in group.log(0).read_text()
        assert http(group.http_port, "/v2/health/ready")[0] == 503
    finally:
        group.stop()


def test_a_missing_rank_is_named(tp_root: Path, tmp_path: Path) -> None:
    group = make_group(tp_root, "decoder", tmp_path, PODSERVE_TP_WAIT_SECONDS="3")
    group.start(1, PODSERVE_TP_PORT=str(free_port()))  # no leader there
    assert group.procs[1].wait(60) == 8
    assert "cannot reach the leader (rank 0) at 127.0.0.1:" in group.log(1).read_text()
    group.start(0)
    try:
        deadline = time.monotonic() + 60
        while "did not join" not in group.log(0).read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "tensor-parallel rank 1/2 did not join the group" in group.log(0).read_text()
        assert http(group.http_port, "/v2/health/ready")[0] == 503
    finally:
        group.stop()


def test_sigterm_to_the_leader_stops_the_other_rank(tp_root: Path, tmp_path: Path) -> None:
    group = start_group(tp_root, "decoder", tmp_path)
    try:
        group.kill(0, signal.SIGTERM)
        assert group.procs[0].returncode == 0
        assert group.procs[1].wait(30) == 0
    finally:
        group.stop()


def _up(group: Group) -> bool:
    try:
        http(group.http_port, "/v2/health/live", timeout=2)
        return True
    except OSError:
        return False
