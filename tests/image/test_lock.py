"""requirements/*.txt, the image's locks: hash-pinned, inside pyproject.toml's ranges, used.

Offline checks (``make test``); ``make lock-check`` re-resolves them against the indexes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.tools import REPO

LOCKS = REPO / "requirements"
# The image's platform: the Dockerfile's python:3.11 base on x86_64 Linux.
IMAGE_ENV = {
    **default_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.11",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}


@dataclass
class Pin:
    version: Version
    hashes: list[str]


def read_lock(text: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --")
        name, _, version = spec.strip().partition("==")
        assert version, f"not pinned with ==: {line!r}"
        hashes = [o.removeprefix("hash=").strip() for o in options if o.startswith("hash=")]
        pins[canonicalize_name(name)] = Pin(Version(version), hashes)
    return pins


def lock_variants() -> dict[str, list[str]]:
    """Lock file name -> the extras `make lock` resolves into it (read from the Makefile)."""
    recipe = re.sub(r"\\\n", " ", (REPO / "Makefile").read_text())
    variants = {}
    for line in recipe.splitlines():
        if "pip compile pyproject.toml" in line and (out := re.search(r"/(\w+)\.txt\b", line)):
            variants[out.group(1)] = re.findall(r"--extra (\w+)", line)
    return variants


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def stale_pins(pins: dict[str, Pin], project: dict, extras: list[str]) -> list[str]:
    """What `make lock` would have to change: requirements missing or pinned outside a range."""
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    problems = []
    for req in reqs:
        if req.marker is not None and not req.marker.evaluate(IMAGE_ENV):
            continue
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req.name}=={pin.version} is outside {req}")
    return problems


def test_the_makefile_names_the_image_variants() -> None:
    assert set(lock_variants()) == {"cpu", "full", "cuda"}
    assert "transformers" not in lock_variants()["cpu"], "the default image stays lean"


@pytest.mark.parametrize("variant", ["cpu", "full", "cuda"])
def test_lock_pins_every_requirement_inside_its_range(variant: str) -> None:
    pins = read_lock((LOCKS / f"{variant}.txt").read_text())
    problems = stale_pins(pins, pyproject()["project"], lock_variants()[variant])
    assert not problems, f"requirements/{variant}.txt is stale (run `make lock`): {problems}"


def test_a_moved_range_or_a_new_dependency_shows_as_stale() -> None:
    pins = read_lock((LOCKS / "cpu.txt").read_text())
    project = pyproject()["project"]
    numpy = pins["numpy"].version
    moved = dict(project, dependencies=[*project["dependencies"], f"numpy>{numpy}", "left-pad"])
    problems = stale_pins(pins, moved, lock_variants()["cpu"])
    assert problems == [f"numpy=={numpy} is outside numpy>{numpy}", "left-pad is not pinned"]


@pytest.mark.parametrize("variant", ["build", "cpu", "full", "cuda"])
def test_every_pin_carries_a_sha256(variant: str) -> None:
    pins = read_lock((LOCKS / f"{variant}.txt").read_text())
    assert pins
    for name, pin in pins.items():
        assert pin.hashes, f"{variant}.txt: {name} has no --hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), name


def test_build_lock_covers_the_build_system() -> None:
    pins = read_lock((LOCKS / "build.txt").read_text())
    for spec in pyproject()["build-system"]["requires"]:
        req = Requirement(spec)
        pin = pins.get(canonicalize_name(req.name))
        assert pin, f"build.txt lacks {req.name}"
        assert req.specifier.contains(pin.version), f"build.txt: {req}"


def test_torch_builds_match_the_device() -> None:
    cpu = read_lock((LOCKS / "cpu.txt").read_text())
    cuda = read_lock((LOCKS / "cuda.txt").read_text())
    assert cpu["torch"].version.local == "cpu", "the CPU image takes torch's CPU build"
    assert read_lock((LOCKS / "full.txt").read_text())["torch"] == cpu["torch"]
    assert cuda["torch"].version.local is None
    assert not [n for n in cpu if n.startswith(("nvidia-", "cuda-", "triton"))]


def test_read_lock_rejects_an_unpinned_line() -> None:
    with pytest.raises(AssertionError, match="not pinned"):
        read_lock("numpy>=2 \\\n    --hash=sha256:" + "0" * 64 + "\n")


@pytest.mark.parametrize("variant", ["build", "cpu", "full", "cuda"])
def test_the_dockerfile_installs_the_lock_with_hashes(variant: str) -> None:
    lines = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text()).splitlines()
    copies = [ln.split() for ln in lines if ln.startswith(f"COPY requirements/{variant}.txt ")]
    assert len(copies) == 1, f"one COPY of requirements/{variant}.txt"
    dest = copies[0][-1]
    installs = [ln for ln in lines if ln.startswith("RUN") and f"-r {dest}" in ln]
    assert installs, f"no RUN installs {dest}"
    assert all("--require-hashes" in ln for ln in installs)
    assert "!requirements/" in (REPO / ".dockerignore").read_text()
