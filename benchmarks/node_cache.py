"""Pod start → ready on a cold node, a warm node and a local volume; bytes of a version bump.

A ~2 GB synthetic decoder (lean GPT-2 architecture, fp32) in 4 safetensors shards is pushed
to a moto S3 server on loopback as version 1, and again as version 2 with one shard changed.
What a pod does is timed as two processes, as the init container and the server run them:
``podserve pull --cache`` then ``podserve serve`` until ``/v2/health/ready``.

* local volume: ``podserve serve`` on the staged directory (no pull): the goal's baseline;
* cold node: empty cache (download + verify + link, then load);
* warm node, version present (pre-pulled by the DaemonSet, or an earlier pod): pull finds it
  and verifies it, then load;
* warm node, blobs present (another destination): pull re-hashes the blobs and links them;
* version bump: pull version 2 into the warm cache; bytes counted at a TCP proxy in front of
  moto (what crossed the wire).

The page cache is warm for all of them (the files were just written or downloaded; dropping
it would disturb everyone on a shared machine), so these are the node's disk-cache effects,
not cold-disk reads. ``python benchmarks/node_cache.py`` (~5 min); ``--layers 4`` for a quick
look. Writes benchmarks/results/node_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests.storage.transfer_servers: the counting proxy
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results" / "node_cache.json"
SHARDS = 4
PULL = [sys.executable, "-m", "podserve", "pull", "--progress", "none"]


def write_sharded(src: Path, dest: Path, shards: int, bump: int | None) -> None:
    """Split ``src/model.safetensors`` into shards + index; shard ``bump`` gets other values."""
    import numpy as np
    import torch

    from podserve.runtime.safetensors_view import DTYPES, read_header, write_safetensors

    header = read_header(src / "model.safetensors")
    infos = sorted(header.tensors.values(), key=lambda i: i.start)
    total = sum(i.length for i in infos)
    groups: list[list[Any]] = [[] for _ in range(shards)]
    acc = 0
    for info in infos:
        groups[min(shards - 1, acc * shards // total)].append(info)
        acc += info.length
    data = np.memmap(src / "model.safetensors", dtype=np.uint8, mode="r")
    dest.mkdir(parents=True, exist_ok=True)
    weight_map = {}
    for index, group in enumerate(groups):
        name = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        specs = {i.name: (DTYPES[i.dtype], i.shape) for i in group}
        by_name = {i.name: i for i in group}

        def fill(
            tensor: str, index: int = index, by_name: dict[str, Any] = by_name
        ) -> torch.Tensor:
            info = by_name[tensor]
            raw = np.array(data[info.start : info.end])
            values = torch.frombuffer(raw, dtype=DTYPES[info.dtype]).reshape(info.shape)
            return values * 1.01 if index == bump and values.is_floating_point() else values

        write_safetensors(dest / name, specs, fill, {"format": "pt"})
        weight_map |= dict.fromkeys(specs, name)
    (dest / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for extra in ("config.json", "tokenizer.json"):
        shutil.copyfile(src / extra, dest / extra)


def stage_versions(scratch: Path, layers: int, hidden: int) -> Path:
    from podserve.demo import demo_source
    from podserve.runtime.architectures.decoder import write_random_decoder
    from podserve.storage.staging import collect_files, stage_model

    root = scratch / "local"
    if (root / "decoder" / "2").exists():
        return root
    single = scratch / "single"
    write_random_decoder(single, layers=layers, hidden=hidden, vocab=30522)
    shutil.copyfile(demo_source() / "tokenizer.json", single / "tokenizer.json")
    manifest = {
        "runtime": "transformers",
        "description": f"synthetic decoder {layers} x {hidden}, {SHARDS} shards",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": []}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [hidden]}],
        "max_batch_size": 8,
        "options": {"task": "embedding", "max_length": 128},
    }
    for version, bump in (("1", None), ("2", SHARDS - 1)):
        src = scratch / f"src-{version}"
        write_sharded(single, src, SHARDS, bump)
        stage_model(collect_files(src), root / "decoder" / version, manifest)
        shutil.rmtree(src)
    shutil.rmtree(single)
    return root


def serve_ready(root: Path, env: dict[str, str]) -> float:
    from shared_memory import free_port, wait_ready

    port = free_port()
    cmd = [sys.executable, "-m", "podserve", "serve", str(root), "--model", "decoder",
           "--host", "127.0.0.1", "--http-port", str(port), "--grpc-port", "0"]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_ready(proc, port)
        return time.perf_counter() - start
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pull(uri: str, dest: Path, cache: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [*PULL, uri, str(dest), "--cache", str(cache)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"pull failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/podserve-bench/node-cache"))
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=1152)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    from podserve.storage.push import push
    from podserve.storage.sources.base import SourceOptions
    from tests.storage.transfer_servers import CountingProxy, free_port, s3_env

    local = stage_versions(args.scratch, args.layers, args.hidden)
    size = {v: sum(p.stat().st_size for p in (local / "decoder" / v).iterdir()) for v in "12"}
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    rows: dict[str, Any] = {}
    try:
        with CountingProxy(f"http://127.0.0.1:{port}") as proxy:
            env = {**s3_env(proxy.url), "PODSERVE_LOG_LEVEL": "WARNING",
                   "PODSERVE_DRAIN_GRACE_SECONDS": "0"}  # fmt: skip
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            boto3.client("s3").create_bucket(Bucket="models")
            direct = SourceOptions(endpoint_url=f"http://127.0.0.1:{port}")  # not counted
            for v in "12":
                push(local / "decoder" / v, f"s3://models/decoder/{v}", options=direct,
                     concurrency=1)  # fmt: skip
            node = args.scratch / "node"
            shutil.rmtree(node, ignore_errors=True)
            cache, models = node / "cache", node / "models"

            def step(name: str, uri: str | None, root: Path, dest: Path | None) -> None:
                proxy.reset()
                pulled, out = pull(uri, dest, cache, env) if uri and dest else (0.0, "")
                down = proxy.bytes_down
                ready = serve_ready(root, env)
                rows[name] = {
                    "pull_seconds": round(pulled, 2),
                    "serve_ready_seconds": round(ready, 2),
                    "start_to_ready_seconds": round(pulled + ready, 2),
                    "bytes_downloaded": down,
                    "pull_output": out,
                    "loadavg": Path("/proc/loadavg").read_text().split()[:3],
                }
                print(name, json.dumps(rows[name]), flush=True)

            step("local_volume", None, local, None)
            step("cold_node", "s3://models/decoder/1", models, models / "decoder" / "1")
            step("warm_node_version_present", "s3://models/decoder/1", models,
                 models / "decoder" / "1")  # fmt: skip
            other = node / "other"
            step("warm_node_blobs_present", "s3://models/decoder/1", other,
                 other / "decoder" / "1")  # fmt: skip
            step("version_bump", "s3://models/decoder/2", models, models / "decoder" / "2")
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(args.scratch, ignore_errors=True)
    local_s = rows["local_volume"]["start_to_ready_seconds"]
    result = {
        "benchmark": "node_cache",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": " ".join(["python", "benchmarks/node_cache.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "model": {
            "layers": args.layers,
            "hidden": args.hidden,
            "shards": SHARDS,
            "bytes_v1": size["1"],
            "bytes_v2": size["2"],
        },
        "rows": rows,
        "warm_over_local": {
            k: round(rows[k]["start_to_ready_seconds"] / local_s, 2)
            for k in ("cold_node", "warm_node_version_present", "warm_node_blobs_present")
        },
        "version_bump_bytes_over_version_bytes": round(
            rows["version_bump"]["bytes_downloaded"] / size["2"], 3
        ),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("warm_over_local", "model")}, indent=2))
    print("version bump bytes / version bytes:", result["version_bump_bytes_over_version_bytes"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
