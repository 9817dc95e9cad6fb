"""The package's layout: imports point only down (no cycle, also through imports inside functions),
and each public name is exported by exactly one module."""

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Set

import smtlock

PACKAGE = Path(smtlock.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> Set[str]:
    """The package modules ``module`` imports, anywhere in its code (``from . import x`` included)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module] if node.module else [alias.name for alias in node.names]
            found |= {name for name in names if name in MODULES}
    return found - {module}


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules, or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return []
    for module in graph:
        if module not in state and (found := visit(module)):
            return found
    return []


def test_no_import_cycle() -> None:
    graph = {module: _imports(module) for module in MODULES}
    assert graph["errors"] == set()
    assert _cycle(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_each_public_name_is_exported_by_one_module() -> None:
    owners: Dict[str, List[str]] = {}
    for name in MODULES:
        module = importlib.import_module(f"smtlock.{name}")
        for public in getattr(module, "__all__", []):
            assert hasattr(module, public), f"smtlock.{name}.__all__ names {public}, which it lacks"
            owners.setdefault(public, []).append(name)
    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
    for public in smtlock.__all__:  # the package re-exports names its modules own
        assert public in owners or public == "__version__", public
