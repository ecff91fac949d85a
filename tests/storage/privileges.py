"""Run a check as an unprivileged user: root ignores file permissions, nobody does not."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

NOBODY = 65534


def as_nobody(fn: Callable[[], str]) -> str:
    """Fork, drop to uid/gid 65534, return ``fn()``'s string; imports must happen before."""
    if os.geteuid() != 0:
        return fn()  # already unprivileged: permissions apply as they are
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            os.write(write, fn().encode())
        except BaseException as exc:
            os.write(write, f"child failed: {exc!r}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 65536):
        chunks.append(chunk)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    out = b"".join(chunks).decode()
    if os.waitstatus_to_exitcode(status) != 0:
        pytest.fail(out)
    return out
