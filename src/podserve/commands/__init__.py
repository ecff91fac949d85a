"""The command line's commands: one module per command, each with ``register(subparsers)``.

A module imports nothing heavy at the top (the CLI parser is on every pod's start path); its
handler imports what the command needs when it runs.
"""

from __future__ import annotations

import argparse
from typing import TypeAlias

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

COMMANDS = (
    "serve",
    "demo",
    "worker",
    "submit",
    "stage",
    "verify",
    "sign",
    "keygen",
    "pull",
    "push",
    "split",
    "devices",
    "render",
    "plan",
)
"""Every command, in the order ``podserve --help`` lists them."""
