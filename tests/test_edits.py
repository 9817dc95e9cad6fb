"""What a person adds to a record while its job runs (a tag, a comment, a reason) is kept by the job's
later saves, on every store, from ``smt run`` under the plugin and from the API."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_python

from smtlock._harness.burst import make_project

BIN = os.path.dirname(sys.executable)


def _env() -> dict:
    """This interpreter's smt first; read at each call (the session's $PGPASSFILE is set by a fixture)."""
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}

#: a job that says it runs (a file), then waits for the test on a FIFO
WAIT = 'open("running", "w").close()\nopen("go").read()\n'


def _smt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["smt", *args], cwd=cwd, env=_env(), capture_output=True, text=True)


@pytest.fixture(params=["sqlite", "shelve", "postgres"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param != "postgres":
        return request.param
    return request.getfixturevalue("pg_uri")


def _waiting_project(tmp_path: Path, store: str) -> Path:
    project = make_project(tmp_path / "p", store, plugin=True)
    (project / "wait.py").write_text(WAIT)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", "wait.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "wait"], cwd=project, check=True)
    os.mkfifo(project / "go")
    return project


def _while_it_runs(project: Path, *args: str) -> subprocess.Popen:
    """Start ``smt run`` of wait.py and return once its job runs (its record saved as _running_)."""
    run = subprocess.Popen(["smt", "run", "-m", "wait.py", *args, "params.txt"], cwd=project, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while run.poll() is None and not (project / "running").exists():
        time.sleep(0.01)
    assert run.poll() is None, run.communicate()
    return run


def _finish(project: Path, run: subprocess.Popen) -> None:
    with open(project / "go", "w") as fifo:
        fifo.write("go")
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err


RECORD = """
from sumatra.projects import load_project
project = load_project()
(label,) = project.record_store.labels(project.name)
record = project.get_record(label)
print(label); print(sorted(record.tags)); print(repr(record.outcome)); print(repr(record.reason))
"""


def _stored(project: Path) -> list:
    return run_python(RECORD, project).stdout.splitlines()


def test_a_tag_and_a_comment_added_while_the_job_runs_are_kept(tmp_path: Path, store: str) -> None:
    """The issue's repro: `smt tag` and `smt comment` on a running record, then the job ends. Upstream's
    last save wrote the job's own copy over them (tags `_finished_` only, the outcome empty)."""
    project = _waiting_project(tmp_path, store)
    run = _while_it_runs(project, "--reason", "why")
    try:
        label = _smt("list", cwd=project).stdout.split()[0]
        assert _smt("tag", "keep-me", label, cwd=project).returncode == 0
        assert _smt("comment", label, "a note", cwd=project).returncode == 0
    finally:
        _finish(project, run)
    assert _stored(project) == [label, "['_finished_', 'keep-me']", "'a note'", "'why'"]
    assert _smt("list", "keep-me", cwd=project).stdout.split() == [label]


#: a script's own record: it sets its outcome while a person comments on it (between its two saves)
API = """
import smtlock, subprocess, sys
from sumatra.projects import load_project
project = load_project()
record = project.new_record(parameters={{}}, main_file="main.py")
record.tags.update({{"mine", "draft"}})
project.save_record(record)
subprocess.run([sys.executable, "-c", {person!r}, record.label], check=True)
record.outcome = {outcome!r}
record.tags.discard("mine")
record.tags.add("done")
project.save_record(record)
print(record.label)
"""
PERSON = """
import sys
from sumatra.projects import load_project
import smtlock
project = load_project()
project.add_tag(sys.argv[1], "by-hand")
project.remove_tag(sys.argv[1], "draft")
project.add_comment(sys.argv[1], "a note")
"""


@pytest.mark.parametrize("outcome", ["", "converged"])
def test_a_scripts_own_save_keeps_what_a_person_added(project: Path, outcome: str) -> None:
    """The API, on the default store: the script's second save applies its own changes (a tag removed,
    one added, an outcome) to what the store holds, where the person added a tag, removed one and
    commented. When both set the outcome, both texts are kept, the person's first."""
    label = run_python(API.format(person=PERSON, outcome=outcome), project).stdout.split()[-1]
    expected = "'a note\\nconverged'" if outcome else "'a note'"
    assert _stored(project) == [label, "['_initialized_', 'by-hand', 'done']", expected, "''"]


DELETE = """
import subprocess, sys
from sumatra.projects import load_project
import smtlock
project = load_project()
record = project.new_record(parameters={}, main_file="main.py")
subprocess.run(["smt", "delete", record.label], check=True)
record.tags.add("done")
project.save_record(record)
"""


def test_a_record_deleted_while_its_job_runs_is_stored_again_and_says_so(project: Path) -> None:
    """Deleting a running record does not lose the finished run: its next save stores it again, with
    one line that says so and how to delete it once the job has ended."""
    done = run_python(DELETE, project, env=_env())
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("smtlock:")]
    label = _stored(project)[0]
    assert line == (f"smtlock: record {label} was deleted while its job ran; the job stored it again "
                    f"(`smt delete {label}` once the job has ended removes it)")
    assert _stored(project)[1] == "['_initialized_', 'done']"


#: a job that says it runs, then waits at a gate the test holds shut (an exclusive flock)
GATED = ('import fcntl, os\nopen(f"running-{os.getpid()}", "w").close()\n'
         'fcntl.flock(open("gate"), fcntl.LOCK_SH)\n')
#: a person at a terminal: `smt tag` and `smt comment` (Sumatra's own command functions) on every record
PERSON_AT_A_TERMINAL = """
import sys
from sumatra import commands
from sumatra.projects import load_project
phase = sys.argv[1]
project = load_project()
for label in sorted(project.record_store.labels(project.name)):
    commands.tag([f"{phase}-tag", label])
    print("tag", label, f"{phase}-tag", flush=True)
    commands.comment([label, f"{phase} note"])
    print("comment", label, f"{phase} note", flush=True)
"""
EVERY_RECORD = """
import json
from sumatra.projects import load_project
project = load_project()
print(json.dumps({r.label: [sorted(r.tags), r.outcome, r.parameters.as_dict()["job"]]
                  for r in project.find_records()}))
"""
JOBS = 32


@pytest.mark.burst
def test_a_person_tagging_and_commenting_through_a_burst_loses_nothing(tmp_path: Path) -> None:
    """32 `smt run` jobs held running; a person tags and comments every running record, then again while
    all 32 jobs end together (the gate opens): every tag and comment the commands reported done is kept,
    every record once, each finished."""
    import fcntl
    import json
    project = make_project(tmp_path / "p", "sqlite", plugin=True)
    (project / "gated.py").write_text(GATED)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", "gated.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "gated"], cwd=project, check=True)
    gate = open(project / "gate", "w")
    fcntl.flock(gate, fcntl.LOCK_EX)
    runs = [subprocess.Popen(["smt", "run", "-m", "gated.py", "params.txt", f"job={n}"], cwd=project, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in range(JOBS)]
    person = None
    try:
        while len(list(project.glob("running-*"))) < JOBS and all(run.poll() is None for run in runs):
            time.sleep(0.05)
        assert all(run.poll() is None for run in runs), [run.communicate() for run in runs if run.poll()]
        first = subprocess.run([sys.executable, "-c", PERSON_AT_A_TERMINAL, "running"], cwd=project, env=_env(),
                               capture_output=True, text=True)
        assert first.returncode == 0, first.stderr
        person = subprocess.Popen([sys.executable, "-c", PERSON_AT_A_TERMINAL, "ending"], cwd=project, env=_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        fcntl.flock(gate, fcntl.LOCK_UN)  # every job ends now, while the person goes on
        outcomes = [run.communicate(timeout=600) for run in runs]
        assert [run.returncode for run in runs] == [0] * JOBS, [o for o, run in zip(outcomes, runs) if run.returncode]
        second_out, second_err = person.communicate(timeout=600)
        assert person.returncode == 0, second_err
    finally:
        gate.close()
        for proc in [*runs, person]:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    reported = [line.split(" ", 2) for line in (first.stdout + second_out).splitlines()]
    assert len(reported) == 4 * JOBS
    stored = json.loads(run_python(EVERY_RECORD, project).stdout)
    assert sorted(job for _, _, job in stored.values()) == list(range(JOBS))  # every record, once
    for action, label, value in reported:
        tags, outcome, _ = stored[label]
        assert (value in tags) if action == "tag" else (value in outcome.splitlines()), (action, label, stored[label])
    assert all("_finished_" in tags for tags, _, _ in stored.values())


STALE = """
import json, sys, smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
project = load_project()
record = project.new_record(parameters=SimpleParameterSet({"x": 1}), main_file="main.py")  # stored
print(record.label, flush=True)
sys.stdin.readline()              # meanwhile: a person's comment, and the executable's row merged away
record.outcome = "mine"
record.script_arguments = "again"  # more than a run's end changes: the whole save, which uses that row
project.save_record(record)
print(json.dumps(project.get_record(record.label).outcome), flush=True)
"""


def test_a_write_made_again_merges_a_persons_edits_once(project: Path) -> None:
    """A write that is rolled back and made again (here: it used a row ``smtlock doctor --repair``
    merged away, and failed on its foreign key) starts again from the record as it was: a person's
    comment made meanwhile is merged once, not once per attempt."""
    import sqlite3
    writer = subprocess.Popen([sys.executable, "-c", STALE], cwd=project, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        label = writer.stdout.readline().strip()
        assert _smt("comment", label, "theirs", cwd=project).returncode == 0
        db = sqlite3.connect(str(project / ".smt" / "records"))
        with db:  # a copy of the executable's row with a lower id: the repair keeps the copy
            db.execute("DROP INDEX smtlock_unique_django_store_executable")
            columns = [row[1] for row in db.execute("PRAGMA table_info(django_store_executable)") if row[1] != "id"]
            db.execute(f"INSERT INTO django_store_executable (id, {', '.join(columns)}) "
                       f"SELECT 0, {', '.join(columns)} FROM django_store_executable WHERE id = 1")
        db.close()
        repair = subprocess.run([os.path.join(BIN, "smtlock"), "doctor", "--repair"], cwd=project,
                                capture_output=True, text=True)
        assert "merged 1 extra rows (Executable 1)" in repair.stdout, repair.stdout + repair.stderr
        out, err = writer.communicate("\n", timeout=120)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    assert json.loads(out) == "theirs\nmine"
