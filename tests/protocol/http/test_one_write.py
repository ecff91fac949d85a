"""The REST server sends each response's head and body together, and never holds one back.

Raw sockets, so what is checked is the bytes on the wire: pipelined requests, HEAD (no body
write follows its head), ``Expect: 100-continue`` (the interim answer must go out at once),
a large binary body (written straight through) and a small JSON answer.
"""

from __future__ import annotations

import json
import socket

import numpy as np

from tests.protocol.http.conftest import ServerThread


def _connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_response(sock: socket.socket, buf: bytearray, head_only: bool = False) -> bytes:
    """One complete response (head + Content-Length body) from ``buf`` and the socket."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    head = bytes(buf[:end]).lower()
    length = 0 if head_only else int(_header(head, b"content-length"))
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        buf += chunk
    response = bytes(buf[: end + length])
    del buf[: end + length]
    return response


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.lower().split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key == name:
            return value.strip()
    raise AssertionError(f"no {name!r} header in {head!r}")


def test_pipelined_and_head_requests_are_answered(server: ServerThread) -> None:
    live = b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    head = b"HEAD /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(live + live)
        buf = bytearray()
        for _ in range(2):
            answer = _read_response(sock, buf)
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b'{"live":true}')
        sock.sendall(head)  # no body write follows: the head alone must still arrive
        assert _read_response(sock, buf, head_only=True).startswith(b"HTTP/1.1 200 ")
        sock.sendall(live)
        assert _read_response(sock, buf).endswith(b'{"live":true}')
        assert not buf


def test_expect_100_continue_is_not_held(server: ServerThread) -> None:
    data = list(np.arange(384, dtype=np.float32).tolist())
    body = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 384], "data": data}]}
    ).encode()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        buf = bytearray()
        interim = _read_response(sock, buf, head_only=True)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(body)
        answer = _read_response(sock, buf)
    assert answer.startswith(b"HTTP/1.1 200 ")
    out = json.loads(answer.split(b"\r\n\r\n", 1)[1])["outputs"][0]
    assert out["data"] == data


def test_large_binary_answer_arrives_whole(server: ServerThread) -> None:
    x = np.random.default_rng(0).standard_normal((32, 384)).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "FP32",
                    "shape": [32, 384],
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    body = header + x.tobytes()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Inference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n%s"
            % (len(header), len(body), body)
        )
        answer = _read_response(sock, bytearray())
    head, payload = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), answer[:300]
    hlen = int(_header(head + b"\r\n", b"inference-header-content-length"))
    assert np.array_equal(np.frombuffer(payload[hlen:], np.float32).reshape(32, 384), x)
