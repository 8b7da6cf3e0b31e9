"""The package tree is the architecture: the deploy path (`engine`) imports nothing from the other
subpackages, each subpackage depends only on the ones below it, and no module imports itself
back through others (an import cycle). A small AST walk over `migrations_runtime/`; the checks
also run on copies with a forbidden import planted, so they are seen to fail."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = "migrations_runtime"
# subpackage → the subpackages it may import (besides itself). `engine` is the bottom layer.
ALLOWED = {
    "engine": set(),
    "alembic": {"engine", "dev"},
    "guard": {"engine"},
    "dev": {"engine"},
    "tools": {"engine", "guard", "dev"},
    "cli": {"engine", "guard", "dev", "tools"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path, known: set[str]) -> set[str]:
    """Modules of the package that `path` imports anywhere in its body (functions included,
    since a lazy import is still a dependency)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and _call_name(node) in ("import_module", "__import__") \
                and node.args and isinstance(node.args[0], ast.Constant):
            targets = [str(node.args[0].value)]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import sub` imports the submodule; `from mod import name` the module
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target in known:
                found.add(target)
    found.discard(name)
    return found


def _call_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def import_graph(root: Path) -> dict[str, set[str]]:
    files = [p for p in root.rglob("*.py") if "__pycache__" not in p.parts]
    known = {module_name(p, root) for p in files}
    return {module_name(p, root): imports_of(p, root, known) for p in files}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    def layer(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None

    found = [f"{PACKAGE} imports {target}: the top-level package runs before every module, so "
             "it imports nothing" for target in sorted(graph.get(PACKAGE, ()))]
    for module, targets in sorted(graph.items()):
        source = layer(module)
        if source is None:
            continue
        for target in sorted(targets):
            other = layer(target)
            if other is not None and other != source and other not in ALLOWED[source]:
                found.append(f"{module} imports {target}: {source} may not depend on {other}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_subpackage_is_a_known_layer() -> None:
    folders = {p.name for p in (REPO / PACKAGE).iterdir()
               if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED), "a new subpackage needs its place in ALLOWED"
    loose = sorted(p.name for p in (REPO / PACKAGE).glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules outside any subpackage: {loose}"


def test_the_deploy_path_imports_nothing_from_the_tools_around_it() -> None:
    assert layer_violations(import_graph(REPO / PACKAGE)) == []


def test_no_import_cycles() -> None:
    assert cycles(import_graph(REPO / PACKAGE)) == []


def test_every_module_imports_on_its_own() -> None:
    """A fresh interpreter per module: an import cycle through a third-party package (Alembic
    imports its plugins while `import alembic` runs) shows only when that module comes first."""
    skip = {f"{PACKAGE}.cli.__main__", f"{PACKAGE}.alembic.env"}  # they run, not import
    modules = sorted(m for m in import_graph(REPO / PACKAGE) if m not in skip)
    running = {m: subprocess.Popen([sys.executable, "-c", f"import {m}"], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for m in modules}
    failed = {}
    for module, process in running.items():
        output, _ = process.communicate(timeout=120)
        if process.returncode != 0:
            failed[module] = output.strip().splitlines()[-1]
    assert failed == {}


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / PACKAGE
    shutil.copytree(REPO / PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.mark.parametrize(("module", "planted", "expected"), [
    ("engine/plan.py", "from ..guard import rules", "engine may not depend on guard"),
    ("engine/apply.py", "    from ..tools.check import run_check",
     "engine may not depend on tools"),
    ("engine/lock.py", "import migrations_runtime.cli.main", "engine may not depend on cli"),
    ("guard/sqltree.py", "from ..tools import progress", "guard may not depend on tools"),
    ("dev/server.py", "from ..cli.common import fail", "dev may not depend on cli"),
    ("engine/plan.py", "    importlib.import_module('migrations_runtime.tools.check')",
     "engine may not depend on tools"),
    ("__init__.py", "from .cli.main import cli", "the top-level package runs before every"),
])
def test_a_planted_forbidden_import_is_caught(package_copy: Path, module: str, planted: str,
                                              expected: str) -> None:
    path = package_copy / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {planted.strip()}\n"
                    if planted.startswith("    ") else path.read_text() + f"\n{planted}\n")
    violations = layer_violations(import_graph(package_copy))
    assert any(expected in v for v in violations), violations


@pytest.mark.parametrize(("module", "planted", "members"), [
    ("engine/errors.py", "from .apply import migrate", {"engine.errors", "engine.apply"}),
    ("guard/findings.py", "from .rules import BY_NAME", {"guard.findings", "guard.rules"}),
])
def test_a_planted_cycle_is_caught(package_copy: Path, module: str, planted: str,
                                   members: set[str]) -> None:
    path = package_copy / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {planted}\n")
    found = cycles(import_graph(package_copy))
    assert any({f"{PACKAGE}.{m}" for m in members} <= set(component) for component in found), found
