"""The load: ``wrk`` (the C client from Debian) posting one v2 JSON body, plus its CPU share.

``wrk`` runs one thread with C connections, a warm-up run whose numbers are dropped, then the
measured run. The client's CPU comes from the kernel's accounting of the finished child
(``wait4``: the same utime+stime as ``/proc/PID/stat``, but complete up to its exit); the
server's is summed over its process tree from ``/proc`` before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from procs import Server, cpu_seconds

LUA = Path(__file__).resolve().parent / "post.lua"


def wrk_path() -> str:
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk not found: apt-get install -y wrk")
    return path


def wrk_version() -> str:
    done = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True)
    words = (done.stdout + done.stderr).split()
    return words[1] if len(words) > 1 else "?"


def _wrk(url: str, body: Path, conns: int, seconds: float) -> tuple[dict, float]:
    argv = [wrk_path(), "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    argv += ["-s", str(LUA), url]
    env = dict(os.environ, PEERS_BODY=str(body))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((ln for ln in out.splitlines() if ln.startswith("PEERS ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-400:]}")
    return json.loads(line[6:]), usage.ru_utime + usage.ru_stime


def measure(
    server: Server, url: str, body: Path, conns: int, warmup: float, duration: float
) -> dict:
    """One warm-up then one measured run; numbers of the measured run."""
    if warmup > 0:
        _wrk(url, body, conns, warmup)
    pids = server.tree()
    before = cpu_seconds(pids)
    stats, client_cpu = _wrk(url, body, conns, duration)
    server_cpu = cpu_seconds(pids) - before
    secs = stats["duration_us"] / 1e6
    errors = sum(v for k, v in stats.items() if k.startswith("errors_"))
    return {
        "rps": stats["requests"] / secs,
        "p50_ms": stats["p50_us"] / 1000,
        "p90_ms": stats["p90_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "requests": stats["requests"],
        "errors": errors,
        "seconds": secs,
        "client_cores": client_cpu / secs,
        "server_cores": server_cpu / secs,
        # other work on the machine shows here: the two cores are shared
        "loadavg_1m": os.getloadavg()[0],
    }
