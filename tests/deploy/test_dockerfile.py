"""The Dockerfile: hadolint-clean, and what lint does not see (user, weights, entrypoint)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.tools import REPO

DOCKERFILE = REPO / "Dockerfile"
TARGETS = ("cpu", "full", "cuda")
WEIGHT_SUFFIXES = ("safetensors", "bin", "pt", "pth", "onnx", "gguf", "ckpt")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    kept = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(kept))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def stages(text: str) -> tuple[dict[str, str], dict[str, tuple[str, list[tuple[str, str]]]]]:
    """Global ARG defaults, and per stage name: (base, its instructions)."""
    args: dict[str, str] = {}
    found: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = []
            found[name.strip() or f"stage{len(found)}"] = (base.strip(), current)
        elif current is None and keyword == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        elif current is not None:
            current.append((keyword, rest))
    return args, found


def base_image(target: str, text: str) -> str:
    """The registry image a target finally stands on, ARG defaults resolved."""
    args, found = stages(text)
    base = found[target][0]
    while base in found:
        base = found[base][0]
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text()


def test_hadolint_is_clean(hadolint: str) -> None:
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_live(hadolint: str, tmp_path: Path) -> None:
    # Guards the test above against a linter that passes everything (wrong binary, no rules).
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n")
    done = subprocess.run(
        [hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "DL3007" in done.stdout


def test_no_rule_is_ignored_without_a_reason(text: str) -> None:
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[i - 1] if i > 0 else ""
            assert reason.lstrip().startswith("#"), f"line {i + 1}: say why the rule is ignored"
            assert "hadolint" not in reason, f"line {i + 1}: say why the rule is ignored"
    for config in (".hadolint.yaml", ".hadolint.yml"):
        assert not (REPO / config).exists(), f"{config} would ignore rules out of sight"


@pytest.mark.parametrize("target", TARGETS)
def test_runtime_targets(text: str, target: str) -> None:
    _, found = stages(text)
    assert target in found, f"no `{target}` target"
    steps = found[target][1]
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users, "the runtime must switch to a non-root USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "USER must be numeric so that runAsNonRoot can check it"
    assert int(uid) != 0
    entrypoints = [rest for keyword, rest in steps if keyword == "ENTRYPOINT"]
    assert json.loads(entrypoints[-1]) == ["podserve", "serve"]
    assert "HEALTHCHECK" not in {keyword for keyword, _ in steps}


def test_last_stage_is_cpu(text: str) -> None:
    _, found = stages(text)
    assert list(found)[-1] == "cpu", "`docker build .` must give the CPU image"


def test_cuda_base_is_pinned_by_tag(text: str) -> None:
    image = base_image("cuda", text)
    name, _, tag = image.rpartition(":")
    assert name, image
    assert tag not in ("", "latest"), image
    assert re.match(r"\d+\.\d+", tag), f"{image}: tag must name a version"


def test_no_weights_are_copied_in(text: str) -> None:
    _, found = stages(text)
    for name, (_, steps) in found.items():
        for keyword, rest in steps:
            if keyword in ("COPY", "ADD") and "--from=" not in rest:
                sources = rest.split()[:-1]
                locks = {s for s in sources if re.fullmatch(r"requirements/\w+\.txt", s)}
                assert set(sources) - locks <= {
                    "pyproject.toml",
                    "README.md",
                    "src/",
                    "deploy/base/",
                    "deploy/components/",
                    "scripts/trim-venv.sh",
                }, (name, rest)


def test_dockerignore_keeps_weights_out() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "an allow-list: everything is excluded unless re-included"
    for suffix in WEIGHT_SUFFIXES:
        assert f"**/*.{suffix}" in patterns
    assert not [p for p in patterns if p.startswith("!") and "model" in p]
