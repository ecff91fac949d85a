"""The package's layout, read from the source (nothing is imported or run).

The core (storage, runtime, batching, v2, dataplane and the shared modules) never imports a
surface or a tool; one surface never imports another; no two modules import each other, even
lazily inside a function; and no hand-written module grows past 400 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 400

CORE = (
    "podserve.storage",
    "podserve.runtime",
    "podserve.batching",
    "podserve.v2",
    "podserve.dataplane",
    "podserve.errors",
    "podserve.settings",
    "podserve.metrics",
    "podserve.logs",
)
UPPER = (
    "podserve.protocol",
    "podserve.pipeline",
    "podserve.tensor_parallel",
    "podserve.autoscale",
    "podserve.kube",
    "podserve.commands",
    "podserve.cli",
    "podserve.lifecycle",
)
SURFACES = ("podserve.protocol.http", "podserve.protocol.grpc", "podserve.protocol.queue")


def _modules(root: Path) -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package) for every ``.py`` under ``root/podserve``."""
    out = {}
    for path in sorted((root / "podserve").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        out[".".join(parts)] = (path, package)
    return out


def _imports(name: str, path: Path, package: bool, known: set[str]) -> set[str]:
    """The podserve modules ``name`` imports anywhere in its source (functions and
    ``TYPE_CHECKING`` blocks included). ``from pkg import mod`` counts as importing ``pkg.mod``,
    so a package ``__init__`` that re-exports its modules is not a cycle."""
    here = name if package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def _graph(root: Path) -> dict[str, set[str]]:
    modules = _modules(root)
    known = set(modules)
    return {m: _imports(m, p, pkg, known) for m, (p, pkg) in modules.items()}


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{m} imports {t}"
        for m, targets in graph.items()
        for t in targets
        if _under(m, CORE) and _under(t, UPPER)
    )


def _sideways(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for m, targets in graph.items():
        for t in targets:
            a = next((s for s in SURFACES if _under(m, (s,))), None)
            b = next((s for s in SURFACES if _under(t, (s,))), None)
            if a and b and a != b:
                out.append(f"{m} imports {t}")
    return sorted(out)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _long_modules(root: Path) -> list[str]:
    out = []
    for path in sorted((root / "podserve").rglob("*.py")):
        if "_generated" in path.parts:
            continue
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            out.append(f"{path.relative_to(root)}: {lines} lines")
    return out


GRAPH = _graph(SRC)


def test_the_core_never_imports_a_surface_or_a_tool() -> None:
    assert not _upward(GRAPH), "\n".join(_upward(GRAPH))


def test_no_surface_imports_another() -> None:
    assert not _sideways(GRAPH), "\n".join(_sideways(GRAPH))


def test_no_import_cycles() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_over_400_lines() -> None:
    assert not _long_modules(SRC), "\n".join(_long_modules(SRC))


def test_every_command_has_its_own_module() -> None:
    from podserve.commands import COMMANDS

    folder = SRC / "podserve" / "commands"
    assert sorted(COMMANDS) == sorted(
        p.stem for p in folder.glob("*.py") if not p.name.startswith("_")
    )
    for name in COMMANDS:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        assert any(isinstance(n, ast.FunctionDef) and n.name == "register" for n in tree.body), (
            f"podserve/commands/{name}.py has no register(sub)"
        )


def test_test_folders_mirror_the_package() -> None:
    """tests/<part>/ holds the tests of podserve/<part>/ (tests/deploy: the deploy/ files;
    tests/integration: whole `podserve` processes under real clients and signals)."""
    tests = Path(__file__).resolve().parent
    for folder in sorted(p.parent for p in tests.rglob("__init__.py") if p.parent != tests):
        relative = folder.relative_to(tests)
        # tests/image tests the Dockerfile and its locks, as tests/deploy tests deploy/.
        if relative.parts[0] in ("deploy", "image", "integration"):
            continue
        assert (SRC / "podserve" / relative).is_dir(), f"tests/{relative}: no podserve/{relative}"


# --- the checks themselves catch what they are meant to ----------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / "podserve" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    _write(
        tmp_path,
        {
            "__init__.py": "",
            "v2/__init__.py": "from podserve.v2.types import X\n",
            "v2/types.py": "X = 1\n",
            "dataplane/__init__.py": "",
            "protocol/__init__.py": "",
            "protocol/http/__init__.py": "",
            "protocol/http/app.py": "from podserve.v2 import types\n",
            "protocol/queue/__init__.py": "",
            "protocol/queue/convert.py": "from podserve.v2.types import X\n",
        },
    )
    return tmp_path


def test_a_clean_tree_passes(fake: Path) -> None:
    graph = _graph(fake)
    assert graph["podserve.protocol.http.app"] == {"podserve.v2.types"}
    assert not _upward(graph)
    assert not _sideways(graph)
    assert not _cycles(graph)
    assert not _long_modules(fake)


def test_an_upward_import_inside_a_function_is_caught(fake: Path) -> None:
    _write(fake, {"dataplane/plane.py": "def f():\n    from ..protocol.http import app\n"})
    assert _upward(_graph(fake)) == ["podserve.dataplane.plane imports podserve.protocol.http.app"]


def test_a_surface_importing_another_is_caught(fake: Path) -> None:
    _write(fake, {"protocol/queue/worker.py": "import podserve.protocol.http.app\n"})
    assert _sideways(_graph(fake)) == [
        "podserve.protocol.queue.worker imports podserve.protocol.http.app"
    ]


def test_a_cycle_through_type_checking_is_caught(fake: Path) -> None:
    _write(
        fake,
        {
            "v2/types.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from podserve.v2.codecs import Y\n",
            "v2/codecs.py": "from podserve.v2.types import X\nY = X\n",
        },
    )
    assert _cycles(_graph(fake)) == [["podserve.v2.codecs", "podserve.v2.types"]]


def test_a_long_module_is_caught(fake: Path) -> None:
    _write(fake, {"v2/big.py": "x = 1\n" * (MAX_LINES + 1)})
    assert _long_modules(fake) == [f"podserve/v2/big.py: {MAX_LINES + 1} lines"]
