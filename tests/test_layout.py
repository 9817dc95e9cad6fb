"""The package's layout: the layers are folders, and imports point only down (no cycle, no import of a
higher layer, also through imports inside functions); the lower layers know no Sumatra or Django; the
harness is imported by nothing but the CLI; and each public name is exported by exactly one module."""

import ast
import importlib
import pickle
from pathlib import Path
from typing import Dict, List, Set, Tuple

import smtlock

PACKAGE = Path(smtlock.__file__).parent

#: the layers, lowest first: a module may import its own layer and those before it, never one after
LAYERS = ["errors", "_postgres", "_lock", "_sumatra", "_tracking", "_ops", "_harness", "faces"]
#: the public modules above every layer: what users, Sumatra and the console script import
FACES = {"smtlock", "smtlock.__main__", "smtlock.cli", "smtlock.plugin"}
#: programs run in a process of their own (python -m, or a script path): they import the package for
#: its side effect (the patches), which is no import of a layer above them
PROGRAMS = {"smtlock._sumatra.copying", "smtlock._harness.job"}
#: layers that must work without Sumatra or Django; errors.py still imports Sumatra's
#: RecordStoreAccessError, which ServerUnreachable subclasses so that `smt` prints it as one line
NO_SUMATRA = {"_postgres", "_lock"}


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str:
    """The layer a module belongs to: its folder, ``errors``, or ``faces`` for the public modules."""
    if module in FACES:
        return "faces"
    return module.split(".")[1]


def _imports(module: str) -> Tuple[Set[str], Set[str]]:
    """The package modules ``module`` imports anywhere in its code, and the outside packages."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    inside, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            targets = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            if target in MODULES:
                inside.add(target)
            elif not target.startswith("smtlock"):
                outside.add(target.split(".")[0])
    return inside - {module}, outside


GRAPH = {module: _imports(module)[0] for module in MODULES}


def upward(graph: Dict[str, Set[str]]) -> List[str]:
    """Every import of a higher layer, as "importer -> imported"."""
    found = []
    for module, targets in graph.items():
        for target in sorted(targets):
            if module in PROGRAMS and target == "smtlock":
                continue
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                found.append(f"{module} -> {target}")
    return found


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules, or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
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


def test_every_module_is_in_a_layer() -> None:
    assert {layer_of(module) for module in MODULES} == set(LAYERS)
    top = {module for module in MODULES if module.count(".") == 1 and not MODULES[module].name == "__init__.py"}
    assert top == {"smtlock.errors", "smtlock.cli", "smtlock.plugin", "smtlock.__main__"}  # the rest in folders


def test_imports_point_only_down() -> None:
    assert upward(GRAPH) == []
    assert _cycle({m: {t for t in ts if not (m in PROGRAMS and t == "smtlock")} for m, ts in GRAPH.items()}) == []


def test_the_checks_find_an_import_pointing_up_and_a_cycle() -> None:
    assert upward({"smtlock._lock.lock": {"smtlock._sumatra.patches"}}) == [
        "smtlock._lock.lock -> smtlock._sumatra.patches"]
    assert upward({"smtlock._sumatra.patches": {"smtlock._lock.lock"}}) == []
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_harness_is_imported_by_the_cli_alone() -> None:
    importers = {module for module, targets in GRAPH.items() if layer_of(module) != "_harness"
                 and any(layer_of(target) == "_harness" for target in targets)}
    assert importers == {"smtlock.cli"}


def test_the_lower_layers_know_no_sumatra_or_django() -> None:
    found = {module: _imports(module)[1] & {"sumatra", "django"} for module in MODULES
             if layer_of(module) in NO_SUMATRA}
    assert {module: names for module, names in found.items() if names} == {}


def test_the_plugin_keeps_its_import_path() -> None:
    plugin = importlib.import_module("smtlock.plugin")
    from smtlock._tracking import plugin as implementation
    assert implementation.PLUGIN == plugin.__name__ == "smtlock.plugin"


def test_public_names_are_shown_where_users_import_them() -> None:
    assert smtlock.SMTLock.__module__ == smtlock.smt_logged.__module__ == "smtlock"
    for name in smtlock.__all__:
        public = getattr(smtlock, name)
        if isinstance(public, type) and issubclass(public, BaseException):
            assert public.__module__ == "smtlock.errors"  # pickles as before the folders
    error = smtlock.NoProjectError("no project")
    assert type(pickle.loads(pickle.dumps(error))) is smtlock.NoProjectError


def test_each_public_name_is_exported_by_one_module() -> None:
    owners: Dict[str, List[str]] = {}
    for name in MODULES:
        if name in PROGRAMS or name == "smtlock.__main__":
            continue
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        if name == "smtlock":
            continue
        for public in module.__all__:
            assert hasattr(module, public), f"{name}.__all__ names {public}, which it lacks"
            owners.setdefault(public, []).append(name)
    assert {name: where for name, where in owners.items() if len(where) > 1} == {}
    for public in smtlock.__all__:  # the package re-exports names its modules own
        assert public in owners or public == "__version__", public
