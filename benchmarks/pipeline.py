"""Pipeline-parallel serving: latency, throughput and peak RSS for 1, 2 and 3 stages.

For MiniLM (the demo) and a synthetic 24-layer decoder (~1.5 GB FP32, generated into a temp
directory and deleted afterwards), each K in 1..3 runs K real stage processes and an entry on
loopback (``podserve serve --stage``), and the entry in three modes:

* ``whole``: micro-batching off, each batch goes through the stages in one piece;
* ``sequential``: micro-batches, one in flight (the un-pipelined pass through the stages);
* ``pipelined``: micro-batches, K + 1 in flight (stage i works on n+1 while i+1 works on n).

It also serves the unsplit model in one process (``podserve serve``, transformers runtime)
for the reference latency, throughput and peak RSS (VmHWM). Every stage runs torch on one
thread (as a pod with its own core would); by default all processes share the machine's
cores. With ``--pin`` stage i runs on core i-1 and the single process on core 0 (every thread,
``os.sched_setaffinity``), as separate pods would each have their own CPUs; the entry (which
only tokenises and pools) is left unpinned. Results then go to ``pipeline_pinned.json``, with
``/proc/loadavg`` before and after each measurement.

    python benchmarks/pipeline.py [--decoder-hidden 1152] [--repeats 3]
    python benchmarks/pipeline.py --pin --stages 2 --skip-minilm
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' helpers

from podserve.demo import stage_demo
from podserve.pipeline.synthetic import stage_synthetic_decoder
from tests.pipeline.conftest import (
    Node,
    embed_request,
    free_port,
    http,
    start_cluster,
)

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline.json"
PINNED_RESULTS = RESULTS.with_name("pipeline_pinned.json")
PIN = False  # --pin


def pin(pid: int, cpu: int) -> None:
    """Every thread of ``pid`` onto core ``cpu`` (threads started later inherit it)."""
    if PIN:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), {cpu % (os.cpu_count() or 1)})


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def texts(n: int, words: int, offset: int = 0) -> list[str]:
    return [
        " ".join(f"w{2 + (i * 7 + j * 13 + offset) % 1000}" for j in range(words)) for i in range(n)
    ]


def measure(port: int, model: str, batch: list[str], repeats: int) -> dict[str, float]:
    """p50 latency of one short text; rows/s of ``repeats`` batches sent one after another."""
    lat = []
    for _ in range(5):
        start = time.perf_counter()
        status, body = http(port, f"/v2/models/{model}/infer", embed_request(batch[:1]), 300)
        assert status == 200, body
        lat.append(time.perf_counter() - start)
    http(port, f"/v2/models/{model}/infer", embed_request(batch), 600)  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        status, body = http(port, f"/v2/models/{model}/infer", embed_request(batch), 600)
        assert status == 200, body
    seconds = time.perf_counter() - start
    return {
        "latency_ms_p50": statistics.median(lat) * 1000,
        "rows_per_s": repeats * len(batch) / seconds,
    }


def single_process(
    root: Path, model: str, work: Path, batch: list[str], repeats: int
) -> dict[str, Any]:
    """The unsplit model served by one ordinary `podserve serve` process."""
    import subprocess

    node = Node(0, free_port(), free_port(), work / "single.log")
    env = {**os.environ, "PODSERVE_INTRA_OP_THREADS": "1", "PODSERVE_DRAIN_GRACE_SECONDS": "0"}
    cmd = [
        sys.executable,
        "-m",
        "podserve",
        "serve",
        str(root),
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--http-port",
        str(node.http_port),
        "--grpc-port",
        "0",
    ]
    with open(node.log, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if http(node.http_port, "/v2/health/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        pin(proc.pid, 0)
        before = loadavg()
        result: dict[str, Any] = measure(node.http_port, model, batch, repeats)
        result["peak_rss_mb"] = peak_rss_mb(proc.pid)
        if PIN:
            result |= {"pinned": "core 0", "loadavg_before": before, "loadavg_after": loadavg()}
        return result
    finally:
        proc.kill()
        proc.wait()


def run_model(
    root: Path,
    model: str,
    work: Path,
    batch: list[str],
    micro: int,
    repeats: int,
    stages: tuple[int, ...] = (1, 2, 3),
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    single = single_process(root, model, work, batch, repeats)
    rows.append({"model": model, "stages": 1, "mode": "single process", **single})
    print(rows[-1], flush=True)
    for k in stages:
        kdir = work / f"{model}-k{k}"
        kdir.mkdir()
        cluster = start_cluster(
            root, model, k, kdir, ready_timeout=900, PODSERVE_PIPELINE_MICRO_BATCH="0"
        )
        try:
            stage_rss: list[float] = []
            for mode, size, inflight in (
                ("whole", 0, 1),
                ("sequential", micro, 1),
                ("pipelined", micro, k + 1),
            ):
                cluster.kill(0)
                cluster.env["PODSERVE_PIPELINE_MICRO_BATCH"] = str(size)
                cluster.env["PODSERVE_PIPELINE_INFLIGHT"] = str(inflight)
                cluster.start(0)
                cluster.wait_ready(0, timeout=900)
                for node in cluster.nodes[1:]:
                    assert node.proc is not None
                    pin(node.proc.pid, node.index - 1)
                before = loadavg()
                result: dict[str, Any] = measure(cluster.entry.http_port, model, batch, repeats)
                if PIN:
                    result |= {
                        "pinned": "stage i on core i-1",
                        "loadavg_before": before,
                        "loadavg_after": loadavg(),
                    }
                stage_rss = [peak_rss_mb(n.proc.pid) for n in cluster.nodes[1:] if n.proc]
                rows.append(
                    {
                        "model": model,
                        "stages": k,
                        "mode": mode,
                        **result,
                        "micro_batch": size,
                        "inflight": inflight,
                        "peak_rss_mb": max(stage_rss),
                        "stage_rss_mb": [round(r) for r in stage_rss],
                        "entry_rss_mb": peak_rss_mb(cluster.entry.proc.pid),  # type: ignore[union-attr]
                    }
                )
                print(rows[-1], flush=True)
        finally:
            cluster.stop()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = [
        "| model | stages | mode | latency p50 (ms, 1 text) | throughput (rows/s) "
        "| peak RSS per stage (MB) | max stage RSS / single process |",
        "|---|---|---|---|---|---|---|",
    ]
    single = {r["model"]: r for r in rows if r["mode"] == "single process"}
    for r in rows:
        ratio = r["peak_rss_mb"] / single[r["model"]]["peak_rss_mb"]
        per_stage = ", ".join(str(x) for x in r.get("stage_rss_mb", [round(r["peak_rss_mb"])]))
        out.append(
            f"| {r['model']} | {r['stages']} | {r['mode']} | {r['latency_ms_p50']:.0f} "
            f"| {r['rows_per_s']:.1f} | {per_stage} | {ratio:.2f} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--decoder-layers", type=int, default=24)
    parser.add_argument("--decoder-hidden", type=int, default=1152)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-decoder", action="store_true")
    parser.add_argument("--skip-minilm", action="store_true")
    parser.add_argument("--stages", type=int, action="append", help="K to run (default 1 2 3)")
    parser.add_argument("--pin", action="store_true", help="each stage on its own core")
    args = parser.parse_args()
    global PIN
    PIN = args.pin
    stages = tuple(args.stages or (1, 2, 3))
    rows: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="podserve-pipeline-bench-"))
    try:
        root = work / "models"
        stage_demo(root)
        if not args.skip_minilm:
            rows += run_model(
                root, "minilm", work, texts(32, 12), micro=8, repeats=args.repeats, stages=stages
            )
        if not args.skip_decoder:
            dest = stage_synthetic_decoder(
                root, "decoder24", layers=args.decoder_layers, hidden=args.decoder_hidden
            )
            size = (dest / "model.safetensors").stat().st_size
            print(f"decoder24: {size / 1e9:.2f} GB", flush=True)
            rows += run_model(
                root,
                "decoder24",
                work,
                texts(8, 16),
                micro=2,
                repeats=max(1, args.repeats - 1),
                stages=stages,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the 1.5 GB decoder goes with it
    print(table(rows))
    out = PINNED_RESULTS if PIN else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "date": time.strftime("%Y-%m-%d"),
                "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
