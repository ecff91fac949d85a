"""The command line as a user meets it: every input error is one line on stderr and exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podserve.settings import Settings, render_markdown
from tests.models import stage_all

REPO = Path(__file__).resolve().parents[1]


def _podserve(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "podserve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=full_env,
    )


def _one_line_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("args", "env", "fragment"),
    [
        (["serve", "{tmp}", "--http-port", "70000"], {}, "--http-port / PODSERVE_HTTP_PORT"),
        (["serve", "{tmp}", "--http-port", "eighty"], {}, "invalid int value: 'eighty'"),
        (["serve", "{tmp}"], {"PODSERVE_GRPC_PORT": "-1"}, "PODSERVE_GRPC_PORT"),
        (["serve", "{tmp}"], {"PODSERVE_LOG_LEVEL": "verbose"}, "PODSERVE_LOG_LEVEL"),
        (["serve", "{tmp}", "--model", "../etc"], {}, "invalid model reference '../etc'"),
        (["serve", "{tmp}", "--model", "m:latest"], {}, "invalid model version 'latest'"),
        (["stage", "{tmp}", "{tmp}/m/1", "--input", "x:FP32:four"], {}, "must be integers"),
        (["verify", "{tmp}", "m/1"], {}, "write NAME or NAME:VERSION"),
        (["pull", "s3://b/m/1", "{tmp}/m/1", "--concurrency", "0"], {}, "must be at least 1"),
        # pull's flag is --policy: the message names only the variable, no flag pull lacks
        (["pull", "s3://b/m/1", "{tmp}/m/1"], {"PODSERVE_PULL_POLICY": "x"}, "for PODSERVE_PULL_"),
        (["plan", "--trace", "nosuch"], {}, "bursty, spiky-day, step"),
        (["serve", "--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    ],
)
def test_input_errors_are_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], fragment: str
) -> None:
    proc = _podserve(*[a.replace("{tmp}", str(tmp_path)) for a in args], env=env, cwd=tmp_path)
    _one_line_error(proc, fragment)


def test_render_refuses_what_a_pod_would_fail_on(tmp_path: Path) -> None:
    config = tmp_path / "podserve.yaml"
    config.write_text(
        "model: minilm\nversion: latest\nimage: registry.example.com/podserve:1\n"
        "storage: {source: ../../etc}\n"
    )
    proc = _podserve("render", str(config), cwd=tmp_path)
    _one_line_error(proc, "invalid field 'version': invalid model version 'latest'")
    assert "invalid field 'storage.source'" in proc.stderr


def test_plan_works_outside_the_checkout(tmp_path: Path) -> None:
    """Without --throughput the planner finds the measured results from any directory."""
    proc = _podserve("plan", "--trace", "step", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] > 0
    assert not list(tmp_path.iterdir())  # it wrote nothing where it ran


def test_plan_help_is_plain_text() -> None:
    proc = _podserve("plan", "--help")
    assert proc.returncode == 0
    assert "``" not in proc.stdout
    assert ":mod:" not in proc.stdout
    assert "minReplicaCount" in proc.stdout
    assert "pollingInterval values" in proc.stdout


def test_configuration_doc_is_current() -> None:
    """docs/configuration.md is generated from Settings: regenerate it with `make docs`."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == render_markdown(), "docs/configuration.md is stale: run `make docs`"


def test_every_podserve_variable_is_a_setting() -> None:
    """No PODSERVE_* variable is read outside Settings."""
    fields = {f"PODSERVE_{name.upper()}" for name in Settings.model_fields}
    src = REPO / "src" / "podserve"
    for path in src.rglob("*.py"):
        for name in re.findall(r"PODSERVE_[A-Z][A-Z0-9_]*[A-Z0-9]", path.read_text()):
            assert name in fields, f"{path.relative_to(REPO)} names {name}, which is no setting"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_model_that_fails_to_load_is_logged_as_an_error(tmp_path: Path) -> None:
    """A log-based alert on level=error sees a corrupted model; the server stays not-ready."""
    root = stage_all(tmp_path / "models", ["identity"])
    weights = root / "identity" / "1" / "weights.txt"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podserve",
            "serve",
            str(root),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(_free_port()),
            "--grpc-port",
            "0",
            "--log-format",
            "json",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        found = None
        assert proc.stderr is not None
        while time.monotonic() < deadline and found is None:
            line = proc.stderr.readline()
            if not line:
                break
            if line.startswith("{"):
                entry = json.loads(line)
                if "identity" in entry["msg"] and "failed" in entry["msg"]:
                    found = entry
        assert found is not None, "no log line about the failed model"
        assert found["level"] == "error"
        assert "checksum mismatch" in found["msg"] or "options.module" in found["msg"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
