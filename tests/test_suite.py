"""The suite's own rule for bursts: every test that releases many processes at once is marked ``burst``,
so that bursts run one at a time (tests/conftest.py) however many xdist workers run the suite."""

import ast
from pathlib import Path

from conftest import marked_bursts

TESTS = Path(__file__).resolve().parent
#: the calls that start processes together
STARTS = {"run_mode", "run_burst", "start_together"}
#: tests that start a few processes together (fewer than 8, or 8 that each write one line): not bursts
SMALL = {
    "test_readers_never_see_a_torn_project_file",  # 4 writers and 2 readers of the project file
    "test_overlap_verifier_over_processes_released_together",  # 4 lock holders
    "test_children_forked_from_a_parent_that_used_the_lock_exclude",  # one parent and its children
    "test_the_lock_excludes_through_a_transaction_pooler_and_strands_nothing",  # 4 lock holders
    "test_writers_released_together_lose_no_line",  # 8 writers of one line each to a password file
    "test_the_lease_excludes_across_hosts",  # 4 lease holders
}


def _tests() -> list:
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                found.append((path.name, node))
    return found


def _jobs(node: ast.AST) -> int:
    """The number after "--jobs" in a command written out as constants (0 if there is none)."""
    words = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
    after = words[words.index("--jobs") + 1] if "--jobs" in words[:-1] else ""
    return int(after) if isinstance(after, str) and after.isdigit() else 0


def _starts_processes_together(function: ast.FunctionDef) -> bool:
    """Calls the harness's bursts, or runs ``smtlock stress`` with 8 jobs or more."""
    for node in ast.walk(function):
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if name in STARTS:
                return True
            words = {n.value for n in ast.walk(node) if isinstance(n, ast.Constant)}
            if "stress" in words and _jobs(node) >= 8:
                return True
    return False


def test_the_scan_sees_the_suite() -> None:
    """The scan finds the tests, their marks and their bursts (the rule below would pass on nothing)."""
    functions = {function.name: function for _, function in _tests()}
    assert len(functions) > 150
    assert ("test_plugin.py", "test_forty_smt_runs_from_a_shell_loop") in marked_bursts()
    assert _starts_processes_together(functions["test_the_harness_cuts_a_host_off_mid_burst"])  # stress, 8 jobs
    assert _starts_processes_together(functions["test_locked_pattern_keeps_every_record"])  # run_mode
    assert not _starts_processes_together(functions["test_stress_never_writes_into_a_project"])  # 2 jobs
    assert not _starts_processes_together(functions["test_lock_timeout"])


def test_the_scheduler_knows_every_burst() -> None:
    """xdist's scheduler reads the marks from the sources (conftest.marked_bursts): each mark is on a
    test function of a module, where it looks, not on a module or a class."""
    written = sum(path.read_text().count("@pytest.mark.burst\n") for path in TESTS.glob("test_*.py")
                  if path.name != "test_suite.py")
    assert ("test_pools.py", "test_pool_sweep_records_every_call_once") in marked_bursts()
    assert len(marked_bursts()) == written
    assert all("pytest.mark.burst" not in line for path in TESTS.glob("test_*.py")
               for line in path.read_text().splitlines() if line.startswith("pytestmark"))


def test_every_test_that_starts_processes_together_is_marked_burst() -> None:
    bursts = marked_bursts()
    unmarked = [f"{file}::{function.name}" for file, function in _tests()
                if _starts_processes_together(function) and function.name not in SMALL
                and (file, function.name) not in bursts]
    assert unmarked == [], "mark these @pytest.mark.burst (or list them in SMALL, saying why)"


def test_no_small_test_is_marked_burst() -> None:
    both = [test for _, test in marked_bursts() if test in SMALL]
    assert both == [] and SMALL <= {function.name for _, function in _tests()}, both
