"""Bad input: each a 4xx with a message, and the server healthy afterwards."""

from __future__ import annotations

import gzip
import json
import logging
import socket
import time
import zlib
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import requests

from podserve.errors import ModelNotFoundError
from podserve.protocol.http.errors import error_response
from podserve.settings import Settings
from tests.protocol.http.conftest import ServerThread

X = [0.25] * 384


def _tensor(**over: object) -> dict[str, object]:
    return {"name": "INPUT0", "datatype": "FP32", "shape": [1, 384], "data": X, **over}


def _binary(header: dict[str, object], data: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    return head + data, {"Inference-Header-Content-Length": str(len(head))}


RAW = np.zeros((1, 384), np.float32).tobytes()
BIN_INPUT = {
    "name": "INPUT0",
    "datatype": "FP32",
    "shape": [1, 384],
    "parameters": {"binary_data_size": len(RAW)},
}

# (id, path, body, headers, status, fragment of the error message)
CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    ("malformed-json", "identity", b'{"inputs": [', {}, 400, "not valid JSON"),
    ("not-an-object", "identity", b"[1, 2]", {}, 400, "JSON object"),
    ("no-inputs", "identity", b"{}", {}, 400, "'inputs'"),
    ("input-not-object", "identity", b'{"inputs": [3]}', {}, 400, "JSON object"),
    (
        "wrong-datatype",
        "identity",
        json.dumps({"inputs": [_tensor(datatype="INT32", data=[1] * 384)]}).encode(),
        {},
        400,
        "datatype INT32, expected FP32",
    ),
    (
        "unknown-datatype",
        "identity",
        json.dumps({"inputs": [_tensor(datatype="FP8")]}).encode(),
        {},
        400,
        "unknown datatype",
    ),
    (
        "data-length",
        "identity",
        json.dumps({"inputs": [_tensor(data=X[:-1])]}).encode(),
        {},
        400,
        "needs 384 elements",
    ),
    (
        "shape-vs-model",
        "identity",
        json.dumps({"inputs": [_tensor(shape=[1, 383], data=X[:-1])]}).encode(),
        {},
        400,
        "does not match",
    ),
    (
        "negative-shape",
        "identity",
        json.dumps({"inputs": [_tensor(shape=[-1, 384])]}).encode(),
        {},
        400,
        "shape must be",
    ),
    (
        "text-for-numbers",
        "identity",
        json.dumps({"inputs": [_tensor(data=["a"] * 384)]}).encode(),
        {},
        400,
        "does not match datatype",
    ),
    (
        "float-for-int",
        "add_sub",
        json.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [0.5] * 16},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
                ]
            }
        ).encode(),
        {},
        400,
        "must be integers",
    ),
    (
        "missing-input",
        "add_sub",
        json.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16}
                ]
            }
        ).encode(),
        {},
        400,
        "missing input 'INPUT1'",
    ),
    (
        "unknown-input",
        "identity",
        json.dumps({"inputs": [_tensor(name="X")]}).encode(),
        {},
        400,
        "unknown input 'X'",
    ),
    (
        "unknown-output",
        "identity",
        json.dumps({"inputs": [_tensor()], "outputs": [{"name": "NOPE"}]}).encode(),
        {},
        400,
        "unknown output",
    ),
    (
        "batch-too-big",
        "identity",
        json.dumps({"inputs": [_tensor(shape=[33, 384], data=X * 33)]}).encode(),
        {},
        400,
        "max_batch_size",
    ),
    (
        "bad-timeout",
        "identity",
        json.dumps({"inputs": [_tensor()], "parameters": {"timeout": "soon"}}).encode(),
        {},
        400,
        "timeout",
    ),
    (
        "negative-timeout",
        "identity",
        json.dumps({"inputs": [_tensor()], "parameters": {"timeout": -5}}).encode(),
        {},
        400,
        "must be >= 0 microseconds",
    ),
    (
        "boolean-timeout",
        "identity",
        json.dumps({"inputs": [_tensor()], "parameters": {"timeout": True}}).encode(),
        {},
        400,
        "parameter 'timeout' must be a number (microseconds), not a bool",
    ),
    (
        "boolean-priority",
        "identity",
        json.dumps({"inputs": [_tensor()], "parameters": {"priority": True}}).encode(),
        {},
        400,
        "parameter 'priority' must be an integer, got 'True'",
    ),
    (
        "fractional-priority",
        "identity",
        json.dumps({"inputs": [_tensor()], "parameters": {"priority": 2.5}}).encode(),
        {},
        400,
        "parameter 'priority' must be an integer, got '2.5'",
    ),
    (
        "string-priority",
        "identity",
        json.dumps({"inputs": [_tensor()], "parameters": {"priority": "high"}}).encode(),
        {},
        400,
        "parameter 'priority' must be an integer, got 'high'",
    ),
    (
        "nested-unlike-shape",
        "identity",
        json.dumps({"inputs": [_tensor(data=[X[:192], X[192:]])]}).encode(),
        {},
        400,
        "nested as [2, 192], but the shape is [1, 384]",
    ),
    (
        "nested-unevenly",
        "identity",
        json.dumps({"inputs": [_tensor(data=[X[:-1], [0.5]])]}).encode(),
        {},
        400,
        "nested unevenly",
    ),
    (
        "batch-sizes-disagree",
        "add_sub",
        json.dumps(
            {
                "inputs": [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": [1] * 16},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [2, 16], "data": [1] * 32},
                ]
            }
        ).encode(),
        {},
        400,
        "'INPUT0' has 1 rows, 'INPUT1' has 2",
    ),
    (
        "unknown-model",
        "nope",
        json.dumps({"inputs": [_tensor()]}).encode(),
        {},
        404,
        "unknown model",
    ),
    (
        "unknown-model-empty-body",
        "nope",
        b"{}",
        {},
        404,
        "unknown model",
    ),
    (
        "unknown-version",
        "identity/versions/3",
        json.dumps({"inputs": [_tensor()]}).encode(),
        {},
        404,
        "version 3",
    ),
    (
        "odd-version",
        "identity/versions/abc",
        json.dumps({"inputs": [_tensor()]}).encode(),
        {},
        404,
        "no version",
    ),
    (
        "header-not-int",
        "identity",
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        400,
        "must be an integer",
    ),
    (
        "header-past-body",
        "identity",
        b"{}",
        {"Inference-Header-Content-Length": "99"},
        400,
        "does not fit",
    ),
    (
        "header-cuts-json",
        "identity",
        *_binary({"inputs": [BIN_INPUT]}, RAW)[:1],
        {"Inference-Header-Content-Length": "10"},
        400,
        "not valid JSON",
    ),
    (
        "binary-too-short",
        "identity",
        *_binary({"inputs": [BIN_INPUT]}, RAW[:-4]),
        400,
        "only 1532 bytes",
    ),
    (
        "binary-trailing",
        "identity",
        *_binary({"inputs": [BIN_INPUT]}, RAW + b"xx"),
        400,
        "2 bytes of binary data",
    ),
    (
        "binary-size-vs-shape",
        "identity",
        *_binary({"inputs": [{**BIN_INPUT, "parameters": {"binary_data_size": 8}}]}, RAW[:8]),
        400,
        "needs 1536 bytes",
    ),
    (
        "bytes-huge-shape",
        "strings",
        *_binary(
            {
                "inputs": [
                    {
                        "name": "INPUT0",
                        "datatype": "BYTES",
                        "shape": [1, 10**12],
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"\0\0\0\0",
        ),
        400,
        "BYTES items",
    ),
    (
        "bad-gzip",
        "identity",
        b"not gzip at all",
        {"Content-Encoding": "gzip"},
        400,
        "not valid gzip",
    ),
    (
        "unknown-encoding",
        "identity",
        b"{}",
        {"Content-Encoding": "br"},
        400,
        "unsupported Content-Encoding",
    ),
]


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


def _healthy(server: ServerThread, session: requests.Session) -> None:
    assert session.get(f"{server.base}/v2/health/live", timeout=5).status_code == 200
    assert session.get(f"{server.base}/v2/health/ready", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_request(
    server: ServerThread,
    session: requests.Session,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    r = session.post(
        f"{server.base}/v2/models/{path}/infer", data=body, headers=headers, timeout=10
    )
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]
    _healthy(server, session)


def test_unknown_path_and_method(server: ServerThread, session: requests.Session) -> None:
    r = session.get(f"{server.base}/v2/models/identity/infer", timeout=5)
    assert r.status_code == 405
    assert "GET" in r.json()["error"]
    r = session.get(f"{server.base}/v3/whatever", timeout=5)
    assert r.status_code == 404
    assert "no endpoint" in r.json()["error"]
    _healthy(server, session)


@pytest.fixture
def small(make_server: Callable[..., ServerThread]) -> ServerThread:
    return make_server(Settings(max_body_bytes=2048), refs=[("identity", None)])


def test_oversized_body_is_413(small: ServerThread, session: requests.Session) -> None:
    url = f"{small.base}/v2/models/identity/infer"
    big = json.dumps({"inputs": [_tensor()]}).encode()
    assert len(big) > 2048
    r = session.post(url, data=big, timeout=10)
    assert r.status_code == 413
    assert "2048" in r.json()["error"]
    # chunked: no Content-Length, the limit is enforced while the body streams in
    r = session.post(url, data=iter([big[:3000], big[3000:]]), timeout=10)
    assert r.status_code == 413
    # a small gzip body that inflates past the limit
    bomb = gzip.compress(b" " * 100_000)
    r = session.post(url, data=bomb, headers={"Content-Encoding": "gzip"}, timeout=10)
    assert r.status_code == 413
    assert "decompressed" in r.json()["error"]
    # under the limit it works, deflate too
    small_body = json.dumps({"inputs": [_tensor(shape=[1, 384], data=[0] * 384)]}).encode()
    r = session.post(
        url, data=zlib.compress(small_body), timeout=10, headers={"Content-Encoding": "deflate"}
    )
    assert r.status_code == 200, r.text
    _healthy(small, session)


def test_413_arrives_before_the_body_is_sent(small: ServerThread) -> None:
    """The server answers as soon as the declared or streamed size passes the limit."""
    for declared in (True, False):
        with socket.create_connection(("127.0.0.1", small.port), timeout=5) as sock:
            length = "Content-Length: 100000000" if declared else "Transfer-Encoding: chunked"
            sock.sendall(
                f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n{length}\r\n\r\n".encode()
            )
            chunk = b"x" * 8192
            sock.sendall(chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            t0 = time.monotonic()
            reply = sock.recv(4096)
            assert time.monotonic() - t0 < 2
            assert reply.startswith(b"HTTP/1.1 413"), reply[:100]


def test_unexpected_errors_are_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="podserve.protocol.http.errors"):
        status, body = error_response(KeyError("boom"))
    assert status == 500
    assert json.loads(body) == {"error": "internal server error (KeyError); see the server log"}
    assert "unexpected error" in caplog.text
    status, body = error_response(ModelNotFoundError("unknown model 'm'"))
    assert (status, json.loads(body)) == (404, {"error": "unknown model 'm'"})
