"""@smt_logged outside a burst: failure path, ParameterSet arguments, output data, the label."""

import json
import subprocess
from pathlib import Path

from conftest import run_python

SIM = '''
import os, sys
from sumatra.parameters import SimpleParameterSet
from smtlock import current_label, smt_logged

@smt_logged
def explode(x, *, factor=2):
    print("about to fail", file=sys.stderr)
    raise ValueError(f"bad x={x}")

@smt_logged(project=".", reason="from a parameter set")
def from_set(params, note="n"):
    os.makedirs("Data", exist_ok=True)
    with open(os.path.join("Data", f"out-{current_label()}.txt"), "w") as f:
        f.write(str(params["a"]))
    return current_label()
'''

REPORT = """
import json
from sumatra.projects import load_project
rs = load_project().find_records()
print(json.dumps({r.reason or "none": {"label": r.label, "tags": sorted(r.tags), "outcome": r.outcome,
  "params": r.parameters.as_dict(), "out": [k.path for k in r.output_data], "stdout": r.stdout_stderr}
  for r in rs}))
"""


def test_failure_is_recorded_and_reraised_and_parameter_sets_are_kept(project: Path) -> None:
    (project / "sim.py").write_text(SIM)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", "sim.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "sim"], cwd=project, check=True)
    done = run_python("""
import sim
from sumatra.parameters import SimpleParameterSet
try:
    sim.explode(5)
except ValueError as err:
    print("re-raised", err)
print("label", sim.from_set(SimpleParameterSet({"a": 7})))
""", project)
    assert "re-raised bad x=5" in done.stdout
    assert "about to fail" in done.stderr  # still shown on the terminal
    label = done.stdout.split("label ")[1].strip()
    records = json.loads(run_python(REPORT, project).stdout)
    failed, ok = records["none"], records["from a parameter set"]
    assert "_failed_" in failed["tags"] and "ValueError: bad x=5" in failed["outcome"]
    assert failed["params"] == {"x": 5, "factor": 2} and "about to fail" in failed["stdout"]
    assert ok["label"] == label and "_finished_" in ok["tags"]
    assert ok["params"] == {"a": 7}  # the ParameterSet argument, as it is
    assert ok["out"] == [f"out-{label}.txt"]
