"""Reading the replica's measured throughput and cold start from benchmark JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from podserve.autoscale.measurements import (
    ReplicaModel,
    load_ready_s,
    load_throughput,
    parse_throughput,
)
from podserve.errors import ConfigurationError


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    return path


def test_throughput_records_anywhere_best_per_batch_and_model_filter(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        {
            "machine": {"cpus": 2},
            "runs": [
                {"model": "minilm", "batch_size": 1, "throughput_rps": 30.0},
                {"model": "minilm", "batch_size": 1, "throughput_rps": 35.0, "surface": "grpc"},
                {"model": "minilm", "batch_size": 32, "requests_per_s": 250.0},
                {"model": "identity", "batch_size": 32, "throughput_rps": 9000.0},
                {"model": "minilm", "batch_size": True, "throughput_rps": 1.0},
            ],
        },
    )
    assert load_throughput(path, "minilm") == {1: 35.0, 32: 250.0}
    assert load_throughput(path)[32] == 9000.0
    with pytest.raises(ConfigurationError, match="for model 'bert'"):
        load_throughput(path, "bert")


def test_cold_start_prefers_cold_cache_records(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            {"model": "minilm", "cache": "warm", "time_to_ready_s": 9.0},
            {"model": "minilm", "cache": "cold", "time_to_ready_s": 4.0},
            {"model": "big", "cache": "cold", "time_to_ready_s": 40.0},
        ],
    )
    assert load_ready_s(path, "minilm") == 4.0
    assert load_ready_s(path) == 40.0
    with pytest.raises(ConfigurationError, match="time_to_ready_s"):
        load_ready_s(write(tmp_path, {"x": 1}))


def test_unreadable_file_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_throughput(tmp_path / "bad.json")


def test_parse_throughput_and_rate_table() -> None:
    assert parse_throughput("1:20,8:90") == {1: 20.0, 8: 90.0}
    assert parse_throughput("150") == {1: 150.0}
    with pytest.raises(ConfigurationError):
        parse_throughput("1:x")
    model = ReplicaModel({4: 40.0, 8: 80.0}, ready_s=1.0, schedule_s=2.0, image_pull_s=3.0)
    assert model.startup_s == 6.0
    assert model.rate_table() == [40.0, 40.0, 40.0, 40.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    with pytest.raises(ConfigurationError):
        ReplicaModel({1: 0.0}, ready_s=1.0)


def test_queue_benchmark_shape_by_batch_size_and_worker_record(tmp_path: Path) -> None:
    """benchmarks/queue_worker.py's result: a headline, the worker run, a batch-size sweep."""
    path = write(
        tmp_path,
        {
            "model": "minilm (all-MiniLM-L6-v2, transformers runtime, max_batch_size 32)",
            "podserve_worker": {"throughput_rps": 26.8, "max_batch_size": 32},
            "naive_consumer": {"throughput_rps": 9.0, "max_batch_size": 1},
            "throughput_rps": 26.8,  # no batch size: ignored beside the batched numbers
            "by_batch_size": {"1": 9.6, "8": 28.2, "32": 15.5, "x": 3.0, "4": None},
        },
    )
    expected = {1: 9.6, 8: 28.2, 32: 26.8}
    assert load_throughput(path) == expected
    assert load_throughput(path, "minilm") == expected
    headline_only = write(tmp_path, {"model": "minilm", "throughput_rps": 26.8, "rows": []})
    assert load_throughput(headline_only, "minilm") == {1: 26.8}


def test_cold_start_benchmark_shape_headline_or_model_rows(tmp_path: Path) -> None:
    """benchmarks/cold_start.py's result: a headline for the demo and rows per model/cache."""
    path = write(
        tmp_path,
        {
            "cold_start_seconds": 6.5,
            "cold_start_seconds_warm_cache": 3.0,
            "rows": [
                {"model": "minilm", "cache": "cold", "ready_seconds": 6.5},
                {"model": "minilm", "cache": "warm", "ready_seconds": 3.0},
                {"model": "decoder", "cache": "cold", "ready_seconds": 21.0},
            ],
        },
    )
    assert load_ready_s(path) == 6.5
    assert load_ready_s(path, "decoder") == 21.0
    assert load_ready_s(path, "minilm") == 6.5
