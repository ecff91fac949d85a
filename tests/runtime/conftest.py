"""Fixtures of the runtime tests: the real MiniLM demo staged once per session."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from podserve.demo import stage_demo, stage_onnx_demo
from podserve.runtime.model import Model
from podserve.runtime.registry import create_model
from podserve.settings import Settings
from podserve.storage.repository import ModelRepository

SENTENCES = [
    "Hello world",
    "podserve serves models from a read-only volume.",
    "The quick brown fox jumps over the lazy dog. " * 40,  # longer than max_length
    "",
    "Ünïcödé text with emoji 😀",
]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with ``minilm/1`` and ``minilm-onnx/1`` staged (do not modify)."""
    root = tmp_path_factory.mktemp("demo") / "models"
    stage_demo(root)
    stage_onnx_demo(root)
    return root


@pytest.fixture
def copy_version(tmp_path: Path) -> Callable[[Path, str], Path]:
    """Copy a staged model into a fresh root (to damage it) and return the new root."""

    def copy(root: Path, name: str) -> Path:
        new_root = tmp_path / "copy"
        shutil.copytree(root / name, new_root / name)
        return new_root

    return copy


def load(root: Path, name: str, **settings: object) -> Model:
    """Open, create and load a model the way the data plane does."""
    model = create_model(ModelRepository(root).open(name), Settings(**settings))  # type: ignore[arg-type]
    model.load()
    return model


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte in place (same size: only the digest can notice)."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        value = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([value ^ 0xFF]))
