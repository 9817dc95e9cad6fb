"""Bursts of real OS processes released together by a start barrier; the store is recounted after."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from smtlock._harness.burst import start_together
from smtlock._harness.stress import run_mode

JOBS, RECORDS = 32, 3
TIMESTAMP_LABEL = re.compile(r"^\d{8}-\d{6}(_\d+)?$")  # Sumatra's default label, plus our suffix


@pytest.mark.burst
@pytest.mark.parametrize("store", ["sqlite", "shelve"])
def test_locked_pattern_keeps_every_record(tmp_path: Path, store: str) -> None:
    """The user's pattern (new_record, then add_record + save in SMTLock) from 32 processes at once."""
    result = run_mode("locked", store, JOBS, RECORDS, tmp_path)
    rows = result["_rows"]
    assert sorted((row["job"], row["rec"]) for row in rows) == [
        (job, rec) for job in range(JOBS) for rec in range(RECORDS)]
    labels = [row["label"] for row in rows]
    assert sorted(labels) == result["_labels_reported"]  # exactly the labels the jobs were given
    assert len(set(labels)) == JOBS * RECORDS
    assert all(TIMESTAMP_LABEL.match(label) for label in labels), labels
    assert result["failed_jobs"] == 0 and result["errors"] == {}
    assert result["duplicate_rows"] == {}


@pytest.mark.burst
def test_decorator_burst_records_each_call(tmp_path: Path) -> None:
    result = run_mode("decorator", "sqlite", JOBS, 1, tmp_path)
    rows = result["_rows"]
    assert sorted((row["job"], row["rec"]) for row in rows) == [(job, 0) for job in range(JOBS)]
    assert len({row["label"] for row in rows}) == JOBS
    for row in rows:
        assert "_finished_" in row["tags"]
        assert row["duration"] is not None and row["duration"] >= 0
        assert f"job {row['job']} record 0 total" in row["stdout"]
    assert result["failed_jobs"] == 0


WRITER = """
import os, sys
import smtlock
from sumatra.projects import load_project
project = load_project()
os.write(int(sys.argv[1]), b"r"); os.read(int(sys.argv[2]), 1)
for i in range(150):
    project.description = f"written {i} times by {os.getpid()} " + "x" * (i * 40)
    project.save()
"""

READER = """
import json, os, sys
path = ".smt/project"
os.write(int(sys.argv[1]), b"r"); os.read(int(sys.argv[2]), 1)
bad = 0
for i in range(3000):
    with open(path) as f:
        text = f.read()
    try:
        json.loads(text)
    except ValueError:
        bad += 1
print("torn reads:", bad)
sys.exit(1 if bad else 0)
"""


def test_readers_never_see_a_torn_project_file(project: Path, tmp_path: Path) -> None:
    """Upstream writes .smt/project in place; with smtlock a reader sees the old or the new file."""
    commands = [[sys.executable, "-c", WRITER, "{ready}", "{go}"] for _ in range(4)]
    commands += [[sys.executable, "-c", READER, "{ready}", "{go}"] for _ in range(2)]
    logs = [tmp_path / f"p{i}.log" for i in range(len(commands))]
    burst = start_together(commands, logs, cwd=project)
    outputs = [log.read_text() for log in logs]
    assert burst["codes"] == {i: 0 for i in range(len(commands))}, outputs
    assert outputs[4].strip() == outputs[5].strip() == "torn reads: 0"


#: in a pid namespace of its own (nothing else forks there): a burst of one job, which ends; then a
#: process made to take the job's pid (ns_last_pid), and a killer told that the job holds the lock
PID_TAKEN = r"""
import subprocess, sys
from pathlib import Path
from smtlock._harness.burst import Killer, start_together
from smtlock._lock.backends import Holder

work = Path(sys.argv[1])
started = []
job = [sys.executable, "-c", "import os, sys; os.write(int(sys.argv[1]), b'r'); os.read(int(sys.argv[2]), 1)",
       "{ready}", "{go}"]
burst = start_together([job], [work / "job.log"], on_start=started.append)
pid = burst["pids"][0]
with open("/proc/sys/kernel/ns_last_pid", "w") as last:
    last.write(str(pid - 1))
other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
assert other.pid == pid, (other.pid, pid)
holder = work / "holder"
holder.write_text(str(Holder(pid, "here", "now")))
killer = Killer(started[0], 1, holder)
killer.start()
killer.join()
other.stdin.close()
print("the other process ended with", other.wait())
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a pid namespace needs root")
def test_a_job_that_ended_is_never_killed_through_its_pid_taken_by_another_process(tmp_path: Path) -> None:
    """The killer of ``smtlock stress --kill`` (and ``--cut-host``'s) signals a job only until the burst
    reaps it: pid_max is 32768 on many systems (here too), and a burst makes thousands of processes.
    Before: the killer SIGKILLed whatever process had the pid of the job it chose (the lock's holder
    file may name a job that has ended), and --cut-host waited for it as for one of its jobs."""
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", PID_TAKEN,
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "the other process ended with 0"
