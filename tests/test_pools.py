"""Process pools run @smt_logged functions: every call is recorded exactly once, with its own label."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROGRAMS, run_python

CALLS, WORKERS = 8, 4
RECORDS = """
import json
from sumatra.projects import load_project
print(json.dumps([{"label": r.label, "x": r.parameters.as_dict()["x"], "tags": sorted(r.tags),
                   "stdout": r.stdout_stderr} for r in load_project().find_records()]))
"""


@pytest.mark.burst
@pytest.mark.parametrize("launcher", ["futures-spawn", "futures-fork", "mp-pool", "joblib"])
def test_pool_sweep_records_every_call_once(project: Path, launcher: str) -> None:
    shutil.copy(PROGRAMS / "pool_sweep.py", project)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", "pool_sweep.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "sweep"], cwd=project, check=True)
    done = subprocess.run([sys.executable, "pool_sweep.py", launcher, str(CALLS), str(WORKERS)], cwd=project,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    returned = json.loads(re.search(r"labels (\[.*\])", done.stdout).group(1))  # the workers print too
    rows = json.loads(run_python(RECORDS, project).stdout)
    assert sorted(row["x"] for row in rows) == list(range(CALLS))  # each call once, none lost
    assert sorted(row["label"] for row in rows) == sorted(returned)  # the labels the calls were given
    assert len(set(returned)) == CALLS
    for row in rows:
        assert {"pool", "_finished_"} <= set(row["tags"]) and f"x={row['x']}" in row["stdout"]
