"""Start-up order, probes and the SIGTERM drain of a serving process.

Order matters in Kubernetes: the HTTP server binds first so the liveness probe answers while
weights load; readiness turns true only when every model loaded and passed its warm-up.

SIGTERM starts three phases (:meth:`Server.shutdown`):

1. **Grace** (``drain_grace_seconds``): readiness is false, every request is served exactly as
   before. Endpoints are being removed and proxies still route here. HTTP answers carry
   ``Connection: close`` so keep-alive clients reconnect, through the Service, elsewhere; the
   queue worker takes no new deliveries.
2. **Drain** (at most ``drain_timeout_seconds``, one deadline for every surface): new requests
   get 503 (HTTP, with ``Connection: close``); gRPC sends GOAWAY and finishes the calls in
   flight; accepted work finishes; the queue worker acks what it replied to. HTTP then stops
   listening and closes each connection once it is idle.
3. **Stop** (at most :data:`~podserve.settings.STOP_MARGIN_SECONDS`): models unload, the process
   exits 0 (1 if the drain deadline passed with work unfinished).

So the worst case from the kubelet's preStop hook to exit is
:func:`~podserve.settings.worst_case_stop_seconds`, which the deployment policy checks
against ``terminationGracePeriodSeconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any, Protocol

from podserve.dataplane import DataPlane, ModelFactory
from podserve.settings import STOP_MARGIN_SECONDS, Settings
from podserve.storage.repository import ModelRepository, parse_model_ref

log = logging.getLogger(__name__)


class Surface(Protocol):
    """What lifecycle needs of a surface (HTTP, gRPC, queue worker, stage server).

    A surface may also have ``async stop_consuming()`` (called when the grace window starts)
    and ``stop_accepting(grace)`` (when the drain starts; ``grace`` is the time left)."""

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
        """Grace, drain, stop: see the module docstring."""
        s, dp = self.settings, self.dataplane
        loop = asyncio.get_running_loop()
        dp.begin_drain()
        for surface in self.surfaces:
            stop_consuming = getattr(surface, "stop_consuming", None)
            if stop_consuming is not None:
                await stop_consuming()
        if s.drain_grace_seconds > 0:
            log.info(
                "serving for %.1fs more (drain grace) while endpoints go", s.drain_grace_seconds
            )
            await asyncio.sleep(s.drain_grace_seconds)
        deadline = loop.time() + s.drain_timeout_seconds

        def left() -> float:
            return max(0.0, deadline - loop.time())

        dp.stop_accepting()
        for surface in self.surfaces:
            stop_accepting = getattr(surface, "stop_accepting", None)
            if stop_accepting is not None:
                stop_accepting(left())
        try:
            await asyncio.wait_for(dp.drain(), left())
        except TimeoutError:
            log.error("drain timed out after %.0fs; stopping anyway", s.drain_timeout_seconds)
            self.exit_code = 1
        for surface in reversed(self.surfaces):
            grace = left()
            try:
                await asyncio.wait_for(surface.stop(grace=grace), grace + 1.0)
            except TimeoutError:
                log.error("%s did not stop by the drain deadline", type(surface).__name__)
                self.exit_code = 1
        # The margin also covers the surfaces' second above; keep one for the exit itself.
        stop_by = deadline + STOP_MARGIN_SECONDS - 1.0
        try:
            await asyncio.wait_for(dp.stop(), max(0.5, stop_by - loop.time()))
        except TimeoutError:
            log.error("a model was still running at the stop deadline; exiting without unloading")
            self.exit_code = 1
        log.info("stopped")


def run_server(settings: Settings, *, factory: ModelFactory | None = None) -> int:
    """Blocking entry point used by ``podserve serve``: uvloop when available."""
    # The event loop encodes answers while an inference thread waits for the lock to start
    # (or hand back) a batch: Python's 5 ms default idles the model that long (issue 20).
    sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency via uvicorn[standard]
        return asyncio.run(Server(settings, factory=factory).run())
    return uvloop.run(Server(settings, factory=factory).run())
