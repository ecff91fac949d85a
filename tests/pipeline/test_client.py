"""The entry's stage client against a real gRPC stage server whose answers the test chooses.

The stage here is a small ``GRPCInferenceService`` on loopback: ``echo`` copies its input,
``exhausted`` and ``invalid`` fail with that status, ``slow`` sleeps past the pipeline
timeout once and then answers quickly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from podserve.errors import (
    DeadlineExceededError,
    InvalidRequestError,
    ResourceExhaustedError,
    StageUnavailableError,
)
from podserve.pipeline.client import StageClients
from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.protocol.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from podserve.protocol.grpc.convert import request_from_pb, response_to_pb
from podserve.v2.types import InferResponse

FAILURES = {
    "exhausted": (grpc.StatusCode.RESOURCE_EXHAUSTED, "batch of 64 does not fit in memory"),
    "invalid": (grpc.StatusCode.INVALID_ARGUMENT, "hidden has the wrong width"),
}


class Stage(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.slow_calls = 0
        self.lock = threading.Lock()

    def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.model_name in FAILURES:
            context.abort(*FAILURES[request.model_name])
        if request.model_name == "slow":
            with self.lock:
                self.slow_calls += 1
                first = self.slow_calls == 1
            if first:
                time.sleep(2.0)
        decoded = request_from_pb(request)
        return response_to_pb(InferResponse(request.model_name, "1", decoded.inputs))


@pytest.fixture
def server() -> Iterator[grpc.Server]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    yield server
    server.stop(grace=None)


@pytest.fixture
def stage(server: grpc.Server) -> tuple[str, Stage]:
    servicer = Stage()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"127.0.0.1:{port}", servicer


def clients(address: str, name: str, timeout_s: float = 5.0) -> StageClients:
    c = StageClients([address], [name], timeout_s=timeout_s, poll_s=0.2)
    c.wait_ready(30)
    return c


BATCH = {"hidden": np.ones((2, 3), np.float32)}


def test_a_stage_answer_comes_back(stage: tuple[str, Stage]) -> None:
    c = clients(stage[0], "echo")
    try:
        np.testing.assert_array_equal(c.run([BATCH], inflight=1)[0], BATCH["hidden"])
    finally:
        c.close()


@pytest.mark.parametrize(
    ("name", "error", "status", "code"),
    [
        ("exhausted", ResourceExhaustedError, 400, "RESOURCE_EXHAUSTED"),
        ("invalid", InvalidRequestError, 400, "INVALID_ARGUMENT"),
    ],
)
def test_a_stage_error_keeps_its_meaning_and_the_stage_stays_up(
    stage: tuple[str, Stage], name: str, error: type[Exception], status: int, code: str
) -> None:
    c = clients(stage[0], name)
    try:
        with pytest.raises(error) as caught:
            c.run([BATCH], inflight=1)
        assert caught.value.http_status == status  # type: ignore[attr-defined]
        assert caught.value.grpc_code == code  # type: ignore[attr-defined]
        assert FAILURES[name][1] in str(caught.value)
        assert c.error() is None  # the stage answered: it is not down
    finally:
        c.close()


def test_one_call_past_the_timeout_does_not_mark_the_stage_down(
    stage: tuple[str, Stage],
) -> None:
    c = clients(stage[0], "slow", timeout_s=0.5)
    try:
        with pytest.raises(DeadlineExceededError):
            c.run([BATCH], inflight=1)
        assert c.error() is None
        # The next request goes through at once instead of failing fast as "unavailable".
        np.testing.assert_array_equal(c.run([BATCH], inflight=1)[0], BATCH["hidden"])
    finally:
        c.close()


def test_an_unreachable_stage_is_marked_down(stage: tuple[str, Stage], server: grpc.Server) -> None:
    c = clients(stage[0], "echo")
    try:
        server.stop(grace=None).wait()  # calls now fail with UNAVAILABLE
        with pytest.raises(StageUnavailableError):
            c.run([BATCH], inflight=1)
        assert c.error() is not None
    finally:
        c.close()
