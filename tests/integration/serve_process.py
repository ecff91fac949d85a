"""``podserve serve`` in a subprocess, on its own ports, for tests and benchmarks.

The model is the ``python`` runtime running :data:`ECHO_SOURCE` from its staged version
directory, so the process loads it exactly as a user's model would be loaded::

    root = stage_echo(tmp_path / "models", delay_s=0.01)
    server = ServeProcess(root, tmp_path / "server.log", PODSERVE_DRAIN_GRACE_SECONDS="2")
    server.wait_ready()
    ...
    server.terminate()                  # SIGTERM, as the kubelet sends it
    assert server.wait(30) == 0
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from podserve.storage.staging import stage_model

MODEL = "echo"
WIDTH = 4

# OUTPUT0 = INPUT0, after delay_s per batch (a model with some compute time).
ECHO_SOURCE = """
import time


class Echo:
    def __init__(self, delay_s=0.0):
        self.delay_s = delay_s

    def infer(self, inputs):
        if self.delay_s:
            time.sleep(self.delay_s)
        return {"OUTPUT0": inputs["INPUT0"]}
"""


def stage_echo(
    root: Path, *, name: str = MODEL, delay_s: float = 0.0, max_batch_size: int = 8
) -> Path:
    """Stage the echo model as ``root/<name>/1``; returns ``root``."""
    src = root.parent / f"{root.name}-echo-src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "model.py").write_text(ECHO_SOURCE, encoding="utf-8")
    spec = {"datatype": "FP32", "shape": [WIDTH]}
    stage_model(
        {"model.py": src / "model.py"},
        root / name / "1",
        {
            "runtime": "python",
            "inputs": [{"name": "INPUT0", **spec}],
            "outputs": [{"name": "OUTPUT0", **spec}],
            "max_batch_size": max_batch_size,
            "batching": {"max_queue_delay_ms": 1.0},
            "options": {"module": "model.py:Echo", "kwargs": {"delay_s": delay_s}},
        },
        overwrite=True,
    )
    return root


def infer_body(value: float) -> bytes:
    """A v2 JSON request for one row whose every element is ``value``."""
    tensor = {"name": "INPUT0", "shape": [1, WIDTH], "datatype": "FP32", "data": [value] * WIDTH}
    return json.dumps({"inputs": [tensor]}).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """One ``python -m podserve serve ROOT`` process on 127.0.0.1; ports fixed at creation
    so that :meth:`restart` comes back on the same address (a replaced pod's endpoint)."""

    def __init__(
        self,
        root: Path,
        log: Path,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        **env: str,
    ) -> None:
        self.root = root
        self.log = log
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port if grpc_port is not None else free_port()
        self.env = {**os.environ, "PODSERVE_LOG_LEVEL": "INFO", **env}
        self.proc: subprocess.Popen[bytes] = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [
            sys.executable,
            "-m",
            "podserve",
            "serve",
            str(self.root),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
        ]
        with open(self.log, "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def ready(self) -> bool:
        try:
            return self.get("/v2/health/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready after {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def restart(self) -> None:
        """A fresh process on the same ports (the previous one must have exited)."""
        assert self.proc.poll() is not None, "restart() of a running server"
        self.proc = self._spawn()

    def rss_kib(self) -> int:
        """Resident set size of the server process (``VmRSS`` in /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")  # pragma: no cover - Linux always has it

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-6000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
