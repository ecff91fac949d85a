"""The queue soak, small: 2 workers, 500 requests, one broker restart, one SIGKILL.

``benchmarks/queue_soak.py`` is run as a user would run it (the full soak is its default:
5,000 requests, two restarts, one kill) and its JSON result is checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.protocol.queue.broker import rabbitmqctl
from tests.tools import REPO

pytestmark = [pytest.mark.rabbitmq, pytest.mark.slow]


def test_soak_every_request_answered_through_a_restart_and_a_kill(tmp_path: Path) -> None:
    rabbitmqctl("status")  # skips where rabbitmqctl cannot drive the broker
    out = tmp_path / "soak.json"
    args = ["--requests", "500", "--restarts", "1", "--kills", "1", "--batch-delay-ms", "300"]
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "queue_soak.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ,
        check=False,
    )
    assert out.exists(), done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["answered"] == 500
    assert result["wrong_or_error_replies"] == 0
    assert result["unexpected_replies"] == 0
    assert result["left_in_queues"] == {"requests": 0, "dead_letters": 0, "replies": 0}
    assert not any(result["bad_log_lines"].values()), result["bad_log_lines"]
    assert result["sigterm_exit_codes"] == [0, 0]
    assert [e["kind"] for e in result["disruptions"]] == ["restart", "kill"]
    assert result["reconnects"] >= 1
    assert result["ok"], result
    assert done.returncode == 0
