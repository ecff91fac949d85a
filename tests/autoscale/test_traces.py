"""Built-in traces and the CSV formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from podserve.autoscale.traces import builtin, bursty, read_csv, spiky_day, step
from podserve.errors import ConfigurationError


def test_spiky_day_is_half_a_request_in_the_morning_and_fifty_at_the_peak() -> None:
    trace = spiky_day(dt=10.0)
    hour = lambda h: trace.rate[int(h * 360)]  # noqa: E731
    assert hour(9) == pytest.approx(0.5, abs=0.01)
    assert trace.rate.max() == pytest.approx(50.0, abs=0.1)
    assert 19.5 < np.argmax(trace.rate) / 360 < 20.5
    assert trace.duration_s == 24 * 3600
    # Poisson arrivals around the rate: totals agree within a few per cent
    assert trace.total == pytest.approx(trace.rate.sum() * 10.0, rel=0.02)


def test_builtin_traces_are_reproducible() -> None:
    assert np.array_equal(builtin("bursty").arrivals, bursty().arrivals)
    assert np.array_equal(step(seed=3).arrivals, step(seed=3).arrivals)
    with pytest.raises(ConfigurationError, match="unknown trace"):
        builtin("nope")


def test_rate_csv_holds_each_rate_until_the_next_row(tmp_path: Path) -> None:
    path = tmp_path / "rates.csv"
    path.write_text("timestamp,rate\n100,2\n110,0\n120,5\n")
    trace = read_csv(path, dt=1.0)
    assert trace.duration_s == 30  # the last row lasts as long as the one before it
    assert list(trace.rate[:3]) == [2, 2, 2]
    assert trace.rate[15] == 0
    assert trace.rate[25] == 5
    assert trace.arrivals[10:20].sum() == 0


def test_request_log_csv_counts_requests_per_step(tmp_path: Path) -> None:
    path = tmp_path / "requests.csv"
    path.write_text("timestamp\n2026-11-28T10:00:00\n2026-11-28T10:00:00.5\n2026-11-28T10:00:03\n")
    trace = read_csv(path, dt=1.0)
    assert list(trace.arrivals) == [2, 0, 0, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("timestamp,rate\n5,1\n4,1\n", "backwards"),
        ("1,x\n", "rate"),
        ("1,-2\n", ">= 0"),
        ("", "no rows"),
    ],
)
def test_bad_csv_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        read_csv(path)
