"""The entry's side of the stages: gRPC calls with raw tensors, health polling, schedules.

:class:`StageClients` owns one ``grpc.aio`` channel per stage on a private event loop thread
(the entry's ``infer`` runs on the batcher's inference thread, not on the server's loop).
:meth:`StageClients.run` sends micro-batches through the stages with at most ``inflight`` of
them in flight, so stage 1 works on micro-batch n+1 while stage 2 works on n; with
``inflight=1`` it is the sequential, un-pipelined pass.

A watcher polls every stage's ``ModelReady``: every second while all are up, with backoff
(0.25 s doubling to 2 s) while one is down, and reports the first stage down (or ``None``)
to a callback on every round, which the entry turns into its data-plane state. A call that
fails with ``UNAVAILABLE`` marks its stage down at once, and requests fail fast with
:class:`~podserve.errors.StageUnavailableError` naming the stage until it is back. A call
that runs past the pipeline timeout fails alone (``DEADLINE_EXCEEDED``) and only wakes the
watcher: one slow request does not take the stage away from everyone.

Any other stage error keeps its meaning at the entry (:data:`_STAGE_ERRORS`): a stage's
``RESOURCE_EXHAUSTED`` is the entry's :class:`~podserve.errors.ResourceExhaustedError` (400,
and the entry's batcher splits the batch), ``INVALID_ARGUMENT`` stays a 400.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np

from podserve.errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidRequestError,
    ModelNotFoundError,
    PodserveError,
    ResourceExhaustedError,
    StageUnavailableError,
)
from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.protocol.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from podserve.protocol.grpc.convert import request_to_pb, response_from_pb
from podserve.v2 import InferRequest, InferTensor, to_datatype

log = logging.getLogger(__name__)

T = TypeVar("T")
Availability = Callable[[StageUnavailableError | None], None]
# A stage's status code → the entry's error: the stage's answer keeps its meaning.
_STAGE_ERRORS: dict[grpc.StatusCode, type[PodserveError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
}


class StageClients:
    """Channels to the K stages of one pipeline, their health, and the micro-batch schedule."""

    def __init__(
        self,
        addresses: Sequence[str],
        names: Sequence[str],
        *,
        timeout_s: float = 60.0,
        poll_s: float = 1.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        on_availability: Availability | None = None,
    ) -> None:
        self.addresses, self.names = list(addresses), list(names)
        self.k = len(self.addresses)
        self.timeout_s, self.poll_s = timeout_s, poll_s
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # gRPC's default reconnect backoff grows to 2 minutes: a restarted stage would
            # stay "down" long after it is back.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
        ]
        self._on_availability = on_availability
        self.down: dict[int, str] = {i: "not checked yet" for i in range(self.k)}
        self.all_up = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="pipeline-client"
        )
        self._thread.start()
        self._stubs: list[Any] = []
        self._channels: list[grpc.aio.Channel] = []
        self._wake: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._call(self._open())

    # --- lifecycle ------------------------------------------------------------------------

    def _call(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            coro,  # type: ignore[arg-type]
            self._loop,
        )
        return future.result(timeout)

    async def _open(self) -> None:
        for address in self.addresses:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels.append(channel)
            self._stubs.append(pb_grpc.GRPCInferenceServiceStub(channel))  # type: ignore[no-untyped-call]
        self._wake = asyncio.Event()
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def close(self) -> None:
        if not self._loop.is_running():
            return
        with contextlib.suppress(Exception):
            self._call(self._close(), timeout=5.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5.0)
        if not self._loop.is_running():
            self._loop.close()

    async def _close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for channel in self._channels:
            await channel.close(grace=None)

    def wait_ready(self, timeout_s: float) -> None:
        """Block until every stage answers ready; StageUnavailableError after ``timeout_s``."""
        if not self.all_up.wait(timeout_s):
            raise self.error() or StageUnavailableError("pipeline stages never became ready")

    # --- health ---------------------------------------------------------------------------

    def describe(self, i: int) -> str:
        return f"pipeline stage {i + 1}/{self.k} ({self.names[i]} at {self.addresses[i]})"

    def error(self) -> StageUnavailableError | None:
        """The first stage down, as the error its requests get; None when all are up."""
        for i in sorted(self.down):
            return StageUnavailableError(f"{self.describe(i)} is unavailable: {self.down[i]}")
        return None

    async def _probe(self, i: int) -> str | None:
        """None when stage ``i`` is ready, else why not."""
        try:
            reply = await self._stubs[i].ModelReady(
                pb.ModelReadyRequest(name=self.names[i]), timeout=min(2.0, self.timeout_s)
            )
        except grpc.aio.AioRpcError as exc:
            return f"{exc.code().name}: {exc.details() or 'unreachable'}"
        return None if reply.ready else "not ready (loading, draining or failed)"

    async def _watch(self) -> None:
        assert self._wake is not None
        backoff = 0.25
        while True:
            results = await asyncio.gather(*(self._probe(i) for i in range(self.k)))
            for i, why in enumerate(results):
                if why is None:
                    if self.down.pop(i, None) is not None:
                        log.info("%s is ready", self.describe(i))
                else:
                    if i not in self.down:
                        log.warning("%s is down: %s", self.describe(i), why)
                    self.down[i] = why
            self._report()
            if self.down:
                wait, backoff = backoff, min(backoff * 2, 2.0)
            else:
                wait, backoff = self.poll_s, 0.25
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _report(self) -> None:
        if self.down:
            self.all_up.clear()
        else:
            self.all_up.set()
        if self._on_availability is not None:
            try:
                self._on_availability(self.error())
            except Exception:  # a callback bug must not stop the health checks
                log.exception("pipeline availability callback failed")

    def _mark_down(self, i: int, why: str) -> None:
        if i not in self.down:
            log.warning("%s is down: %s", self.describe(i), why)
        self.down[i] = why
        self._report()
        if self._wake is not None:
            self._wake.set()

    # --- inference ------------------------------------------------------------------------

    async def _infer(self, i: int, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if i in self.down:
            raise StageUnavailableError(f"{self.describe(i)} is unavailable: {self.down[i]}")
        tensors = [InferTensor(n, to_datatype(a), tuple(a.shape), a) for n, a in inputs.items()]
        message = request_to_pb(InferRequest(model_name=self.names[i], inputs=tensors))
        try:
            reply = await self._stubs[i].ModelInfer(message, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise self._stage_error(i, exc) from None
        outputs = response_from_pb(reply).outputs
        return outputs[0].data

    def _stage_error(self, i: int, exc: grpc.aio.AioRpcError) -> PodserveError:
        code, detail = exc.code(), exc.details() or exc.code().name
        if code is grpc.StatusCode.UNAVAILABLE:
            if not detail.startswith("pipeline stage"):  # not a stage further down, relayed
                self._mark_down(i, f"{code.name}: {detail}")
            return StageUnavailableError(f"{self.describe(i)} is unavailable: {detail}")
        if code is grpc.StatusCode.DEADLINE_EXCEEDED and self._wake is not None:
            self._wake.set()  # probe now; only the probe decides that the stage is down
        error = _STAGE_ERRORS.get(code, InferenceError)
        return error(f"{self.describe(i)} failed: {code.name}: {detail}")

    async def _chain(self, batch: dict[str, np.ndarray], slots: asyncio.Semaphore) -> np.ndarray:
        async with slots:
            hidden = await self._infer(0, batch)
            for i in range(1, self.k):
                hidden = await self._infer(
                    i, {"hidden": hidden, "attention_mask": batch["attention_mask"]}
                )
            return hidden

    async def _run(self, batches: list[dict[str, np.ndarray]], inflight: int) -> list[np.ndarray]:
        slots = asyncio.Semaphore(max(1, inflight))
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._chain(b, slots)) for b in batches]
        return [t.result() for t in tasks]

    def run(self, batches: list[dict[str, np.ndarray]], inflight: int) -> list[np.ndarray]:
        """The last stage's hidden states of each micro-batch (tokens in, order kept)."""
        try:
            return self._call(self._run(batches, inflight))
        except BaseExceptionGroup as group:  # the TaskGroup's: answer the first failure
            first: BaseException = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            if isinstance(first, PodserveError):
                raise first from None
            raise InferenceError(f"pipeline failed: {type(first).__name__}: {first}") from None
