"""Resolve ``podserve[EXTRA]`` for every extra in pyproject.toml with pip, in a fresh venv.

    python tests/image/resolve_extras.py [--timeout 300] [--jobs 4] [--pip pip==24.0] [--only s3]

What a user's ``pip install 'podserve[s3]'`` does, minus the install: a fresh venv, its pip
set to ``--pip`` (default: pip 24.0, the official python:3.11 images' pip), runs
``pip install --dry-run`` against the package indexes pip is configured with. An extra fails
when pip cannot resolve it or needs more than ``--timeout`` seconds (a resolver backtracking
through releases is what a user sees as a hung install). ``dev`` is left to
``make install-dev`` unless named. ``make extras-check`` and CI run it; it exits 1 naming the
extras that failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def extras() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return sorted(project["optional-dependencies"])


def resolve(pip: Path, wheel: Path, extra: str, timeout: float) -> tuple[bool, float, str]:
    """(resolved, seconds, what it says): one dry-run install of podserve[extra]."""
    report = wheel.parent / f"report-{extra}.json"
    cmd = [str(pip), "install", "--dry-run", "--ignore-installed", "--quiet"]
    cmd += ["--report", str(report), f"podserve[{extra}] @ {wheel.as_uri()}"]
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - started, f"no resolution within {timeout:.0f} s"
    seconds = time.monotonic() - started
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
        return False, seconds, (lines or done.stderr.splitlines() or ["pip failed"])[-1]
    installed = json.loads(report.read_text())["install"]
    return True, seconds, f"{len(installed)} distributions"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per extra")
    # pip 24.0 is what the official python:3.11 images ship; with the old boto3 range beside
    # s3fs it ends in ResolutionImpossible where pip 26.3 still finds a solution.
    parser.add_argument("--pip", default="pip==24.0", help="the pip the venv gets")
    parser.add_argument("--jobs", type=int, default=4, help="extras resolved at once")
    parser.add_argument("--only", default="", help="comma-separated extras (default: all)")
    args = parser.parse_args(argv)
    # `dev` (everything plus the test tools) is resolved by `make install-dev` before this runs.
    names = [e for e in args.only.split(",") if e] or [e for e in extras() if e != "dev"]
    unknown = sorted(set(names) - set(extras()))
    if unknown:
        print(f"resolve-extras: no such extra: {', '.join(unknown)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="podserve-extras-") as tmp:
        venv, dist = Path(tmp) / "venv", Path(tmp) / "dist"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = venv / "bin" / "pip"
        upgrade = [str(pip), "install", "--quiet", "--upgrade", args.pip]
        subprocess.run(upgrade, check=True)
        version = subprocess.run(
            [str(pip), "--version"], capture_output=True, text=True, check=True
        ).stdout.split()[1]
        subprocess.run(
            [str(pip), "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(REPO)],
            check=True,
        )
        wheel = next(dist.glob("podserve-*.whl"))
        failed = []
        # Network-bound (index pages, metadata): the extras resolve side by side.
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            runs = {e: pool.submit(resolve, pip, wheel, e, args.timeout) for e in names}
            for extra, run in runs.items():
                ok, seconds, said = run.result()
                verdict = "ok" if ok else "FAILED"
                print(
                    f"resolve-extras: pip {version} podserve[{extra}]: "
                    f"{verdict} in {seconds:.1f} s ({said})",
                    flush=True,
                )
                if not ok:
                    failed.append(extra)
    if failed:
        print(f"resolve-extras: these extras do not resolve: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
