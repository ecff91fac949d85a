"""Starting servers in their own process group, and stopping all of it, leaving nothing.

CPU time of a server is summed over its whole process tree from ``/proc`` (Triton and
MLServer do their work in child processes).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def free_port_block(count: int) -> int:
    """A port P such that P..P+count-1 are free on loopback now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count >= 65535:
            continue
        ok = True
        for p in range(base + 1, base + count):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(int(st[1]), []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (fields 14 and 15 of /proc/PID/stat) summed over pids, in seconds."""
    total = 0
    for pid in pids:
        st = _stat(pid)
        if st:
            total += int(st[11]) + int(st[12])
    return total / TICKS


class Server:
    """One server process (and its group), with its log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._known: set[int] = {self.proc.pid}

    def tree(self) -> list[int]:
        pids = descendants(self.proc.pid)
        self._known.update(pids)
        return pids

    def wait_ready(self, url: str, models: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        paths = ["/v2/health/ready"] + [f"/v2/models/{m}/ready" for m in models]
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode}: {self.tail()}")
            if all(_get_ok(url + p) for p in paths):
                self.tree()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout:.0f}s: {self.tail()}")
            time.sleep(0.25)

    def tail(self, n: int = 600) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-n:].replace("\n", " | ")
        return ""

    def stop(self, grace: float = 15.0) -> list[int]:
        """SIGTERM the group, then SIGKILL what is left; returns pids that survived (none)."""
        self.tree()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        for pid in self._known - {self.proc.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(grace)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in self._known):
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in self._known:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        time.sleep(0.2)
        self._log.close()
        return [p for p in self._known if _alive(p)]


def _alive(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _get_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def post_json(url: str, body: bytes, timeout: float = 30) -> dict:
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def batch_counts(url: str, model: str) -> dict[str, float]:
    """podserve's ``podserve_batch_size`` histogram buckets for ``model`` (cumulative counts)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("podserve_batch_size_bucket{") and f'model="{model}"' in line:
            out[line.split('le="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    return out


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())
