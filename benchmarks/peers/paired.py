"""The ceiling measured beside each sample: server and in-process runs alternate.

The table's ceiling is measured twice, at the start and at the end of a run that takes many
minutes, and the better of the two is kept. On a shared 2-core VM the in-process rate moves by
10–20% from one few-second window to the next, so one server sample against that best-of-two
is a noisy and downward-biased ratio. Here the ceiling (onnxruntime alone in this process, at
the batch size the first ceiling found best, while the server sits idle) and the server (wrk
at the cell's concurrency) alternate: C S C S C ... S C. Each server sample is divided by the
mean of the two ceiling windows around it, and the median of those ratios is reported.

``answer``: ``json`` posts the cell's body; ``binary`` the same body asking for binary outputs
(``"parameters": {"binary_data_output": true}``, Triton's binary tensor extension, what
tritonclient asks for by default), so the answer is 24 KiB of raw FP32 instead of 67 KiB of JSON
text. Only peers that implement the extension get the binary rows (``BINARY``).
"""

from __future__ import annotations

import json
import statistics
import time
import urllib.request
from pathlib import Path
from typing import Any

import load
import numpy as np
from procs import Server

BINARY = ("podserve", "triton")  # servers with Triton's binary tensor data extension


def session(minilm: Path, threads: int) -> Any:
    """onnxruntime on the CPU with the servers' settings: ``threads`` intra-op, 1 inter-op."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(minilm), so, providers=["CPUExecutionProvider"])


def one_row(body: Path) -> dict[str, np.ndarray]:
    """The inputs of a v2 JSON body as arrays (INT64, MiniLM's)."""
    doc = json.loads(body.read_text())
    return {t["name"]: np.asarray(t["data"], np.int64).reshape(t["shape"]) for t in doc["inputs"]}


class Ceiling:
    """One onnxruntime session per thread count, kept for the whole run."""

    def __init__(self, minilm: Path, body: Path, batches: dict[int, int]) -> None:
        one = one_row(body)
        self.sessions: dict[int, Any] = {}
        self.feeds: dict[int, dict[str, np.ndarray]] = {}
        for n, batch in batches.items():
            sess = session(minilm, n)
            self.feeds[n] = {k: np.repeat(v, batch, axis=0) for k, v in one.items()}
            sess.run(None, self.feeds[n])
            self.sessions[n] = sess

    def rate(self, threads: int, seconds: float) -> float:
        sess, feed = self.sessions[threads], self.feeds[threads]
        batch = len(next(iter(feed.values())))
        rows, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            sess.run(None, feed)
            rows += batch
        return rows / (time.perf_counter() - t0)


def binary_body(body: Path) -> Path:
    """The same request asking for every output as binary data."""
    doc = json.loads(body.read_text())
    doc["parameters"] = {"binary_data_output": True}
    out = body.with_name(body.stem + "-binary.json")
    out.write_text(json.dumps(doc))
    return out


def read_binary(url: str, body: bytes) -> np.ndarray:
    """POST and decode a binary-output answer: JSON header, then the raw FP32 bytes."""
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        size = r.headers.get("Inference-Header-Content-Length")
        raw = r.read()
    if size is None:
        raise RuntimeError("no Inference-Header-Content-Length: the answer is not binary")
    head = json.loads(raw[: int(size)])
    out = head["outputs"][0]
    n = out["parameters"]["binary_data_size"]
    data = np.frombuffer(raw[int(size) : int(size) + n], dtype=np.float32)
    return data.reshape(out["shape"])


def measure(
    ceiling: Ceiling,
    threads: int,
    server: Server,
    url: str,
    body: Path,
    conns: int,
    pairs: int,
    seconds: float,
) -> dict:
    """``pairs`` server samples, each between two ceiling windows of the same length."""
    load.measure(server, url, body, conns, 0, min(seconds, 2.0))  # warm this body's path
    ceilings = [ceiling.rate(threads, seconds)]
    runs = []
    for _ in range(pairs):
        runs.append(load.measure(server, url, body, conns, 0, seconds))
        ceilings.append(ceiling.rate(threads, seconds))
    ratios = [
        r["rps"] / ((a + b) / 2) for r, a, b in zip(runs, ceilings[:-1], ceilings[1:], strict=True)
    ]
    return {
        "ceilings": [round(c, 1) for c in ceilings],
        "rps": [round(r["rps"], 1) for r in runs],
        "p99_ms": [r["p99_ms"] for r in runs],
        "errors": sum(r["errors"] for r in runs),
        "ratios": [round(x, 3) for x in ratios],
        "median_ratio": statistics.median(ratios),
        "server_cores": statistics.mean(r["server_cores"] for r in runs),
        "client_cores": statistics.mean(r["client_cores"] for r in runs),
        "loadavg_1m": max(r["loadavg_1m"] for r in runs),
    }
