"""The broker URL is a secret: a wrong password against the real broker leaks nowhere."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from yarl import URL

from podserve.errors import BrokerError
from podserve.protocol.queue.connection import connect, redact
from tests.protocol.queue.conftest import AMQP_URL

PASSWORD = "Wr0ng-pa55word-that-must-not-leak"


def _wrong_url() -> str:
    return str(URL(AMQP_URL).with_password(PASSWORD))


async def test_a_refused_password_is_not_in_the_error_or_the_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(BrokerError) as info:
        await connect(SecretStr(_wrong_url()), "podserve-test-secret")
    assert "refused the credentials" in str(info.value)
    assert PASSWORD not in str(info.value)
    assert PASSWORD not in repr(info.value)
    assert "***" in str(info.value)
    assert PASSWORD not in caplog.text


def test_a_worker_with_a_wrong_password_says_so_without_it(tmp_path: Path) -> None:
    env = {**os.environ, "PODSERVE_AMQP_URL": _wrong_url(), "PODSERVE_LOG_LEVEL": "DEBUG"}
    (tmp_path / "models").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "podserve", "worker", str(tmp_path / "models"),
         "--queue", "podserve-test-secret", "--http-port", "0", "--grpc-port", "0"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "refused the credentials" in output
    assert PASSWORD not in output


def test_redact_takes_the_secret_type() -> None:
    assert redact(SecretStr("amqp://u:p4ss@h:5672/")) == "amqp://u:***@h:5672/"
