"""The container image: `make image-test`'s check cold and with cached layers, and its contents.

    python benchmarks/image.py [--image podserve:dev] [--target cpu]
        [--runs cold,warm] [--out benchmarks/results/image.json]

Each run is the whole check that `make image-test` runs (tests/image/image_check.py: build,
static checks, run as deploy/base runs it, kube play with podman), timed from outside. A cold
run first removes the image and the engine's build cache (docker: `builder prune`; podman:
every untagged image, which is where it keeps cached steps), never a tagged image such as the
base: on an engine that other builds share, their cache goes too. Then it records the size of
the base image, of the venv and of the 30 largest entries of the image's site-packages. Pass
the build flags as for `make image-test` (IMAGE_BUILD_FLAGS, CONTAINER_ENGINE, BASE_IMAGE in
the environment). Run it under the machine-wide benchmark lock: a cold build is sensitive to
load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.image.image_check import base_from_dockerfile, engine, image_size_mb  # noqa: E402

SITE = "/opt/podserve/lib/python3*/site-packages"


def forget(eng: str, image: str) -> None:
    """No podserve layer left in the engine's cache; the base image stays."""
    subprocess.run([eng, "rmi", "-f", image], capture_output=True, check=False)
    if eng == "docker":
        subprocess.run([eng, "builder", "prune", "-af"], capture_output=True, check=False)
    else:  # podman keeps each cached step as an untagged (dangling) image
        subprocess.run([eng, "image", "prune", "-f"], capture_output=True, check=False)


def make_image_test(image: str, target: str, cache: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="podserve-image-bench-") as tmp:
        out = Path(tmp) / "image.json"
        check = [sys.executable, str(REPO / "tests/image/image_check.py"), "test"]
        cmd = [*check, "--image", image, "--target", target, "--json", str(out)]
        started = time.monotonic()
        subprocess.run(cmd, cwd=REPO, check=True)
        wall = time.monotonic() - started
        report = dict(json.loads(out.read_text()))
    report["image_test_wall_s"] = round(wall, 1)
    report["cache"] = cache
    return report


def contents(eng: str, image: str) -> dict[str, Any]:
    script = f"du -sk {SITE}/* | sort -rn | head -30; echo; du -sk /opt/podserve"
    cmd = [eng, "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c", script]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    top, _, total = out.strip().rpartition("\n\n")
    packages = {}
    for line in top.splitlines():
        kib, path = line.split("\t")
        packages[path.rsplit("/", 1)[-1]] = round(int(kib) * 1024 / 1e6, 1)
    base = os.environ.get("BASE_IMAGE", "").strip() or base_from_dockerfile()
    return {
        "base_image": base,
        "base_image_mb": round(image_size_mb(eng, base), 1),
        "venv_mb": round(int(total.split("\t")[0]) * 1024 / 1e6, 1),
        "site_packages_top30_mb": packages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--image", default="podserve:dev")
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--runs", default="cold,warm", help="cold and/or warm, in order")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/image.json")
    args = parser.parse_args(argv)
    eng = engine()
    result: dict[str, Any] = {
        "benchmark": "image",
        "command": f"python benchmarks/image.py --target {args.target} --runs {args.runs}",
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    for run in args.runs.split(","):
        if run == "cold":
            forget(eng, args.image)
            result["cold"] = make_image_test(args.image, args.target, "no podserve layers")
        elif run == "warm":
            result["warm"] = make_image_test(args.image, args.target, "every layer cached")
        else:
            parser.error(f"unknown run {run!r}")
    result["contents"] = contents(eng, args.image)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
