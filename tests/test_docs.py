"""The Python blocks of README.rst and of the guide in docs/, and the scripts in examples/, run and leave the
records they promise."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_python

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
RECORDS = """
import ast
import json
from sumatra.projects import load_project
records = load_project().find_records()
print(json.dumps([{"label": r.label, "params": r.parameters.as_dict(), "tags": sorted(r.tags),
                   "stdout": r.stdout_stderr} for r in records]))
"""


PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]


def code_blocks() -> list:
    """(page, script name, code) of every ``.. code-block:: python`` in the README and the guide."""
    found = []
    for page in PAGES:
        for block in re.findall(r"^\.\. code-block:: python\n\n((?:    .*\n|\n)+)", page.read_text(), re.M):
            code = textwrap.dedent(block)
            found.append((page.name, re.match(r"# (\S+\.py)", code).group(1), code))
    return found


BLOCKS = code_blocks()


def commit(project: Path, *files: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", *files], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "add " + " ".join(files)], cwd=project, check=True)


def records(project: Path) -> list:
    return json.loads(run_python(RECORDS, project).stdout)


def run(project: Path, *command: str) -> str:
    done = subprocess.run(list(command), cwd=project, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_every_block_is_tested() -> None:
    assert [(page, name) for page, name, _ in BLOCKS] == [
        ("README.rst", "simulate.py"), ("scripts.rst", "sweep.py"), ("scripts.rst", "simulate.py"),
        ("scripts.rst", "pool.py"), ("scripts.rst", "again.py")]


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=[f"{page}:{name}" for page, name, _ in BLOCKS])
def test_documented_block_runs(index: int, project: Path) -> None:
    _, name, block = BLOCKS[index]
    (project / name).write_text(block)
    commit(project, name)
    printed = run(project, sys.executable, name)
    found = records(project)
    if name == "pool.py":  # each call of the pool's sweep is one record, with the label it returned
        assert sorted(r["params"]["x"] for r in found) == list(range(8))
        assert sorted(r["label"] for r in found) == sorted(ast.literal_eval(printed))
        assert len({r["label"] for r in found}) == 8
        return
    assert len(found) == 1
    if name == "simulate.py":
        assert found[0]["params"] == {"x": 2, "y": 3} and "_finished_" in found[0]["tags"]
        assert f"record {found[0]['label']}: x=2, y=3" in found[0]["stdout"]
    else:
        assert found[0]["params"] == {"x": 1}


def test_example_sweep(project: Path) -> None:
    shutil.copy(ROOT / "examples" / "sweep.py", project)
    commit(project, "sweep.py")
    printed = run(project, sys.executable, "sweep.py", "0", "1", "2").split()
    found = records(project)
    assert sorted(r["label"] for r in found) == sorted(printed)
    assert sorted(r["params"]["x"] for r in found) == [0.0, 1.0, 2.0]


def test_example_decorated(project: Path) -> None:
    shutil.copy(ROOT / "examples" / "decorated.py", project)
    commit(project, "decorated.py")
    run(project, sys.executable, "decorated.py", "3")
    (found,) = records(project)
    assert found["params"] == {"x": 3, "steps": 100}
    assert {"example", "_finished_"} <= set(found["tags"])


@pytest.mark.burst
def test_example_burst_keeps_all_sixteen(project: Path) -> None:
    for name in ("sweep.py", "burst.sh"):
        shutil.copy(ROOT / "examples" / name, project)
    commit(project, "sweep.py", "burst.sh")
    run(project, "bash", "burst.sh")
    found = records(project)
    assert sorted(r["params"]["x"] for r in found) == [float(i) for i in range(1, 17)]
    assert len({r["label"] for r in found}) == 16


def test_readme_renders_without_warnings() -> None:
    import docutils.core
    import docutils.utils
    source = (ROOT / "README.rst").read_text()
    docutils.core.publish_string(source, writer="null",
                                 settings_overrides={"report_level": 2, "halt_level": 2})
