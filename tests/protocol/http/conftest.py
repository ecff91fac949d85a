"""A podserve REST server on a free port, run by a background event loop thread.

``tritonclient.http`` is synchronous (geventhttpclient), so the server lives in its own thread
with its own loop and the test thread plays the client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from podserve.dataplane import DataPlane, ModelFactory
from podserve.protocol.http.app import create_app
from podserve.protocol.http.server import HttpServer
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository
from tests.models import model_factory, stage_all

T = TypeVar("T")


class ServerThread:
    """Data plane + HttpServer on ``127.0.0.1:<free port>`` in a thread; ``url`` once started."""

    def __init__(
        self,
        root: Path,
        settings: Settings | None = None,
        *,
        refs: list[tuple[str, str | None]] | None = None,
        factory: ModelFactory = model_factory,
    ) -> None:
        self.settings = settings or Settings()
        self.root = root
        self.refs = refs or []
        self.factory = factory
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.dataplane: DataPlane | None = None
        self.server: HttpServer | None = None

    def start(self) -> ServerThread:
        self.thread.start()
        self.call(self._start)
        return self

    async def _start(self) -> None:
        self.dataplane = DataPlane(ModelRepository(self.root), self.settings, factory=self.factory)
        await self.dataplane.start(self.refs)
        self.server = HttpServer(
            create_app(self.dataplane, self.settings), self.settings, "127.0.0.1", 0
        )
        await self.server.start()

    def call(self, fn: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60) -> T:
        """Run ``fn()`` on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(timeout)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"http://{self.url}"

    def stop(self) -> None:
        async def _stop() -> None:
            if self.server is not None:
                await self.server.stop()
            if self.dataplane is not None:
                await self.dataplane.stop()

        try:
            self.call(_stop)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """One server with every test model, shared by a test module."""
    root = stage_all(tmp_path_factory.mktemp("repo") / "models")
    srv = ServerThread(root).start()
    yield srv
    srv.stop()


@pytest.fixture
def make_server(staged_repo: Path) -> Iterator[Callable[..., ServerThread]]:
    """Start servers with custom settings over ``staged_repo``; all are stopped afterwards."""
    started: list[ServerThread] = []

    def make(settings: Settings | None = None, **kwargs: Any) -> ServerThread:
        srv = ServerThread(kwargs.pop("root", staged_repo), settings, **kwargs).start()
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
