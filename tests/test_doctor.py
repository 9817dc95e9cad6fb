"""smtlock doctor on damage done by real processes: a poisoned PostgreSQL store, a torn project file,
a run killed mid-way, a lock holder killed, and a burst with jobs SIGKILLed in the middle."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_python

from smtlock._harness.burst import make_project, run_burst
from smtlock._harness.stress import run_mode

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")


def doctor(project: Path, *args: str) -> tuple:
    done = subprocess.run([SMTLOCK, "doctor", "--json", *args], cwd=project, capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, {f["check"]: f for f in json.loads(done.stdout)["findings"]}


PLAIN_WRITE = """
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
p = load_project()
p.new_record(parameters=SimpleParameterSet({"job": 999, "rec": 0}), main_file="main.py", label="after")
print("written")
"""
POISON = [  # the rows a racing get_or_create leaves: an identical copy, and a record sharing a label
    "INSERT INTO django_store_executable (path, name, version, options) "
    "SELECT path, name, version, options FROM django_store_executable LIMIT 1",
    "INSERT INTO django_store_platforminformation (architecture_bits, architecture_linkage, machine, "
    "network_name, ip_addr, processor, release, system_name, version) SELECT architecture_bits, "
    "architecture_linkage, machine, network_name, ip_addr, processor, release, system_name, version "
    "FROM django_store_platforminformation LIMIT 1",
]
COUNT = "SELECT count(*) FROM django_store_record"


@pytest.mark.burst
def test_poisoned_postgres_store_is_repaired(pg, pg_uri: str, tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", pg_uri)
    run_python(PLAIN_WRITE.replace('"after"', '"seed"'), project)  # one record while the store is clean
    burst = run_burst(project, "raw", 16, 2, tmp_path / "jobs")  # plain Sumatra, released together
    db = pg_uri.rsplit("/", 1)[1]
    for statement in POISON:  # make sure it is poisoned, however the race went
        pg.sql(statement, db)
    pg.sql("INSERT INTO django_store_record (label, reason, duration, executable_id, repository_id, main_file, "
           "version, parameters_id, launch_mode_id, datastore_id, input_datastore_id, outcome, timestamp, "
           "tags, diff, user, project_id, script_arguments, stdout_stderr, repeats) SELECT label, reason, "
           "duration, executable_id, repository_id, main_file, version, parameters_id, launch_mode_id, "
           "datastore_id, input_datastore_id, outcome, timestamp, tags, diff, \"user\", project_id, "
           "script_arguments, stdout_stderr, repeats FROM django_store_record LIMIT 1".replace(
               "diff, user,", "diff, \"user\","), db)
    rows_before = pg.sql(COUNT, db)[0][0]
    stuck = run_python(PLAIN_WRITE, project, check=False)
    assert "MultipleObjectsReturned" in stuck.stderr  # plain Sumatra can no longer write

    code, found = doctor(project)
    assert code == 1
    assert found["duplicate rows"]["status"] == "problem" and "Executable" in found["duplicate rows"]["detail"]
    assert found["shared labels"]["status"] == "problem"
    code, found = doctor(project, "--repair")
    assert code == 0 and found["duplicate rows"]["status"] == "repaired", found
    assert found["shared labels"]["status"] == "repaired"
    assert pg.sql(COUNT, db)[0][0] == rows_before  # no record row deleted
    labels = pg.sql("SELECT label FROM django_store_record", db)
    assert len(labels) == len(set(labels))
    assert run_python(PLAIN_WRITE, project).stdout.strip() == "written"  # plain Sumatra writes again
    assert doctor(project)[0] == 0 and len(burst["codes"]) == 16


RECORDS = """
from smtlock import current_label, smt_logged
@smt_logged
def simulate(x):
    return current_label()
print(" ".join(simulate(x) for x in range(3)))
"""


def test_torn_project_file_is_restored(project: Path) -> None:
    subprocess.run([SMTLOCK, "enable"], cwd=project, check=True, capture_output=True)  # a protected save
    copy = project / ".smt" / "project.last-good"
    settings = copy.read_bytes()
    labels = run_python(RECORDS, project).stdout.split()
    assert json.loads((project / ".smt" / "project").read_text())["_most_recent"] == labels[-1]
    assert copy.read_bytes() == settings  # no setting changed: the copy is not written for each record
    (project / ".smt" / "project").write_text('{"name": "stress", "record_st')  # torn as upstream tears it
    status = subprocess.run([SMTLOCK, "status"], cwd=project, capture_output=True, text=True)
    assert status.returncode == 2 and "smtlock doctor --repair" in status.stderr
    code, found = doctor(project)
    assert code == 1 and found["project file"]["status"] == "problem"
    assert (project / ".smt" / "project").read_text().endswith("record_st")  # without --repair: unchanged
    code, found = doctor(project, "--repair")
    assert code == 0 and found["project file"]["status"] == "repaired"
    loaded = run_python("from sumatra.projects import load_project; p = load_project(); "
                        "print(p.name, p.plugins, p.most_recent().label)", project)
    assert loaded.stdout.strip() == f"stress ['smtlock.plugin'] {labels[-1]}"  # the store's most recent


RUNNER = """
import sys
from smtlock import smt_logged
@smt_logged
def simulate(x):
    sys.__stdout__.write("started\\n"); sys.__stdout__.flush()
    sys.stdin.read()
simulate(1)
"""


def test_killed_run_is_tagged_killed_and_stale_holder_cleared(project: Path) -> None:
    (project / "runner.py").write_text(RUNNER)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", "runner.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "runner"], cwd=project, check=True)
    proc = subprocess.Popen([sys.executable, "runner.py"], cwd=project, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    assert doctor(project)[1]["running records"]["status"] == "ok"  # alive: nothing to repair
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    holder = subprocess.Popen([sys.executable, "-c", "import smtlock, sys; smtlock.SMTLock('.').acquire();"
                               "print('held', flush=True); sys.stdin.read()"], cwd=project,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    code, found = doctor(project)
    assert code == 1 and found["running records"]["status"] == "problem"
    assert found["lock holder"]["status"] == "warning" and str(holder.pid) in found["lock holder"]["detail"]
    code, found = doctor(project, "--repair")
    assert code == 0 and found["running records"]["status"] == "repaired"
    assert found["lock holder"]["status"] == "repaired"
    tags = run_python("from sumatra.projects import load_project; print(sorted(load_project().find_records()[0].tags))",
                      project).stdout
    assert "_killed_" in tags and "_running_" not in tags
    assert doctor(project)[0] == 0


@pytest.mark.burst
def test_burst_with_killed_jobs_loses_nothing_of_the_survivors(tmp_path: Path) -> None:
    result = run_mode("locked", "sqlite", 24, 3, tmp_path, kill=6)
    assert result["killed_jobs"] >= 1
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["failed_jobs"] == 0
    for row in result["_rows"]:  # whatever a killed job left is whole: a record with its parameters
        assert isinstance(row["job"], int) and isinstance(row["rec"], int)
    assert doctor(Path(result["project_dir"]))[0] == 0


def test_lost_project_file_advice_works(project: Path) -> None:
    """No good copy: the advice must be a command that works (smt init refuses while the file exists)."""
    run_python(PLAIN_WRITE, project)
    (project / ".smt" / "project").write_text("{torn")
    (project / ".smt" / "project.last-good").unlink(missing_ok=True)
    code, found = doctor(project)
    detail = found["project file"]["detail"]
    assert code == 1 and "the records are safe in the store" in detail
    command = detail.split("`")[1]
    assert command == (f"mv {project}/.smt/project {project}/.smt/project.broken && "
                       f"smt init -s {project}/.smt/records stress")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    subprocess.run(["bash", "-c", command], cwd=project, env=env, check=True, capture_output=True)
    labels = run_python("from sumatra.projects import load_project; print(load_project().get_labels())", project)
    assert labels.stdout.strip() == "['after']"


def test_read_only_smt_is_a_problem(project: Path) -> None:
    os.chmod(project / ".smt", 0o555)
    try:  # root ignores file modes: the doctor runs without that privilege
        done = subprocess.run(["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--",
                               SMTLOCK, "doctor", "--json"] if os.geteuid() == 0 else [SMTLOCK, "doctor", "--json"],
                              cwd=project, capture_output=True, text=True)
    finally:
        os.chmod(project / ".smt", 0o755)
    assert done.returncode == 1, done.stderr
    found = {f["check"]: f for f in json.loads(done.stdout)["findings"]}
    assert found["writable"]["status"] == "problem" and "is not writable here" in found["writable"]["detail"]


def test_a_store_tracked_by_git_is_a_problem_the_doctor_names_and_leaves_to_the_user(project: Path) -> None:
    from test_plugin import track_the_store
    assert doctor(project)[1]["version control"]["status"] == "ok"
    track_the_store(project)
    code, found = doctor(project, "--repair")
    check = found["version control"]
    tracked = subprocess.run(["git", "ls-files", ".smt"], cwd=project, capture_output=True, text=True).stdout.split()
    assert {".smt/project", ".smt/records"} <= set(tracked)  # the index is the user's: --repair leaves it
    assert code == 1 and check["status"] == "problem" and check["count"] == len(tracked)
    assert check["detail"].startswith(f"git tracks {', '.join(tracked)}: ")
    assert "git rm -r --cached .smt" in check["detail"]
