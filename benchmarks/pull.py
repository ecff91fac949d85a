"""How fast does `podserve pull` fill a volume from S3, against the usual init-container script?

Serves a ~2 GB model (random bytes, generated once under a scratch directory) from a moto S3
server on loopback (its own process), then times:

* sequential: the usual script, `aws s3 cp --recursive` done with boto3: list the prefix and
  `download_file` one object after the other (boto3's default TransferConfig), no checks;
* podserve pull: `python -m podserve pull s3://… ROOT/NAME/VERSION` (parallel ranged parts,
  verified with BLAKE3 while streaming, atomic rename), and the same with `--sha256`;
* ceiling: parallel ranged GETs of the same objects, bodies read and discarded: what this
  endpoint can serve at all on this machine.

Prints a markdown table and writes benchmarks/results/pull.json. Scratch data is removed.

    python benchmarks/pull.py [--size-gb 2] [--shards 4] [--scratch /tmp/podserve-bench]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig

from podserve.storage.staging import stage_model

BUCKET = "bench-models"
PREFIX = "models/bench/1"
MANIFEST = {
    "runtime": "python",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [4]}],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generate(src: Path, total: int, shards: int) -> dict[str, Path]:
    src.mkdir(parents=True, exist_ok=True)
    files = {}
    per = total // shards
    for i in range(shards):
        path = src / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as fh:
            left = per
            while left:
                n = min(left, 64 * 1024 * 1024)
                fh.write(os.urandom(n))
                left -= n
        files[path.name] = path
    for name, body in (("config.json", b'{"hidden": 4096}'), ("tokenizer.json", b"{}" * 1000)):
        (src / name).write_bytes(body)
        files[name] = src / name
    return files


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/podserve-bench"))
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    scratch: Path = args.scratch
    shutil.rmtree(scratch, ignore_errors=True)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - moto
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results: dict[str, object] = {}
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        total = int(args.size_gb * 1e9)
        files = generate(scratch / "src", total, args.shards)
        staged = scratch / "staged" / "bench" / "1"
        stage_model(files, staged, MANIFEST)
        shutil.rmtree(scratch / "src")
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        push_s = timed(
            lambda: subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "podserve",
                    "push",
                    str(staged),
                    f"s3://{BUCKET}/{PREFIX}",
                    "--progress",
                    "none",
                ],
                env=env,
                check=True,
            )
        )
        size = sum(p.stat().st_size for p in staged.iterdir())
        shutil.rmtree(scratch / "staged")
        mb = size / 1e6

        def sequential() -> None:
            out = scratch / "seq"
            out.mkdir()
            for obj in s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]:
                target = out / obj["Key"][len(PREFIX) + 1 :]
                s3.download_file(BUCKET, obj["Key"], str(target), Config=TransferConfig())

        def podserve(*extra: str) -> None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "podserve",
                    "pull",
                    f"s3://{BUCKET}/{PREFIX}",
                    str(scratch / "vol" / "bench" / "1"),
                    "--progress",
                    "none",
                    "--concurrency",
                    str(args.concurrency),
                    *extra,
                ],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )

        def ceiling(part: int) -> None:
            objs = s3.list_objects_v2(Bucket=BUCKET, Prefix=PREFIX)["Contents"]
            ranges = [
                (o["Key"], s, min(s + part, o["Size"]))
                for o in objs
                for s in range(0, o["Size"], part)
            ]

            def get(r: tuple[str, int, int]) -> None:
                body = s3.get_object(Bucket=BUCKET, Key=r[0], Range=f"bytes={r[1]}-{r[2] - 1}")
                stream = body["Body"]
                while stream.read(4 * 1024 * 1024):
                    pass

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(get, ranges))

        runs: list[tuple[str, str, float]] = []
        runs.append(
            (
                "sequential boto3 (list + download_file, no checks)",
                "s3.download_file per object",
                timed(sequential),
            )
        )
        shutil.rmtree(scratch / "seq")
        for label, extra in (
            ("podserve pull (BLAKE3 while streaming)", ()),
            ("podserve pull --sha256 (SHA-256 while streaming)", ("--sha256",)),
            ("podserve pull --part-size-mb 128", ("--part-size-mb", "128")),
        ):
            runs.append(
                (
                    label,
                    "python -m podserve pull " + " ".join(extra),
                    timed(lambda e=extra: podserve(*e)),
                )
            )
            shutil.rmtree(scratch / "vol")
        for part_mb in (32, 128):
            label = f"ceiling: {args.concurrency} parallel ranged GETs of {part_mb} MiB, discarded"
            secs = timed(lambda p=part_mb: ceiling(p << 20))
            runs.append((label, "boto3 get_object Range", secs))
        seq_s = runs[0][2]
        print(
            f"\nPull of a {mb / 1e3:.2f} GB model ({args.shards} shards + 2 small files) "
            f"from moto S3 on loopback; push took {push_s:.1f} s\n"
        )
        print("| method | seconds | MB/s | vs sequential |")
        print("|---|---:|---:|---:|")
        for label, _, secs in runs:
            print(f"| {label} | {secs:.1f} | {mb / secs:.0f} | {seq_s / secs:.2f}x |")
        results = {
            "bytes": size,
            "shards": args.shards,
            "concurrency": args.concurrency,
            "push_seconds": push_s,
            "runs": [
                {"method": label, "how": how, "seconds": secs, "mb_per_s": mb / secs}
                for label, how, secs in runs
            ],
        }
        out = Path(__file__).parent / "results" / "pull.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
