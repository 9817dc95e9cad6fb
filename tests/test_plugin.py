"""The Sumatra plugin: unmodified `smt` commands in a project after `smtlock enable`."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMTWEB, outlives_its_timeout

from smtlock._harness.burst import start_together
from smtlock._harness.census import recount

BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"]}
SHELL_LOOP = """
pids=()
for i in $(seq 0 39); do
  smt run params.txt job=$i rec=0 > run-$i.log 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo "failed jobs: $failed"
"""


def smtlock_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "smtlock"), *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.burst
def test_forty_smt_runs_from_a_shell_loop(project: Path) -> None:
    assert smtlock_cli("enable", cwd=project).returncode == 0
    done = subprocess.run(["bash", "-c", SHELL_LOOP], cwd=project, env=ENV, capture_output=True, text=True)
    assert done.stdout.strip() == "failed jobs: 0", [p.read_text()[-500:] for p in project.glob("run-*.log")]
    rows = recount("sqlite", project)["records"]
    assert sorted(row["job"] for row in rows) == list(range(40))
    assert len({row["label"] for row in rows}) == 40
    assert all("_finished_" in row["tags"] for row in rows)
    assert not list(project.glob("*.param"))  # each job removed its own parameter file only


def test_enable_twice_disable_and_status(project: Path) -> None:
    first, second = smtlock_cli("enable", cwd=project), smtlock_cli("enable", cwd=project)
    assert first.returncode == second.returncode == 0
    assert "already enabled" in second.stdout
    plugins = json.loads((project / ".smt" / "project").read_text())["plugins"]
    assert plugins == ["smtlock.plugin"]
    status = smtlock_cli("status", cwd=project).stdout
    assert "plugin     enabled" in status and "smtlock.lock (free)" in status
    assert ", journal wal" in status  # as the README says, from the moment smtlock is enabled
    assert "needs smtlock installed" in first.stdout and "smtlock disable" in first.stdout
    assert smtlock_cli("disable", cwd=project).returncode == 0
    assert json.loads((project / ".smt" / "project").read_text())["plugins"] == []


def test_enable_outside_a_project(tmp_path: Path) -> None:
    done = smtlock_cli("enable", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == f"smtlock: error: no Sumatra project at {tmp_path} (run `smt init`)"


WEB_READER = SMTWEB + """
client.get("/stress/")
os.write(int(sys.argv[1]), b"r"); os.read(int(sys.argv[2]), 1)
codes = [client.get("/stress/").status_code for _ in range(60)]
print(sorted(set(codes)), len(codes))
"""


@pytest.mark.burst
def test_web_interface_lists_records_while_a_burst_writes(project: Path, tmp_path: Path) -> None:
    assert smtlock_cli("enable", cwd=project).returncode == 0
    first = subprocess.run(["smt", "run", "params.txt", "job=99"], cwd=project, env=ENV, capture_output=True)
    assert first.returncode == 0  # the web view needs the project to have a record
    job = str(Path(sys.modules["smtlock._harness.burst"].__file__).with_name("job.py"))
    commands = [[sys.executable, job, "smt-run", str(project), str(i), "2", "{ready}", "{go}",
                 str(tmp_path / f"j{i}.json")] for i in range(16)]
    commands.append([sys.executable, "-c", WEB_READER, "{ready}", "{go}"])
    logs = [tmp_path / f"log{i}" for i in range(len(commands))]
    burst = start_together(commands, logs, cwd=project)
    assert burst["codes"] == {i: 0 for i in range(len(commands))}, logs[-1].read_text()[-2000:]
    assert logs[-1].read_text().strip().splitlines()[-1] == "[200] 60"


WAIT = """
open("running", "w").close()
with open("go") as fifo:  # blocks until the test writes
    fifo.read()
print("simulated")
"""
HOLD = "import smtlock, sys; smtlock.SMTLock('.').acquire(); print('held', flush=True); sys.stdin.read()"


def test_a_finished_smt_run_waits_for_the_lock_whatever_the_timeout(project: Path) -> None:
    """SMTLOCK_TIMEOUT=1 and the lock held elsewhere when the simulation ends: the run's last writes
    wait instead of raising LockTimeout (which left the record _running_ and its outputs unrecorded)."""
    assert smtlock_cli("enable", cwd=project).returncode == 0
    (project / "wait.py").write_text(WAIT)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", "wait.py"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "wait"], cwd=project, check=True)
    os.mkfifo(project / "go")
    run = subprocess.Popen(["smt", "run", "-m", "wait.py", "params.txt"], cwd=project, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**ENV, "SMTLOCK_TIMEOUT": "1"})
    holder = None
    try:
        while run.poll() is None and not (project / "running").exists():
            time.sleep(0.01)
        holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=project, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        with open(project / "go", "w") as fifo:
            fifo.write("go")
        outlives_its_timeout(run, holder)
    finally:
        for proc in (run, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    (row,) = recount("sqlite", project)["records"]
    assert "_finished_" in row["tags"] and "simulated" in row["stdout"]


TRACKED = ("Error: {} tracked by git, and Sumatra changes .smt with each record, so its check that the code is "
           "unchanged fails: run `git rm -r --cached .smt`, add `.smt/` to .gitignore, and commit")


def track_the_store(project: Path) -> None:
    """What `git add .` after `smt init` does."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", ".smt"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "the store too"], cwd=project, check=True)


def test_a_store_tracked_by_git_fails_smt_run_with_one_line_that_says_what_to_do(project: Path) -> None:
    """`git add .` after `smt init`, then `smtlock enable` changes .smt/project. Upstream: a traceback
    ending "Code has changed, please commit your changes" (the code has not), or a bare AssertionError
    from Record.register once the record's write changed the store."""
    track_the_store(project)
    assert smtlock_cli("enable", cwd=project).returncode == 0
    done = subprocess.run(["smt", "run", "params.txt"], cwd=project, env=ENV, capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1] == TRACKED.format(".smt/project, .smt/records are")
    subprocess.run(["git", "rm", "-rq", "--cached", ".smt"], cwd=project, check=True)
    (project / ".gitignore").write_text(".smt/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["add", ".gitignore"], cwd=project, check=True)
    subprocess.run(git + ["commit", "-qm", "untrack the store"], cwd=project, check=True)
    again = subprocess.run(["smt", "run", "params.txt"], cwd=project, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr  # the fix it names works
