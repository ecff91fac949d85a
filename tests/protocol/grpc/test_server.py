"""Conformance of the gRPC surface with the real ``tritonclient.grpc`` client.

Every answer is compared with a direct call of the same model class (``tests.models.expected``).
Requests the client refuses to build (wrong lengths) are sent with tritonclient's own
generated stub, so the server sees exactly the bytes a misbehaving client would send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tc_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.models import DATATYPES, SLOW_SECONDS, expected
from tests.protocol.grpc.conftest import ServerThread


@pytest.fixture
def client(grpc_server: ServerThread) -> Iterator[tc.InferenceServerClient]:
    c = tc.InferenceServerClient(grpc_server.url)
    yield c
    c.close()


@pytest.fixture
def stub(grpc_server: ServerThread) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(grpc_server.url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _inputs(arrays: dict[str, np.ndarray], types: dict[str, str] | None = None) -> list[Any]:
    out = []
    for name, array in arrays.items():
        dt = (types or {}).get(name) or tc.np_to_triton_dtype(array.dtype)
        item = tc.InferInput(name, list(array.shape), dt)
        item.set_data_from_numpy(array)
        out.append(item)
    return out


def _assert_healthy(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    x = np.ones((1, 384), np.float32)
    assert np.array_equal(client.infer("identity", _inputs({"INPUT0": x})).as_numpy("OUTPUT0"), x)


def _error(call: Callable[[], Any]) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value


# --- health and metadata ----------------------------------------------------------------------


def test_health_and_server_metadata(client: tc.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("identity")
    assert client.is_model_ready("identity", "1")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "podserve"
    assert {"statistics", "model_repository"} <= set(meta["extensions"])


def test_model_metadata(client: tc.InferenceServerClient) -> None:
    meta = client.get_model_metadata("add_sub", as_json=True)
    assert meta["name"] == "add_sub"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "podserve_python"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("INPUT0", "INT32", ["-1", "16"]),
        ("INPUT1", "INT32", ["-1", "16"]),
    ]  # int64 shapes come back as strings in tritonclient's JSON
    nobatch = client.get_model_metadata("nobatch")
    assert list(nobatch.inputs[0].shape) == [2, 3]


def test_unknown_model_and_version(client: tc.InferenceServerClient) -> None:
    for call in (
        lambda: client.get_model_metadata("nope"),
        lambda: client.is_model_ready("nope"),
        lambda: client.get_model_metadata("identity", "7"),
        lambda: client.infer("nope", _inputs({"INPUT0": np.ones((1, 384), np.float32)})),
        lambda: client.infer(
            "identity", _inputs({"INPUT0": np.ones((1, 384), np.float32)}), model_version="7"
        ),
    ):
        err = _error(call)
        assert err.status() == "StatusCode.NOT_FOUND", err
        assert "nope" in str(err.message()) or "version 7" in str(err.message())
    _assert_healthy(client)


# --- inference --------------------------------------------------------------------------------


def test_identity_with_request_id(client: tc.InferenceServerClient) -> None:
    x = np.random.default_rng(0).random((4, 384), dtype=np.float32)
    result = client.infer("identity", _inputs({"INPUT0": x}), request_id="req-42")
    assert result.get_response().id == "req-42"
    assert result.get_response().model_version == "1"
    assert np.array_equal(
        result.as_numpy("OUTPUT0"), expected("identity", {"INPUT0": x})["OUTPUT0"]
    )


def _all_type_arrays(rows: int = 2, width: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    arrays: dict[str, np.ndarray] = {}
    for dt in DATATYPES:
        name = f"IN_{dt}"
        if dt == "BYTES":
            arrays[name] = np.array(
                [
                    [f"r{r}c{c}\u00e9".encode() + b"\x00z" for c in range(width)]
                    for r in range(rows)
                ],
                dtype=object,
            )
        elif dt == "BOOL":
            arrays[name] = rng.random((rows, width)) > 0.5
        else:
            npdt = tc.triton_to_np_dtype(dt)
            if np.issubdtype(npdt, np.integer):
                info = np.iinfo(npdt)
                arrays[name] = rng.integers(
                    info.min, info.max, (rows, width), dtype=npdt, endpoint=True
                )
            else:
                arrays[name] = (rng.standard_normal((rows, width)) * 1e3).astype(npdt)
    return arrays


def test_every_datatype_multi_input_multi_output(client: tc.InferenceServerClient) -> None:
    arrays = _all_type_arrays()
    result = client.infer("all_types", _inputs(arrays, {"IN_BYTES": "BYTES"}))
    want = expected("all_types", arrays)
    assert [o.name for o in result.get_response().outputs] == [f"OUT_{dt}" for dt in DATATYPES]
    for dt in DATATYPES:
        got = result.as_numpy(f"OUT_{dt}")
        assert result.get_output(f"OUT_{dt}").datatype == dt
        assert got.shape == (2, 5)
        if dt == "BYTES":
            assert got.tolist() == want[f"OUT_{dt}"].tolist()
        else:
            assert got.dtype == want[f"OUT_{dt}"].dtype, dt
            assert np.array_equal(got, want[f"OUT_{dt}"]), dt


def test_bytes_model(client: tc.InferenceServerClient) -> None:
    x = np.array([[b"hello", "grüße".encode(), b"", b"a\x00b"]], dtype=object)
    result = client.infer("strings", _inputs({"INPUT0": x}, {"INPUT0": "BYTES"}))
    want = expected("strings", {"INPUT0": x})
    assert result.as_numpy("OUTPUT0").tolist() == want["OUTPUT0"].tolist()
    assert np.array_equal(result.as_numpy("OUTPUT1"), want["OUTPUT1"])


def test_requested_outputs_and_their_order(client: tc.InferenceServerClient) -> None:
    a = np.arange(32, dtype=np.int32).reshape(2, 16)
    b = np.full((2, 16), 3, np.int32)
    want = expected("add_sub", {"INPUT0": a, "INPUT1": b})
    inputs = _inputs({"INPUT0": a, "INPUT1": b})

    only = client.infer("add_sub", inputs, outputs=[tc.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in only.get_response().outputs] == ["OUTPUT1"]
    assert only.as_numpy("OUTPUT0") is None
    assert np.array_equal(only.as_numpy("OUTPUT1"), want["OUTPUT1"])

    order = [tc.InferRequestedOutput("OUTPUT1"), tc.InferRequestedOutput("OUTPUT0")]
    both = client.infer("add_sub", inputs, outputs=order)
    assert [o.name for o in both.get_response().outputs] == ["OUTPUT1", "OUTPUT0"]
    assert np.array_equal(both.as_numpy("OUTPUT0"), want["OUTPUT0"])

    err = _error(lambda: client.infer("add_sub", inputs, outputs=[tc.InferRequestedOutput("NOPE")]))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "NOPE" in str(err.message())


def test_model_without_batch_axis(client: tc.InferenceServerClient) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = client.infer("nobatch", _inputs({"INPUT0": x}))
    assert np.array_equal(result.as_numpy("OUTPUT0"), expected("nobatch", {"INPUT0": x})["OUTPUT0"])


def test_priority_and_timeout_parameters_are_accepted(client: tc.InferenceServerClient) -> None:
    x = np.ones((1, 384), np.float32)
    result = client.infer("identity", _inputs({"INPUT0": x}), priority=1, timeout=5_000_000)
    assert np.array_equal(result.as_numpy("OUTPUT0"), x)


# --- bad requests -----------------------------------------------------------------------------


def test_wrong_datatype_and_shape(client: tc.InferenceServerClient) -> None:
    a = np.zeros((1, 16), np.int64)
    err = _error(lambda: client.infer("add_sub", _inputs({"INPUT0": a, "INPUT1": a})))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "datatype INT64, expected INT32" in str(err.message())

    short = np.zeros((1, 8), np.int32)
    err = _error(lambda: client.infer("add_sub", _inputs({"INPUT0": short, "INPUT1": short})))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "shape [1, 8]" in str(err.message())

    err = _error(lambda: client.infer("add_sub", _inputs({"INPUT0": np.zeros((1, 16), np.int32)})))
    assert err.status() == "StatusCode.INVALID_ARGUMENT"
    assert "missing input" in str(err.message())
    _assert_healthy(client)


def _raw_request(**fields: Any) -> Any:
    req = service_pb2.ModelInferRequest(model_name="identity")
    req.inputs.add(name="INPUT0", datatype="FP32", shape=fields.pop("shape", [1, 384]))
    req.raw_input_contents.append(fields.pop("raw", b"\x00" * 384 * 4))
    for key, value in fields.items():
        setattr(req, key, value)
    return req


@pytest.mark.parametrize(
    ("raw", "shape", "message"),
    [
        (b"\x00" * 100, [1, 384], "needs 1536 bytes, got 100"),
        (b"\x00" * 1536, [1, -384], "integers >= 0"),
        (b"\x00" * 1536, [2, 384], "needs 3072 bytes"),
    ],
)
def test_data_length_mismatch(
    stub: Any, client: tc.InferenceServerClient, raw: bytes, shape: list[int], message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_raw_request(raw=raw, shape=shape))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(info.value.details())
    _assert_healthy(client)


@pytest.mark.parametrize(
    ("key", "field", "value", "message"),
    [
        ("priority", "bool_param", True, "parameter 'priority' must be an integer"),
        ("priority", "string_param", "1", "parameter 'priority' must be an integer"),
        ("timeout", "string_param", "5s", "parameter 'timeout' must be a number"),
        ("timeout", "double_param", float("inf"), "parameter 'timeout' must be >= 0"),
    ],
)
def test_a_priority_or_timeout_of_the_wrong_type_is_invalid_argument(
    stub: Any, client: tc.InferenceServerClient, key: str, field: str, value: Any, message: str
) -> None:
    """tritonclient refuses to send these itself; a raw message can."""
    req = _raw_request()
    setattr(req.parameters[key], field, value)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in str(info.value.details())
    _assert_healthy(client)


def test_oversized_message(serve_grpc: Callable[..., ServerThread]) -> None:
    server = serve_grpc(["identity"], max_body_bytes=64 * 1024)
    client = tc.InferenceServerClient(server.url)
    try:
        big = np.zeros((32, 384), np.float32)  # 48 KiB of data: fits
        assert client.infer("identity", _inputs({"INPUT0": big})).as_numpy("OUTPUT0").shape == (
            32,
            384,
        )
        bigger = np.zeros((64, 384), np.float32)  # 96 KiB: over the limit
        err = _error(lambda: client.infer("identity", _inputs({"INPUT0": bigger})))
        assert err.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "larger than max" in str(err.message())
        _assert_healthy(client)
    finally:
        client.close()


def test_unexpected_exception_is_internal_and_server_survives(
    grpc_server: ServerThread,
    client: tc.InferenceServerClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def boom() -> dict[str, Any]:
        raise ZeroDivisionError("secret detail")

    monkeypatch.setattr(grpc_server.dataplane, "server_metadata", boom)
    err = _error(client.get_server_metadata)
    assert err.status() == "StatusCode.INTERNAL"
    assert "ZeroDivisionError" in str(err.message())
    assert "secret" not in str(err.message())
    assert "secret detail" in caplog.text  # logged with its traceback for the operator
    monkeypatch.undo()
    _assert_healthy(client)


# --- statistics -------------------------------------------------------------------------------


def test_statistics(client: tc.InferenceServerClient) -> None:
    a = np.ones((2, 16), np.int32)
    for _ in range(3):
        client.infer("add_sub", _inputs({"INPUT0": a, "INPUT1": a}))
    _error(lambda: client.infer("add_sub", _inputs({"INPUT0": a})))
    stats = client.get_inference_statistics("add_sub", as_json=True)["model_stats"]
    assert len(stats) == 1
    assert stats[0]["name"] == "add_sub"
    assert stats[0]["version"] == "1"
    assert int(stats[0]["inference_count"]) == 6  # 3 requests x 2 rows
    assert int(stats[0]["inference_stats"]["success"]["count"]) == 3
    assert int(stats[0]["inference_stats"]["compute_infer"]["ns"]) > 0
    assert {int(b["batch_size"]) for b in stats[0]["batch_stats"]} <= {2, 4, 6}
    every = client.get_inference_statistics(as_json=True)["model_stats"]
    assert {s["name"] for s in every} == {"identity", "add_sub", "all_types", "strings", "nobatch"}
    err = _error(lambda: client.get_inference_statistics("add_sub", "9"))
    assert err.status() == "StatusCode.NOT_FOUND"


# --- repository extension ---------------------------------------------------------------------


def test_repository_api_is_off_by_default(client: tc.InferenceServerClient) -> None:
    for call in (
        client.get_model_repository_index,
        lambda: client.load_model("identity"),
        lambda: client.unload_model("identity"),
    ):
        err = _error(call)
        assert err.status() == "StatusCode.PERMISSION_DENIED"
        assert "PODSERVE_REPOSITORY_API" in str(err.message())
    assert client.is_model_ready("identity")


def test_repository_api_with_token(serve_grpc: Callable[..., ServerThread]) -> None:
    server = serve_grpc(["identity", "add_sub"], repository_api=True, admin_token="s3cret")
    client = tc.InferenceServerClient(server.url)
    auth = {"authorization": "Bearer s3cret"}
    try:
        for headers in (None, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
            err = _error(lambda h=headers: client.get_model_repository_index(headers=h))
            assert err.status() == "StatusCode.UNAUTHENTICATED"
        err = _error(lambda: client.unload_model("identity"))
        assert err.status() == "StatusCode.UNAUTHENTICATED"

        index = client.get_model_repository_index(headers=auth, as_json=True)["models"]
        by_name = {m["name"]: m for m in index}
        assert by_name["identity"]["state"] == "READY"
        assert "strings" in by_name  # staged but not served: listed without a state
        ready_only = client.get_model_repository_index(headers=auth)  # ready=False by default
        assert len(ready_only.models) == len(index)

        client.unload_model("identity", headers=auth)
        assert not client.is_model_ready("identity")
        assert not client.is_server_ready()
        x = np.ones((1, 384), np.float32)
        err = _error(lambda: client.infer("identity", _inputs({"INPUT0": x})))
        assert err.status() == "StatusCode.UNAVAILABLE"
        assert "unloaded" in str(err.message())

        client.load_model("identity", headers=auth)
        assert client.is_model_ready("identity")
        assert client.is_server_ready()
        assert np.array_equal(
            client.infer("identity", _inputs({"INPUT0": x})).as_numpy("OUTPUT0"), x
        )

        err = _error(lambda: client.load_model("missing", headers=auth))
        assert err.status() == "StatusCode.NOT_FOUND"
        err = _error(lambda: client.unload_model("missing", headers=auth))
        assert err.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


def test_repository_api_without_token(serve_grpc: Callable[..., ServerThread]) -> None:
    server = serve_grpc(["identity"], repository_api=True)
    client = tc.InferenceServerClient(server.url)
    try:
        names = [m.name for m in client.get_model_repository_index().models]
        assert "identity" in names
    finally:
        client.close()


# --- async client, streaming, liveness under load, graceful stop ------------------------------


async def test_aio_client(grpc_server: ServerThread) -> None:
    async with tc_aio.InferenceServerClient(grpc_server.url) as client:
        assert await client.is_server_ready()
        x = np.arange(384, dtype=np.float32).reshape(1, 384)
        inp = tc_aio.InferInput("INPUT0", [1, 384], "FP32")
        inp.set_data_from_numpy(x)
        result = await client.infer("identity", [inp], request_id="aio")
        assert result.get_response().id == "aio"
        assert np.array_equal(result.as_numpy("OUTPUT0"), x)


def test_stream_infer(client: tc.InferenceServerClient) -> None:
    results: list[tuple[Any, Any]] = []
    client.start_stream(callback=lambda result, error: results.append((result, error)))
    try:
        x = np.ones((1, 384), np.float32)
        client.async_stream_infer("identity", _inputs({"INPUT0": x}), request_id="s1")
        client.async_stream_infer("nope", _inputs({"INPUT0": x}), request_id="s2")
        client.async_stream_infer("identity", _inputs({"INPUT0": 2 * x}), request_id="s3")
        deadline = time.monotonic() + 10
        while len(results) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        client.stop_stream()
    assert len(results) == 3
    assert results[0][0].get_response().id == "s1"
    assert results[0][1] is None
    assert results[1][0] is None
    assert "unknown model 'nope'" in str(results[1][1])
    assert np.array_equal(results[2][0].as_numpy("OUTPUT0"), 2 * x)


@pytest.mark.slow
def test_live_while_slow_batch_runs_and_stop_lets_it_finish(
    serve_grpc: Callable[..., ServerThread],
) -> None:
    server = serve_grpc(["slow"])
    client = tc.InferenceServerClient(server.url)
    try:
        done: list[Any] = []
        x = np.ones((1, 1), np.float32)
        client.async_infer(
            "slow", _inputs({"INPUT0": x}), lambda result, error: done.append((result, error))
        )
        time.sleep(0.3)  # the batch is now computing
        started = time.perf_counter()
        assert client.is_server_live()
        assert time.perf_counter() - started < 0.1
        server.call(server.server.stop(SLOW_SECONDS * 3), timeout=SLOW_SECONDS * 4)
        deadline = time.monotonic() + 5
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)  # the client's callback thread may lag the server's stop
        assert len(done) == 1
        assert done[0][1] is None, done
        assert np.array_equal(done[0][0].as_numpy("OUTPUT0"), x)
    finally:
        client.close()
