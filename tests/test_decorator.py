"""@smt_logged outside a burst: failure path, ParameterSet arguments, output data, the label."""

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import outlives_its_timeout, run_python

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


def committed(project: Path, name: str, text: str) -> None:
    """Write the script ``name`` into the project and commit it (Sumatra records only committed code)."""
    (project / name).write_text(text)
    subprocess.run(["git", "add", name], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", name], cwd=project,
                   check=True)


def last_json(project: Path, *args: str) -> dict:
    """Run a Python script in the project; what its last printed line says (JSON)."""
    done = subprocess.run([sys.executable, *args], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_failure_is_recorded_and_reraised_and_parameter_sets_are_kept(project: Path) -> None:
    committed(project, "sim.py", SIM)
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


RUN = '''
import sys
from smtlock import smt_logged

@smt_logged
def simulate(x):
    sys.__stdout__.write("running\\n"); sys.__stdout__.flush()
    sys.stdin.readline()  # the test lets the run finish once another process holds the lock
    return x * 2

print("result", simulate(21))
'''
HOLD = "import smtlock, sys; smtlock.SMTLock('.').acquire(); print('held', flush=True); sys.stdin.read()"


def test_a_finished_run_waits_for_the_lock_whatever_the_timeout(project: Path) -> None:
    """With SMTLOCK_TIMEOUT=1 and the lock held elsewhere, the run's last write used to raise
    LockTimeout: the result was lost and the record stayed _running_."""
    committed(project, "run.py", RUN)
    run = subprocess.Popen([sys.executable, "run.py"], cwd=project, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "SMTLOCK_TIMEOUT": "1"})
    holder = None
    try:
        assert run.stdout.readline().strip() == "running", run.stderr.read()
        holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=project, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        run.stdin.write("\n")
        run.stdin.flush()
        out = outlives_its_timeout(run, holder)
        assert out.strip() == "result 42"
    finally:
        for proc in (run, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    (record,) = json.loads(run_python(REPORT, project).stdout).values()
    assert "_finished_" in record["tags"] and "_running_" not in record["tags"]


def test_a_store_tracked_by_git_raises_one_clear_error(project: Path) -> None:
    """Upstream: a bare AssertionError from Record.register. The decorator raises TrackedStoreError,
    whose one line names the files and the fix, at the first call that finds the tracked store
    changed (the first call's record is written after its code was found unchanged)."""
    from test_plugin import TRACKED, track_the_store
    track_the_store(project)
    done = run_python("""
from smtlock import TrackedStoreError, smt_logged

@smt_logged
def f():
    return 1
print(f())
try:
    f()
except TrackedStoreError as err:
    print(err)
""", project)
    assert done.stdout.splitlines() == ["1", TRACKED.removeprefix("Error: ").format(".smt/project, .smt/records are")]


WATCHED = '''
import json, subprocess, sys
import smtlock
from smtlock._lock import lock as smtlock_lock
from smtlock._sumatra import patches
writes, labels = [], []
_write = patches._write
smtlock_lock.enable_stats()


def counted(project, record, claim):  # each store write the record path makes, with the tags it stores
    writes.append(sorted(record.tags))
    return _write(project, record, claim)


patches._write = counted
READ = """
import json, sys
from sumatra.projects import load_project
r = load_project().get_record(sys.argv[1])
print(json.dumps([sorted(r.tags), len(r.platforms), r.version]))
"""


@smtlock.smt_logged
def task(x):
    labels.append(smtlock.current_label())
    read = [sys.executable, "-c", READ, labels[-1]]  # plain Sumatra, while the call runs
    return json.loads(subprocess.run(read, capture_output=True, text=True, check=True).stdout)


seen = [task(1), task(2)]
print(json.dumps({"seen": seen, "writes": writes, "last": labels[-1],
                  "locks": [purpose for purpose, _, _ in smtlock_lock.collected_stats() if purpose != "migrate"],
                  "most_recent": json.load(open(".smt/project"))["_most_recent"]}))
'''


def test_a_call_is_stored_once_running_and_once_ended(project: Path) -> None:
    """Two store writes a call, not upstream's three: the first stores the record running, with its
    provenance (plain Sumatra reads it so while the call runs), the second its end. Before: a first
    write stored it "initialized", before its provenance was gathered."""
    committed(project, "watched.py", WATCHED)
    found = last_json(project, "watched.py")
    version = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                             check=True).stdout.strip()
    for tags, platforms, seen_version in found["seen"]:
        assert tags == ["_running_"] and platforms == 1 and seen_version == version
    assert found["writes"] == [["_running_"], ["_finished_"]] * 2
    # the lock is taken for the two writes only: the project file, which then names the call as the
    # most recent record, is written atomically (before: a third hold of the lock, for every call)
    assert found["locks"] == ["save_record"] * 4
    assert found["most_recent"] == found["last"]


REUSED = '''
import json, os, subprocess, sys, threading
import sumatra.projects
from smtlock import smt_logged
loads = []
load_project = sumatra.projects.load_project


def counted(path=None):
    loads.append(path)
    return load_project(path)


sumatra.projects.load_project = counted


@smt_logged
def task(x):
    return len(loads)


seen = [task(1), task(2)]
smt = os.path.join(os.path.dirname(sys.executable), "smt")
subprocess.run([smt, "configure", "--datapath", "Data2"], check=True)  # another process changes a setting
seen.append(task(3))
in_thread = threading.Thread(target=lambda: seen.append(task(4)))
in_thread.start()
in_thread.join()
print(json.dumps({"seen": seen, "most_recent": json.load(open(".smt/project"))["_most_recent"]}))
'''
STORES = """
import json
from sumatra.projects import load_project
print(json.dumps([(r.parameters.as_dict()["x"], [r.label, r.datastore.root]) for r in load_project().find_records()]))
"""


def test_a_thread_loads_the_project_again_only_when_its_settings_change(project: Path) -> None:
    """@smt_logged loads the project for its thread's first call and again when a setting in the project
    file changed (here the data path, by `smt configure` in another process); each record is as a
    fresh load would make it. Before: the project was loaded for every call."""
    committed(project, "reused.py", REUSED)
    found = last_json(project, "reused.py")
    assert found["seen"] == [1, 1, 2, 3]  # loads before each call's function ran: a thread loads its own
    records = dict(json.loads(run_python(STORES, project).stdout))
    assert {x: os.path.basename(root) for x, (_, root) in records.items()} == \
        {1: "Data", 2: "Data", 3: "Data2", 4: "Data2"}
    assert found["most_recent"] == records[4][0]  # the project file names the last call's record


ONE_CALL = """
import json
from smtlock import smt_logged
from smtlock._sumatra import versioncontrol


@smt_logged
def task(x):
    return x


task(1)
print(json.dumps(versioncontrol.counts))
"""


def test_a_process_of_one_call_asks_git_nothing_an_earlier_one_asked(project: Path) -> None:
    """A job array of scripts, one decorated call each: git's answers kept in the project's memo by the
    first process serve the next one, its project's load included (before: 7 git processes a job)."""
    committed(project, "one_call.py", ONE_CALL)
    counts = [last_json(project, "one_call.py") for _ in range(2)]
    assert counts[0]["asked"] > 0 and counts[0]["states"] >= 1  # (one more where the venv is in a repository)
    assert counts[1]["asked"] == 0 and counts[1]["states"] == 0 and counts[1]["reused"] > 0


NOTES = '''
import json, os, signal, socket, sys
from smtlock import current_label, smt_logged

@smt_logged
def look(x):
    note = os.path.join(".smt", "smtlock-running", current_label())
    st = os.stat(note)
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)  # its note and the file it links stay behind
    return [open(note).read(), st.st_ino, st.st_nlink]

seen = [look(1), look(2)]
print(json.dumps({"seen": seen, "after": os.listdir(os.path.join(".smt", "smtlock-running")),
                  "pid": os.getpid(), "host": socket.gethostname()}))
if sys.argv[1:] == ["die"]:
    look("die")
'''


def _sources(project: Path) -> list:
    return sorted(name for name in os.listdir(project / ".smt") if name.startswith("smtlock-running."))


def test_a_running_records_note_links_one_file_of_its_process(project: Path) -> None:
    """While a call runs, ``.smt/smtlock-running/<label>`` says "pid host" (smtlock doctor tells by it a
    killed process's record from a running one): a hard link to one file of the process, not a file
    made for each record (before: a new inode each record, ~0.2 ms of a call on a busy disk). The
    file goes when its process exits; after one killed, with the next write of the project file."""
    committed(project, "notes.py", NOTES)
    found = last_json(project, "notes.py")
    (text1, ino1, links1), (text2, ino2, links2) = found["seen"]
    assert text1 == text2 == f"{found['pid']} {found['host']}\n"
    assert ino1 == ino2 and links1 == links2 == 2  # the process's file and the record's note
    assert found["after"] == [] and _sources(project) == []  # removed at the end of each call, then at exit
    killed = subprocess.run([sys.executable, "notes.py", "die"], cwd=project, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    left = json.loads(killed.stdout.splitlines()[-1])
    assert len(_sources(project)) == 1 and f".{left['pid']}." in _sources(project)[0]
    notes = os.listdir(project / ".smt" / "smtlock-running")
    assert len(notes) == 1 and (project / ".smt" / "smtlock-running" / notes[0]).read_text().split() == [
        str(left["pid"]), left["host"]]  # the record the killed process ran: its note stays for the doctor
    last_json(project, "notes.py")
    assert _sources(project) == []  # the killed process's file, removed by a write of .smt/project
    assert os.listdir(project / ".smt" / "smtlock-running") == notes
