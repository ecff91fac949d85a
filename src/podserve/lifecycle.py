"""Start-up order, probes and the SIGTERM drain of a serving process.

Order matters in Kubernetes: the HTTP server binds first so the liveness probe answers while
weights load; readiness turns true only when every model loaded and passed its warm-up. On
SIGTERM, readiness goes false at once, new requests are still accepted for
``drain_grace_seconds`` (while endpoints are removed), then refused with 503; accepted work
finishes (at most ``drain_timeout_seconds``), the queue worker acks what it replied to, and
the process exits 0 before the pod's termination grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any, Protocol

from podserve.dataplane import DataPlane, ModelFactory
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository, parse_model_ref

log = logging.getLogger(__name__)


class Surface(Protocol):
    """What lifecycle needs of a surface (HTTP, gRPC, queue worker, stage server)."""

    async def start(self) -> None: ...

    async def stop(self, grace: float) -> None: ...


class Server:
    """One serving process: a data plane and the surfaces the settings enable."""

    def __init__(
        self,
        settings: Settings,
        *,
        factory: ModelFactory | None = None,
        http: bool = True,
        grpc: bool = True,
    ) -> None:
        self.settings = settings
        self.dataplane = DataPlane(
            ModelRepository.from_settings(settings), settings, factory=factory
        )
        self.surfaces: list[Any] = []
        self._want_http = http and settings.http_port > 0
        self._want_grpc = grpc and settings.grpc_port > 0
        self._stop = asyncio.Event()
        self.exit_code = 0

    def _build_surfaces(self) -> None:
        s, dp = self.settings, self.dataplane
        if self._want_http:
            from podserve.protocol.http.app import create_app
            from podserve.protocol.http.server import HttpServer

            self.surfaces.append(HttpServer(create_app(dp, s), s, s.host, s.http_port))
        if self._want_grpc:
            from podserve.protocol.grpc.server import GrpcServer

            self.surfaces.append(GrpcServer(dp, s, s.host, s.grpc_port))
        if s.queue:
            from podserve.protocol.queue.worker import QueueWorker

            self.surfaces.append(QueueWorker(dp, s))

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        self._build_surfaces()
        for surface in self.surfaces:
            await surface.start()
        refs = [parse_model_ref(ref) for ref in self.settings.models]
        loading = asyncio.create_task(self.dataplane.start(refs))
        await self._stop.wait()
        log.info("stop requested: draining")
        if not loading.done():
            loading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loading
        await self.shutdown()
        return self.exit_code

    async def shutdown(self) -> None:
        s, dp = self.settings, self.dataplane
        dp.begin_drain()
        for surface in self.surfaces:
            stop_consuming = getattr(surface, "stop_consuming", None)
            if stop_consuming is not None:
                await stop_consuming()
        if s.drain_grace_seconds > 0:
            await asyncio.sleep(s.drain_grace_seconds)
        dp.stop_accepting()
        try:
            await asyncio.wait_for(dp.drain(), s.drain_timeout_seconds)
        except TimeoutError:
            log.error("drain timed out after %.0fs; stopping anyway", s.drain_timeout_seconds)
            self.exit_code = 1
        for surface in reversed(self.surfaces):
            await surface.stop(grace=1.0)
        await dp.stop()
        log.info("stopped")


def run_server(settings: Settings, *, factory: ModelFactory | None = None) -> int:
    """Blocking entry point used by ``podserve serve``: uvloop when available."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency via uvicorn[standard]
        runner = asyncio.run
    return runner(Server(settings, factory=factory).run())
