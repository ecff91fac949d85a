"""Keep-alive clients that record every request's outcome: HTTP (aiohttp) and gRPC.

Each HTTP client is one ``aiohttp`` session holding one keep-alive connection (it reopens
one only when the server said ``Connection: close`` or closed it while idle); each gRPC
client is one ``tritonclient.grpc.aio`` channel. Every answer is checked against the
request (the echo model returns its input), so a wrong answer counts as a failure too::

    load = Load(http_url="http://127.0.0.1:8080", grpc_addr="127.0.0.1:8081",
                http_clients=8, grpc_clients=2)
    outcomes = await load.run(seconds=10.0)     # or load.start() ... await load.stop()
    failed = [o for o in outcomes if not o.ok]
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

import aiohttp
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException

from tests.integration.serve_process import MODEL, WIDTH, infer_body


@dataclass(frozen=True)
class Outcome:
    """One request: when it was sent (``time.monotonic()``), how long it took, what came back.

    ``result`` is ``"ok"``, an HTTP status (``"503"``), a gRPC status name (``"UNAVAILABLE"``),
    ``"refused"`` (no connection could be opened: nothing was sent), ``"cut"`` (the
    connection closed under the request), ``"timeout"`` or ``"wrong answer"``.
    """

    surface: str
    client: int
    sent: float
    latency: float
    result: str
    close: bool = False  # the HTTP response carried ``Connection: close``

    @property
    def ok(self) -> bool:
        return self.result == "ok"

    @property
    def done(self) -> float:
        return self.sent + self.latency


class Load:
    """``http_clients`` + ``grpc_clients`` closed-loop clients, each one request at a time."""

    def __init__(
        self,
        *,
        http_url: str | None = None,
        grpc_addr: str | None = None,
        http_clients: int = 0,
        grpc_clients: int = 0,
        model: str = MODEL,
        timeout_s: float = 30.0,
    ) -> None:
        self.http_url = http_url
        self.grpc_addr = grpc_addr
        self.http_clients = http_clients
        self.grpc_clients = grpc_clients
        self.model = model
        self.timeout_s = timeout_s
        self.outcomes: list[Outcome] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._values = itertools.count(1)

    def start(self) -> None:
        for i in range(self.http_clients):
            self._tasks.append(asyncio.create_task(self._http_client(i)))
        for i in range(self.grpc_clients):
            self._tasks.append(asyncio.create_task(self._grpc_client(i)))

    async def stop(self) -> list[Outcome]:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return sorted(self.outcomes, key=lambda o: o.sent)

    async def run(self, seconds: float) -> list[Outcome]:
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return await self.stop()

    async def _http_client(self, client: int) -> None:
        assert self.http_url is not None
        url = f"{self.http_url}/v2/models/{self.model}/infer"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not self._stop.is_set():
                value = float(next(self._values) % 65536)
                sent = time.monotonic()
                close = False
                try:
                    async with session.post(url, data=infer_body(value)) as response:
                        body = await response.json(content_type=None)
                        close = response.headers.get("Connection", "").lower() == "close"
                        if response.status != 200:
                            result = str(response.status)
                        elif body["outputs"][0]["data"] == [value] * WIDTH:
                            result = "ok"
                        else:
                            result = "wrong answer"
                except aiohttp.ClientConnectorError:
                    result = "refused"
                except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                    result = f"cut ({type(exc).__name__})"
                except TimeoutError:
                    result = "timeout"
                self._record("http", client, sent, result, close)
                if result == "refused":  # nothing listens: do not spin on connect attempts
                    await asyncio.sleep(0.05)

    async def _grpc_client(self, client: int) -> None:
        assert self.grpc_addr is not None
        async with grpcclient.InferenceServerClient(self.grpc_addr) as triton:
            while not self._stop.is_set():
                value = float(next(self._values) % 65536)
                row = np.full((1, WIDTH), value, dtype=np.float32)
                tensor = grpcclient.InferInput("INPUT0", [1, WIDTH], "FP32")
                tensor.set_data_from_numpy(row)
                sent = time.monotonic()
                try:
                    answer = await triton.infer(self.model, [tensor], client_timeout=self.timeout_s)
                    got = answer.as_numpy("OUTPUT0")
                    result = "ok" if np.array_equal(got, row) else "wrong answer"
                except InferenceServerException as exc:
                    result = str(exc.status()).removeprefix("StatusCode.")
                self._record("grpc", client, sent, result, False)
                if result == "UNAVAILABLE":
                    await asyncio.sleep(0.05)

    def _record(self, surface: str, client: int, sent: float, result: str, close: bool) -> None:
        self.outcomes.append(Outcome(surface, client, sent, time.monotonic() - sent, result, close))
