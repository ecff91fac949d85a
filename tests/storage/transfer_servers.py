"""Real servers for the pull/push tests: moto's S3 over HTTP and a small static HTTP server.

``RangeServer`` serves a directory with ``Range`` support (unlike ``http.server``), and can be
slowed down (to kill a pull mid-way) or told to fail requests (403, 503) to exercise errors.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from podserve.storage.staging import stage_model

MANIFEST = {
    "runtime": "python",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model(dest: Path, files: dict[str, bytes]) -> Path:
    """Stage ``files`` as the model version ``dest`` (``ROOT/NAME/VERSION``)."""
    src = dest.parent.parent / f".src-{dest.parent.name}-{dest.name}"
    paths = {}
    for rel, content in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(content)
        paths[rel] = src / rel
    stage_model(paths, dest, MANIFEST)
    return dest


class RangeServer:
    """A threaded static server for ``directory`` with byte ranges, delays and failures."""

    def __init__(self, directory: Path, *, ranges: bool = True) -> None:
        self.directory = directory
        self.ranges = ranges
        self.delay_per_mb = 0.0
        self.fail: dict[str, list[int]] = {}  # path suffix -> statuses to answer, in turn
        self.bytes_sent = 0
        self.lock = threading.Lock()
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, directory=str(directory), **kwargs)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _failure(self) -> bool:
                for suffix, statuses in server.fail.items():
                    if self.path.endswith(suffix) and statuses:
                        self.send_error(statuses.pop(0))
                        return True
                return False

            def do_HEAD(self) -> None:
                if self._failure():
                    return
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(path.stat().st_size))
                if server.ranges:
                    self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def do_GET(self) -> None:
                if self._failure():
                    return
                path = Path(self.translate_path(self.path))
                if not path.is_file():
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start, end = 0, size
                header = self.headers.get("Range")
                if server.ranges and header and header.startswith("bytes="):
                    a, _, b = header[6:].partition("-")
                    start, end = int(a), min(size, int(b) + 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start))
                self.end_headers()
                with open(path, "rb") as fh:
                    fh.seek(start)
                    left = end - start
                    while left:
                        chunk = fh.read(min(256 * 1024, left))
                        if server.delay_per_mb:
                            threading.Event().wait(server.delay_per_mb * len(chunk) / 1e6)
                        try:
                            self.wfile.write(chunk)
                        except (BrokenPipeError, ConnectionResetError):
                            return
                        with server.lock:
                            server.bytes_sent += len(chunk)
                        left -= len(chunk)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RangeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def s3_env(endpoint: str) -> dict[str, str]:
    """Environment for a subprocess talking to the moto endpoint (no real AWS anywhere)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    return env


class CountingProxy:
    """A TCP forwarder in front of a server that counts the bytes the server sends back.

    Point a client at ``url`` instead of the server: what it downloads is counted on the
    wire (``bytes_down``), not by the code under test.
    """

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.bytes_down = 0
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def reset(self) -> None:
        with self.lock:
            self.bytes_down = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        try:
            while chunk := src.recv(256 * 1024):
                if count:
                    with self.lock:
                        self.bytes_down += len(chunk)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def __enter__(self) -> CountingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.close()
