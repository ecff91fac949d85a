"""What each extra adds to the image: installed size of each dependency set, as the image has it.

For the core dependencies alone and with each image extra, resolves the set the way
``make lock`` does (uv, CPython 3.11 on x86_64 Linux), installs it into a fresh venv with
compiled ``.pyc`` files (pip does that in the image) and torch's tests and headers removed (as
the Dockerfile does), and measures it with ``du``. The ``cpu-image`` row installs
requirements/cpu.txt itself, which leaves out the packages serving never imports.

    python benchmarks/image_extras.py [--find-links DIR] [--out FILE.json]

``--find-links`` is where torch's CPU wheel is (default: PyTorch's CPU index page).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or "uv"
SETS = {
    "core": [],
    "core+torch": ["torch"],
    "core+onnx": ["onnx"],
    "core+s3": ["s3"],
    "core+transformers": ["transformers"],
    "core+torch+onnx+s3": ["torch", "onnx", "s3"],
}


def du_mb(path: Path) -> int:
    return int(
        subprocess.run(
            ["du", "-sm", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )


def install(lock: Path, venv: Path, links: str) -> int:
    subprocess.run([UV, "venv", "-q", "--python", "3.11", str(venv)], check=True)
    env = dict(os.environ, VIRTUAL_ENV=str(venv))
    subprocess.run(
        [
            UV,
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--link-mode",
            "copy",
            "--compile-bytecode",
            "--find-links",
            links,
            "-r",
            str(lock),
        ],
        check=True,
        env=env,
    )
    for sub in ("test", "include"):
        for found in venv.glob(f"lib/python3*/site-packages/torch/{sub}"):
            shutil.rmtree(found)
    return du_mb(venv)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--find-links", default="https://download.pytorch.org/whl/cpu/torch/")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/image_extras.json")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="podserve-extras-size-") as tmp:
        locks = {}
        for name, extras in SETS.items():
            lock = Path(tmp) / f"{name}.txt"
            cmd = [
                UV,
                "pip",
                "compile",
                "-q",
                str(REPO / "pyproject.toml"),
                "--python-version",
                "3.11",
                "--python-platform",
                "x86_64-manylinux_2_28",
                "--find-links",
                args.find_links,
                "-o",
                str(lock),
            ]
            for extra in extras:
                cmd += ["--extra", extra]
            subprocess.run(cmd, check=True)
            locks[name] = lock
        locks["cpu-image"] = REPO / "requirements/cpu.txt"
        for name, lock in locks.items():
            dists = sum(1 for ln in lock.read_text().splitlines() if ln[:1].isalpha())
            mb = install(lock, Path(tmp) / f"venv-{name}", args.find_links)
            rows.append({"set": name, "venv_mb": mb, "distributions": dists})
            print(f"{name}: {mb} MB, {dists} distributions", flush=True)
    core = int(rows[0]["venv_mb"])
    for row in rows:
        row["added_to_core_mb"] = row["venv_mb"] - core
    result = {
        "benchmark": "image_extras",
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "rows": rows,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
