"""``podserve plan`` end to end, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from podserve.autoscale.keda import validate
from podserve.cli import main

SMALL = ["--trace", "step", "--dt", "2", "--throughput", "1:5,8:20", "--ready-s", "20"]


def test_plan_search_prints_a_valid_scaled_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_yaml = tmp_path / "so.yaml"
    png = tmp_path / "plan.png"
    args = [*SMALL, "--p99-goal", "30", "--search-down-window", "60", "--search-cooldown", "60"]
    code = main(["plan", *args, "--yaml", str(out_yaml), "--plot", str(png), "--queue", "q1"])
    assert code == 0
    text = capsys.readouterr().out
    assert "settings simulated" in text
    assert "wait_p99_s" in text
    scaled, auth = yaml.safe_load_all(out_yaml.read_text())
    validate(scaled)
    validate(auth)
    assert scaled["spec"]["triggers"][0]["metadata"]["queueName"] == "q1"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_simulates_given_settings_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *SMALL, "--min-replicas", "1", "--target", "50", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["settings"].startswith("target=50 min=1")
    assert summary["wait_p99_s"] > 0
    assert summary["replica_seconds"] >= 3600


def test_unreachable_goal_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *SMALL, "--p99-goal", "0.001", "--search-targets", "50"]) == 1
    assert "no setting met" in capsys.readouterr().err


def test_measurements_from_benchmark_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "q.json").write_text(json.dumps({"batch_size": 8, "messages_per_s": 40.0}))
    (tmp_path / "c.json").write_text(json.dumps({"time_to_ready_s": 7.5}))
    args = ["--trace", "step", "--dt", "5", "--json"]
    files = ["--throughput-json", str(tmp_path / "q.json"), "--cold-start-json"]
    assert main(["plan", *args, *files, str(tmp_path / "c.json")]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] > 0
    missing = ["--cold-start-json", str(tmp_path / "none.json"), "--throughput", "1:5"]
    assert main(["plan", *args, *missing]) == 2
    assert "pass --ready-s" in capsys.readouterr().err


def test_csv_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,rate\n0,1\n600,10\n1200,1\n")
    assert main(["plan", "--trace", str(trace), *SMALL[2:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] > 5000
