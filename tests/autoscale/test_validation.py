"""The simulator against real consumer processes on the real RabbitMQ, scaled by the same rules.

Uses benchmarks/autoscale_validation.py with its stand-in consumer (a minimal aio-pika
consumer with a fixed batch time) until `podserve worker` exists.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.rabbitmq]

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "autoscale_validation.py"


def load_driver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("autoscale_validation", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_drain_time_and_replica_timeline_agree_within_20_percent() -> None:
    driver = load_driver()
    model = driver.calibrate(driver.STANDIN, 150)
    report = driver.compare(driver.STANDIN, 500, driver.validation_settings(max_replicas=3), model)
    rows = report["rows"]
    assert rows["max replicas"]["real"] == rows["max replicas"]["sim"] == 3
    assert rows["drain time (s)"]["error"] < 0.2
    assert rows["replica-seconds"]["error"] < 0.2
    assert rows["back to zero at (s)"]["error"] < 0.2
