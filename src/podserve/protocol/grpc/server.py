"""The gRPC surface: ``inference.GRPCInferenceService`` over the data plane.

Wire-compatible with ``tritonclient.grpc`` and KServe's v2 clients::

    server = GrpcServer(dataplane, settings, host="0.0.0.0", port=8081)
    await server.start()          # port 0 picks a free port: server.port
    ...
    await server.stop(grace=5.0)

The servicer only translates: requests are decoded by :mod:`.convert`, answered by
:class:`~podserve.dataplane.DataPlane`, and errors become statuses in :mod:`.errors`.
It runs on ``grpc.aio`` in the data plane's event loop; inference itself runs off the loop
in the batcher. The repository RPCs are off unless ``repository_api`` is set, and then need
``authorization: Bearer <admin_token>`` metadata when a token is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
import grpc.aio

from podserve.dataplane import DataPlane
from podserve.errors import (
    ConfigurationError,
    ForbiddenError,
    InvalidRequestError,
    ModelDirectoryError,
    ModelNotFoundError,
    PodserveError,
    UnauthorizedError,
)
from podserve.protocol.grpc import convert
from podserve.protocol.grpc._generated import grpc_service_pb2 as pb
from podserve.protocol.grpc._generated import grpc_service_pb2_grpc as pb_grpc
from podserve.protocol.grpc.errors import ErrorInterceptor
from podserve.settings import Settings

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """One method per RPC; each decodes, calls the data plane and encodes."""

    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings

    # --- health and metadata ------------------------------------------------------------

    async def ServerLive(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=self.dataplane.live())

    async def ServerReady(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.dataplane.ready())

    async def ModelReady(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        ready = self.dataplane.model_ready(_name(request.name), request.version or None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        meta = self.dataplane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        meta = self.dataplane.model_metadata(_name(request.name), request.version or None)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=[v for v in meta["versions"] if v],
            platform=meta["platform"],
            inputs=[
                tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in meta["inputs"]
            ],
            outputs=[
                tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                for t in meta["outputs"]
            ],
        )

    # --- inference ----------------------------------------------------------------------

    async def ModelInfer(self, request: pb.ModelInferRequest, context: Context) -> Any:
        decoded = convert.request_from_pb(request)
        _name(decoded.model_name)
        response = await self.dataplane.infer(decoded, surface="grpc")
        return convert.response_to_pb(response)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Answers in order; a failed request yields its ``error_message``, the stream goes on."""
        async for request in request_iterator:
            try:
                decoded = convert.request_from_pb(request)
                _name(decoded.model_name)
                response = await self.dataplane.infer(decoded, surface="grpc")
            except PodserveError as exc:
                yield pb.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name, id=request.id
                    ),
                )
                continue
            yield pb.ModelStreamInferResponse(infer_response=convert.response_to_pb(response))

    # --- statistics ---------------------------------------------------------------------

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: Context) -> Any:
        stats = self.dataplane.model_stats(request.name or None)
        if request.name and request.version and stats and stats[0]["version"] != request.version:
            raise ModelNotFoundError(
                f"model '{request.name}' version {request.version} is not served"
            )
        return pb.ModelStatisticsResponse(model_stats=[_stats_to_pb(s) for s in stats])

    # --- repository extension -----------------------------------------------------------

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: Context) -> Any:
        self._authorize(context)
        entry = pb.RepositoryIndexResponse.ModelIndex
        models = [
            entry(
                name=m["name"],
                version=m.get("version", ""),
                state=m.get("state", ""),
                reason=m.get("reason", ""),
            )
            for m in self.dataplane.repository_index()
            if not request.ready or m.get("state") == "READY"
        ]
        return pb.RepositoryIndexResponse(models=models)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: Context
    ) -> Any:
        self._authorize(context)
        name = _name(request.model_name)
        unsupported = sorted(set(convert.params_from_pb(request.parameters)))
        if unsupported:
            raise InvalidRequestError(
                f"load parameters are not supported (got {', '.join(unsupported)}); "
                "podserve loads the manifest staged in the repository"
            )
        if name not in self.dataplane.models and name not in self.dataplane.repository.models():
            raise ModelNotFoundError(f"no model '{name}' in the repository")
        current = self.dataplane.models.get(name)
        served = await self.dataplane.api_load(name, current.version if current else None)
        if not served.ready:
            raise ModelDirectoryError(f"model '{name}' failed to load: {served.reason}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: Context
    ) -> Any:
        self._authorize(context)
        await self.dataplane.unload(_name(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    def _authorize(self, context: Context) -> None:
        if not self.settings.repository_api:
            raise ForbiddenError(
                "the repository API is disabled; enable it with PODSERVE_REPOSITORY_API=true"
            )
        token = self.settings.admin_token
        if not token:
            return
        given = dict(context.invocation_metadata() or ()).get("authorization", "")
        if isinstance(given, bytes):
            given = given.decode("latin-1")
        expected = f"Bearer {token.get_secret_value()}".encode()
        if not hmac.compare_digest(given.encode(), expected):
            raise UnauthorizedError(
                "the repository API needs metadata 'authorization: Bearer <admin token>'"
            )


def _name(name: str) -> str:
    if not name:
        raise InvalidRequestError("a model name is required")
    return name


def _stats_to_pb(stats: dict[str, Any]) -> pb.ModelStatistics:
    """The data plane's Triton-shaped statistics dict → ``ModelStatistics``."""
    inf = stats["inference_stats"]

    def duration(d: dict[str, int]) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.get("count", 0), ns=d.get("ns", 0))

    return pb.ModelStatistics(
        name=stats["name"],
        version=stats["version"],
        last_inference=stats.get("last_inference", 0),
        inference_count=stats["inference_count"],
        execution_count=stats["execution_count"],
        inference_stats=pb.InferStatistics(**{k: duration(v) for k, v in inf.items()}),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=b["batch_size"],
                compute_infer=duration(b["compute_infer"]),
            )
            for b in stats["batch_stats"]
        ],
    )


class GrpcServer:
    """A ``grpc.aio`` server for one data plane, started and stopped with the event loop."""

    def __init__(self, dataplane: DataPlane, settings: Settings, host: str, port: int) -> None:
        self.dataplane = dataplane
        self.settings = settings
        self.host = host
        self.port = port
        self._server: grpc.aio.Server | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        limit = self.settings.max_body_bytes
        server = grpc.aio.server(
            interceptors=[ErrorInterceptor()],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
                *self._connection_age(),
            ],
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]
            InferenceServicer(self.dataplane, self.settings), server
        )
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        try:
            bound = server.add_insecure_port(f"{host}:{self.port}")
        except RuntimeError as exc:  # grpc reports a taken or invalid address this way
            raise ConfigurationError(f"gRPC cannot listen on {host}:{self.port}: {exc}") from None
        self.port = bound
        await server.start()
        self._server = server
        log.info("gRPC GRPCInferenceService listening on %s:%d", self.host, self.port)

    def _connection_age(self) -> list[tuple[str, int]]:
        """GOAWAY after a connection's age, while the server still runs, so no call is lost
        (a server's stop cancels the calls that arrived but were not yet handed to a handler,
        grpc/grpc#41785). No age grace: a call in flight on an old connection always finishes
        (a long pipeline stage call included); shutdown bounds them with its own deadline."""
        age = self.settings.grpc_max_connection_age_seconds
        return [("grpc.max_connection_age_ms", int(age * 1000))] if age > 0 else []

    def stop_accepting(self, grace: float) -> None:
        """The drain begins: GOAWAY to every client (they reconnect, through the Service,
        elsewhere), no new calls, running ones finish for up to ``grace`` seconds."""
        if self._server is not None and self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._server.stop(grace))

    async def stop(self, grace: float) -> None:
        """Refuse new calls, let running ones finish for up to ``grace`` seconds."""
        self.stop_accepting(grace)
        if self._stopping is not None:
            await self._stopping
            self._server, self._stopping = None, None

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
