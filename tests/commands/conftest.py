"""The commands run against the storage tests' small staged model."""

from tests.storage.conftest import staged

__all__ = ["staged"]
