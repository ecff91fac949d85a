"""A running podserve gRPC server over the test models, for the real tritonclient.

The server (data plane + ``GrpcServer``) runs in a background thread with its own event loop,
as in a pod; the synchronous ``tritonclient.grpc`` client runs in the test thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from podserve.dataplane import DataPlane
from podserve.protocol.grpc.server import GrpcServer
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from tests.models import model_factory


class ServerThread:
    """Data plane + gRPC server on a private loop in a daemon thread."""

    def __init__(self, root: Path, settings: Settings, models: list[str] | None) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.dataplane = DataPlane(ModelRepository(root), settings, factory=model_factory)
        self.server = GrpcServer(self.dataplane, settings, "127.0.0.1", 0)
        self.call(self._start([(m, None) for m in models or []]))
        self.url = f"127.0.0.1:{self.server.port}"

    async def _start(self, refs: list[tuple[str, str | None]]) -> None:
        await self.dataplane.start(refs)
        await self.server.start()

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def close(self) -> None:
        try:
            self.call(self.server.stop(0.5))
            self.call(self.dataplane.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture
def serve_grpc(staged_repo: Path) -> Iterator[Callable[..., ServerThread]]:
    """``serve_grpc(models=None, **settings)`` starts a server; all are stopped at teardown."""
    started: list[ServerThread] = []

    def start(models: list[str] | None = None, **overrides: Any) -> ServerThread:
        settings = Settings(model_root=staged_repo, **overrides)
        server = ServerThread(staged_repo, settings, models)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def grpc_server(serve_grpc: Callable[..., ServerThread]) -> ServerThread:
    """A server over every test model but ``slow``, with default settings."""
    return serve_grpc(["identity", "add_sub", "all_types", "strings", "nobatch"])
