"""Tensor-parallel serving: K = 2 ranks, each on its own core, against one process on one core.

On a synthetic 24-layer decoder (~1.5 GB FP32, generated into a temp directory and deleted
afterwards) it serves the unsplit model with one ordinary ``podserve serve`` process pinned to
core 0, then K ranks (``podserve serve --tp-rank R/K``) with rank r pinned to core r — as
separate pods would each have their own CPUs — and measures, through rank 0's HTTP surface:

* p50 latency of one text (batch 1);
* throughput at batch 8 (rows/s over ``--repeats`` batches sent one after another);
* peak RSS (VmHWM) of every process;
* CPU seconds (user + system, from ``/proc/PID/stat``) each process spent per batch of 8
  (and this client's own, which shares the two cores with the ranks):
  unlike wall time this hardly depends on what else runs on the machine, so the largest
  rank's CPU time per batch against the single process's says what K cores would give on a
  quiet node (communication waits excluded).

Every process runs torch on one thread. Pinning is applied to every thread of a process once
it is ready (``os.sched_setaffinity`` on each ``/proc/PID/task``); threads started later
inherit it. ``/proc/loadavg`` is recorded before and after each run: on a shared machine the
numbers only mean something when the load is low.

    python benchmarks/tensor_parallel.py [--decoder-hidden 1152] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers

from podserve.pipeline.synthetic import stage_synthetic_decoder
from tests.pipeline.conftest import embed_request, free_port, http
from tests.tensor_parallel.test_ranks import make_group

RESULTS = Path(__file__).resolve().parent / "results" / "tensor_parallel.json"
MODEL = "decoder24"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` onto core ``cpu``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), {cpu})


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def texts(n: int, words: int) -> list[str]:
    return [" ".join(f"w{2 + (i * 7 + j * 13) % 1000}" for j in range(words)) for i in range(n)]


def measure(port: int, repeats: int, pids: list[int]) -> dict[str, Any]:
    one, batch = texts(1, 16), texts(8, 16)
    path = f"/v2/models/{MODEL}/infer"
    http(port, path, embed_request(batch), 600)  # warm
    lat = []
    for _ in range(5):
        start = time.perf_counter()
        status, body = http(port, path, embed_request(one), 600)
        assert status == 200, body
        lat.append(time.perf_counter() - start)
    cpu = [cpu_seconds(p) for p in pids]
    client = time.process_time()
    start = time.perf_counter()
    for _ in range(repeats):
        status, body = http(port, path, embed_request(batch), 600)
        assert status == 200, body
    seconds = time.perf_counter() - start
    client = time.process_time() - client
    return {
        "latency_ms_p50_batch1": statistics.median(lat) * 1000,
        "rows_per_s_batch8": repeats * len(batch) / seconds,
        "cpu_s_per_batch8": [
            round((cpu_seconds(p) - c) / repeats, 3) for p, c in zip(pids, cpu, strict=True)
        ],
        # This script (the HTTP client) runs on the same two cores, unpinned.
        "client_cpu_s_per_batch8": round(client / repeats, 3),
    }


def wait_ready(port: int, procs: list[subprocess.Popen[bytes]], log: Path) -> None:
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"a process exited:\n{log.read_text()[-3000:]}")
        try:
            if http(port, "/v2/health/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"not ready:\n{log.read_text()[-3000:]}")


def single_process(root: Path, work: Path, repeats: int) -> dict[str, Any]:
    port = free_port()
    env = {**os.environ, "PODSERVE_INTRA_OP_THREADS": "1", "PODSERVE_DRAIN_GRACE_SECONDS": "0"}
    cmd = [sys.executable, "-m", "podserve", "serve", str(root), "--model", MODEL]
    cmd += ["--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0"]
    log = work / "single.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(port, [proc], log)
        pin(proc.pid, 0)
        before = loadavg()
        result = measure(port, repeats, [proc.pid])
        return {
            "setup": "single process, core 0",
            **result,
            "peak_rss_mb": [round(peak_rss_mb(proc.pid))],
            "loadavg_before": before,
            "loadavg_after": loadavg(),
        }
    finally:
        proc.kill()
        proc.wait()


def ranks(root: Path, work: Path, k: int, repeats: int) -> dict[str, Any]:
    group = make_group(root, MODEL, work, PODSERVE_TP_WAIT_SECONDS="900")
    for r in range(k):
        group.start(r)
    try:
        wait_ready(group.http_port, list(group.procs.values()), group.log(0))
        cpus = os.cpu_count() or 1
        for r, proc in group.procs.items():
            pin(proc.pid, r % cpus)
        before = loadavg()
        pids = [p.pid for _, p in sorted(group.procs.items())]
        result = measure(group.http_port, repeats, pids)
        status, meta = http(group.http_port, f"/v2/models/{MODEL}")
        params = meta["parameters"] if status == 200 else {}
        return {
            "setup": f"K={k} ranks, rank r on core r",
            **result,
            "peak_rss_mb": [round(peak_rss_mb(p.pid)) for _, p in sorted(group.procs.items())],
            "bytes_read": [params.get("bytes_read")]
            + [params.get(f"rank{r}_bytes_read") for r in range(1, k)],
            "loadavg_before": before,
            "loadavg_after": loadavg(),
        }
    finally:
        group.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder-layers", type=int, default=24)
    parser.add_argument("--decoder-hidden", type=int, default=1152)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--k", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="podserve-tp-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        root = work / "models"
        dest = stage_synthetic_decoder(
            root, MODEL, layers=args.decoder_layers, hidden=args.decoder_hidden
        )
        size = (dest / "model.safetensors").stat().st_size
        print(f"{MODEL}: {size / 1e9:.2f} GB", flush=True)
        rows.append(single_process(root, work, args.repeats))
        print(rows[-1], flush=True)
        rows.append(ranks(root, work, args.k, args.repeats))
        print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the 1.5 GB decoder goes with it
    single, split = rows
    summary = {
        "throughput_x_batch8": split["rows_per_s_batch8"] / single["rows_per_s_batch8"],
        "latency_x_batch1": split["latency_ms_p50_batch1"] / single["latency_ms_p50_batch1"],
        "max_rank_rss_over_single": max(split["peak_rss_mb"]) / single["peak_rss_mb"][0],
        # What dedicated cores would give: the slowest rank's CPU time bounds the group.
        "cpu_time_speedup_batch8": single["cpu_s_per_batch8"][0] / max(split["cpu_s_per_batch8"]),
    }
    print(json.dumps(summary, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "command": "python benchmarks/tensor_parallel.py " + " ".join(sys.argv[1:]),
                "model": f"{MODEL}: {args.decoder_layers} layers x {args.decoder_hidden}, "
                f"{size / 1e9:.2f} GB FP32",
                "rows": rows,
                "summary": summary,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
