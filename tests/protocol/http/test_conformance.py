"""The REST surface driven by the real ``tritonclient.http``, compared with direct model calls."""

from __future__ import annotations

import gzip
import json
import struct

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.models import DATATYPES, expected
from tests.protocol.http.conftest import ServerThread

RNG = np.random.default_rng(7)


def _sample(datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise each datatype's range (extremes included)."""
    n = int(np.prod(shape))
    if datatype == "BOOL":
        return (RNG.integers(0, 2, n) == 1).reshape(shape)
    if datatype == "BYTES":
        return np.array([f"s{i}-é".encode() for i in range(n)], dtype=object).reshape(shape)
    dtype = np.dtype(datatype.lower().replace("fp", "float"))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = RNG.integers(info.min, info.max, n, dtype=dtype, endpoint=True)
        values[:2] = [info.min, info.max] if n >= 2 else values[:2]
        return values.reshape(shape)
    return (RNG.standard_normal(n) * 1000).astype(dtype).reshape(shape)


def _input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.fixture(scope="module")
def client(server: ServerThread) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url)


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_every_datatype_round_trips(
    client: httpclient.InferenceServerClient, binary_in: bool, binary_out: bool
) -> None:
    arrays = {dt: _sample(dt, (2, 5)) for dt in DATATYPES}
    inputs = [_input(f"IN_{dt}", a, dt, binary_in) for dt, a in arrays.items()]
    outputs = [
        httpclient.InferRequestedOutput(f"OUT_{dt}", binary_data=binary_out) for dt in DATATYPES
    ]
    result = client.infer("all_types", inputs, outputs=outputs)
    want = expected("all_types", {f"IN_{dt}": a for dt, a in arrays.items()})
    for dt in DATATYPES:
        got = result.as_numpy(f"OUT_{dt}")
        assert got is not None, dt
        assert got.shape == (2, 5), dt
        meta = result.get_output(f"OUT_{dt}")
        assert meta["datatype"] == dt
        assert ("parameters" in meta and "binary_data_size" in meta["parameters"]) == binary_out
        if dt == "BYTES":
            items = [x.encode() if isinstance(x, str) else bytes(x) for x in got.reshape(-1)]
            assert items == list(want[f"OUT_{dt}"].reshape(-1))
        else:
            np.testing.assert_array_equal(got, want[f"OUT_{dt}"], err_msg=dt)


def test_default_request_returns_binary_outputs(client: httpclient.InferenceServerClient) -> None:
    """No requested outputs: the client sets binary_data_output and gets every output binary."""
    a, b = _sample("INT32", (3, 16)), _sample("INT32", (3, 16))
    a, b = a // 4, b // 4  # no overflow in a + b
    result = client.infer(
        "add_sub", [_input("INPUT0", a, "INT32", True), _input("INPUT1", b, "INT32", False)]
    )
    want = expected("add_sub", {"INPUT0": a, "INPUT1": b})
    for name in ("OUTPUT0", "OUTPUT1"):
        assert result.get_output(name)["parameters"]["binary_data_size"] == 3 * 16 * 4
        np.testing.assert_array_equal(result.as_numpy(name), want[name])


def test_per_output_binary_and_subset(client: httpclient.InferenceServerClient) -> None:
    a, b = np.arange(16, dtype=np.int32)[None], np.ones((1, 16), np.int32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT1", binary_data=True)]
    result = client.infer(
        "add_sub",
        [_input("INPUT0", a, "INT32", True), _input("INPUT1", b, "INT32", True)],
        outputs=outputs,
    )
    response = result.get_response()
    assert [o["name"] for o in response["outputs"]] == ["OUTPUT1"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=False),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=True),
    ]
    result = client.infer(
        "add_sub",
        [_input("INPUT0", a, "INT32", False), _input("INPUT1", b, "INT32", True)],
        outputs=outputs,
    )
    assert "data" in result.get_output("OUTPUT0")
    assert "binary_data_size" in result.get_output("OUTPUT1")["parameters"]
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_request_level_binary_data_output_with_json_override(server: ServerThread) -> None:
    body = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [2] * 16},
        ],
        "outputs": [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": False}}],
        "parameters": {"binary_data_output": True},
    }
    r = requests.post(f"{server.base}/v2/models/add_sub/infer", json=body, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:n])
    out0, out1 = header["outputs"]
    assert out0["parameters"]["binary_data_size"] == 64
    assert np.frombuffer(r.content[n:], np.int32).tolist() == [3] * 16
    assert out1["data"] == [-1] * 16


@pytest.mark.parametrize(
    ("where", "value"),
    [("request", "yes"), ("request", "false"), ("output", "false"), ("output", 0)],
)
def test_a_binary_flag_that_is_not_a_boolean_is_a_400(
    server: ServerThread, where: str, value: object
) -> None:
    """ "false" is truthy and "yes" is not True: the format must not follow such an accident."""
    body: dict[str, object] = {
        "inputs": [
            {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
            {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [2] * 16},
        ],
    }
    if where == "request":
        body["parameters"] = {"binary_data_output": value}
    else:
        body["outputs"] = [{"name": "OUTPUT0", "parameters": {"binary_data": value}}]
    r = requests.post(f"{server.base}/v2/models/add_sub/infer", json=body, timeout=10)
    assert r.status_code == 400, r.text
    key = "binary_data_output" if where == "request" else "binary_data"
    assert f"parameter '{key}' must be true or false" in r.json()["error"]


def test_bytes_model_binary_and_json(client: httpclient.InferenceServerClient) -> None:
    words = np.array([[b"alpha", b"\xff\x00raw", b""]], dtype=object)
    result = client.infer("strings", [_input("INPUT0", words, "BYTES", True)])
    want = expected("strings", {"INPUT0": words})
    assert list(result.as_numpy("OUTPUT0").reshape(-1)) == list(want["OUTPUT0"].reshape(-1))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), want["OUTPUT1"])

    text = np.array([["héllo", "wörld"]], dtype=object)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)]
    result = client.infer("strings", [_input("INPUT0", text, "BYTES", False)], outputs=outputs)
    assert result.get_output("OUTPUT0")["data"] == ["HéLLO", "WöRLD"]


@pytest.mark.parametrize("request_alg", [None, "gzip", "deflate"])
@pytest.mark.parametrize("response_alg", [None, "gzip", "deflate"])
def test_compression(
    client: httpclient.InferenceServerClient, request_alg: str | None, response_alg: str | None
) -> None:
    x = RNG.standard_normal((4, 384)).astype(np.float32)
    result = client.infer(
        "identity",
        [_input("INPUT0", x, "FP32", True)],
        request_compression_algorithm=request_alg,
        response_compression_algorithm=response_alg,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x)


def test_response_is_compressed_when_asked(server: ServerThread) -> None:
    body = {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 384], "data": [0.5] * 384}]
    }
    r = requests.post(
        f"{server.base}/v2/models/identity/infer",
        json=body,
        timeout=10,
        headers={"Accept-Encoding": "gzip"},
        stream=True,
    )
    assert r.headers["content-encoding"] == "gzip"
    raw = r.raw.read(decode_content=False)
    assert gzip.decompress(raw).startswith(b'{"model_name":"identity"')


def test_request_id_version_priority_and_timeout(client: httpclient.InferenceServerClient) -> None:
    x = np.ones((1, 384), np.float32)
    result = client.infer(
        "identity",
        [_input("INPUT0", x, "FP32", True)],
        model_version="1",
        request_id="req-42",
        priority=1,
        timeout=5_000_000,
    )
    assert result.get_response()["id"] == "req-42"
    assert result.get_response()["model_version"] == "1"
    with pytest.raises(InferenceServerException, match="version 2") as info:
        client.infer("identity", [_input("INPUT0", x, "FP32", True)], model_version="2")
    assert info.value.status() == "404"


def test_unbatched_model(client: httpclient.InferenceServerClient) -> None:
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    result = client.infer("nobatch", [_input("INPUT0", x, "FP32", False)])
    np.testing.assert_array_equal(
        result.as_numpy("OUTPUT0"), expected("nobatch", {"INPUT0": x})["OUTPUT0"]
    )


def test_raw_binary_request(server: ServerThread) -> None:
    """Inference-Header-Content-Length: 0: the body is the single input's data."""
    x = RNG.standard_normal((1, 384)).astype(np.float32)
    r = requests.post(
        f"{server.base}/v2/models/identity/infer",
        data=x.tobytes(),
        timeout=10,
        headers={
            "Inference-Header-Content-Length": "0",
            "Content-Type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    header = json.loads(r.content[:n])
    assert header["outputs"][0]["shape"] == [1, 384]
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], np.float32).reshape(1, 384), x)

    r = requests.post(
        f"{server.base}/v2/models/strings/infer",
        data=b"some text",
        timeout=10,
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    (size,) = struct.unpack_from("<I", r.content, n)
    assert r.content[n + 4 : n + 4 + size] == b"SOME TEXT"

    r = requests.post(
        f"{server.base}/v2/models/add_sub/infer",
        data=b"\0" * 64,
        timeout=10,
        headers={"Inference-Header-Content-Length": "0"},
    )
    assert r.status_code == 400
    assert "exactly one input" in r.json()["error"]


def test_metadata_config_and_health(client: httpclient.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("add_sub")
    assert client.is_model_ready("add_sub", "1")
    assert not client.is_model_ready("add_sub", "7")
    meta = client.get_server_metadata()
    assert meta["name"] == "podserve"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("add_sub")
    assert model["inputs"][0] == {"name": "INPUT0", "datatype": "INT32", "shape": [-1, 16]}
    config = client.get_model_config("strings")
    assert config["max_batch_size"] == 8
    assert config["input"][0]["data_type"] == "TYPE_STRING"
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("missing")
    assert info.value.status() == "404"


def test_stats_and_metrics(server: ServerThread, client: httpclient.InferenceServerClient) -> None:
    before = client.get_inference_statistics("nobatch")["model_stats"][0]
    x = np.zeros((2, 3), np.float32)
    for _ in range(3):
        client.infer("nobatch", [_input("INPUT0", x, "FP32", True)])
    after = client.get_inference_statistics("nobatch")["model_stats"][0]
    assert (
        after["inference_stats"]["success"]["count"]
        == before["inference_stats"]["success"]["count"] + 3
    )
    assert after["inference_stats"]["compute_infer"]["ns"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= {"identity", "nobatch", "strings"}
    text = requests.get(f"{server.base}/metrics", timeout=10).text
    assert 'podserve_requests_total{model="nobatch",outcome="success",surface="http"}' in text
