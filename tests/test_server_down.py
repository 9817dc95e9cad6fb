"""Jobs and commands while the store's PostgreSQL server is down: jobs wait for it holding no lock,
give up in one line without running their simulation, a finished run waits as long as it takes, and
read-only commands say within seconds that it is down."""

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from pgserver import Cluster

from smtlock._harness.burst import make_project, run_burst
from smtlock._harness.census import recount

BIN = os.path.dirname(sys.executable)
HINT = "if it is your own server: smtlock server start"
#: a simulation that notes it ran; given $FIFOS (two FIFOs outside the project, which Sumatra scans),
#: it says it started on the first and waits until the second is closed
MAIN = """import os
open("simulated", "a").write("ran\\n")
if os.environ.get("FIFOS"):
    started, go = os.environ["FIFOS"].split(os.pathsep)
    with open(started, "w") as fifo:
        fifo.write("started\\n")
    with open(go) as fifo:
        fifo.read()
"""


@pytest.fixture
def server() -> Iterator[Cluster]:
    """A server of the test's own (the tests stop and kill it), with role smt and database d; removed
    at the end, also when the test failed while it was down."""
    cluster = Cluster()
    try:
        cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
        cluster.sql("CREATE DATABASE d OWNER smt")
        yield cluster
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:  # it was down: stop() removed its folder all the same
            pass


def _stop(cluster: Cluster) -> None:
    cluster._run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "stop")


def _project(cluster: Cluster, tmp_path: Path) -> Path:
    """A project on the server's database with `smtlock enable` done and MAIN as its main.py."""
    project = make_project(tmp_path / "project", cluster.uri("smt", "s3cret", "d"), plugin=True)
    (project / "main.py").write_text(MAIN)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run(git + ["commit", "-qam", "main"], cwd=project, check=True, capture_output=True)
    return project


def _env(**extra: str) -> dict:
    """The test's environment now ($PGPASSFILE is set by a session fixture), smt on the PATH."""
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], **extra}


def _smt(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    # timeout: only so that a hang fails the test in a minute, not in pytest's ten
    return subprocess.run(["smt", *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=120)


def test_a_job_gives_up_in_one_line_and_its_simulation_is_not_run(server: Cluster, tmp_path: Path) -> None:
    """Before: a ~60-line Django traceback, after SMTLOCK_TIMEOUT (300 s by default)."""
    project = _project(server, tmp_path)
    _stop(server)
    done = _smt("run", "params.txt", "job=1", cwd=project, SMTLOCK_TIMEOUT="2")
    assert done.returncode == 1 and "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: PostgreSQL at postgres://smt") and HINT in lines[0]
    assert "is not reachable (Connection refused; waited 2 s)" in lines[0] and "s3cret" not in done.stdout
    assert "waiting up to 2 s (SMTLOCK_TIMEOUT)" in done.stderr and "s3cret" not in done.stderr
    assert not (project / "simulated").exists()


def test_read_only_commands_say_at_once_that_the_server_is_down(server: Cluster, tmp_path: Path) -> None:
    """Before: `smt list` and `smtlock doctor` silent for 300 s, then a traceback (the doctor's hint
    blamed .smt's permissions); `smtlock status` did not mention the server."""
    project = _project(server, tmp_path)
    _stop(server)
    listed = _smt("list", cwd=project)  # no SMTLOCK_TIMEOUT: a reader waits READ_WAIT_S (5 s) only
    assert listed.returncode == 1 and listed.stderr == "", listed.stderr
    assert listed.stdout.startswith("Error: PostgreSQL at postgres://smt") and HINT in listed.stdout
    assert len(listed.stdout.strip().splitlines()) == 1
    doctor = subprocess.run([os.path.join(BIN, "smtlock"), "doctor"], cwd=project, capture_output=True, text=True,
                            timeout=120)
    assert doctor.returncode == 1 and doctor.stderr == "", doctor.stderr
    server_line = [line for line in doctor.stdout.splitlines() if line.split()[1:2] == ["server"]]
    assert len(server_line) == 1 and server_line[0].startswith("problem") and HINT in server_line[0]
    assert "is not reachable (Connection refused)" in server_line[0] and ".smt" not in server_line[0]
    status = subprocess.run([os.path.join(BIN, "smtlock"), "status"], cwd=project, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if line.startswith("server "))
    assert "not reachable (Connection refused)" in line and HINT in line and f":{server.port}/d" in line
    server.restart()
    status = subprocess.run([os.path.join(BIN, "smtlock"), "status"], cwd=project, capture_output=True, text=True)
    assert f":{server.port}/d: reachable\n" in status.stdout and "s3cret" not in status.stdout


def test_a_finished_run_waits_for_the_server_as_long_as_it_takes(server: Cluster, tmp_path: Path) -> None:
    """The server stops while the simulation runs; its record is saved once the server is back, long
    after SMTLOCK_TIMEOUT (before: the finished run's record was dropped after it, with a traceback)."""
    project = _project(server, tmp_path)
    started, go = tmp_path / "started.fifo", tmp_path / "go.fifo"
    for fifo in (started, go):
        os.mkfifo(fifo)
    job = subprocess.Popen(["smt", "run", "params.txt", "job=1"], cwd=project, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env=_env(SMTLOCK_TIMEOUT="1", FIFOS=f"{started}{os.pathsep}{go}"))
    try:
        with open(started) as fifo:  # the simulation runs: its running save is done
            assert fifo.read() == "started\n"
        _stop(server)
        with open(go, "w"):
            pass  # the simulation ends, and its record waits for the server
        notice = _line_with("waiting as long as it takes", job.stderr)
        assert HINT in notice and "s3cret" not in notice
        server.restart()
        out, err = job.communicate(timeout=120)
    finally:
        job.kill()
        job.wait()
    assert job.returncode == 0 and "Traceback" not in err, err
    rows = recount(server.uri("smt", "s3cret", "d"), project)["records"]
    assert [row["job"] for row in rows] == [1] and "_finished_" in rows[0]["tags"]


def _line_with(text: str, stream) -> str:
    """The first line of ``stream`` that contains ``text``; fails at the end of the stream."""
    seen = []
    for line in stream:
        if text in line:
            return line
        seen.append(line)
    pytest.fail(f"no line with {text!r} before the end:\n{''.join(seen)[-3000:]}")


def _children(pid: int) -> List[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


def _dead(pid: int) -> bool:
    """Gone, or a zombie (this machine's init reaps no orphans: a killed server's processes stay so)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.burst
@pytest.mark.skipif(os.geteuid() != 0, reason="the user's own server runs as another user, which needs root")
def test_kill_9_of_your_own_server_mid_burst_then_smtlock_server_start(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """8 `smt run` jobs on a project moved to `smtlock server`; its postmaster is killed with SIGKILL
    once the first record is stored. Every job that has not finished then waits for the server
    holding no lock (the project's lock is free once each has said so), and `smtlock server start`
    runs at once: 8 of 8 jobs finish, each record stored once, no traceback. Before: jobs waited
    holding the lock, 7 of 8 failed after 300 s with a traceback; and `server start` said "already
    running" while the killed postmaster was a zombie."""
    from pgserver import free_port
    from test_server import as_user, give, make_home
    home = make_home()
    try:
        port = str(free_port())
        for step in (["server", "init", "--port", port], ["server", "start"]):
            done = as_user(home, *step)
            assert done.returncode == 0, done.stderr
        project = make_project(home / "project", plugin=True)
        give(project, 65534)
        moved = as_user(home, "postgres", "--server", cwd=project)
        assert moved.returncode == 0, moved.stderr
        folder = home / ".local" / "share" / "smtlock" / "server"
        uri = f"postgres://smtlock:{(folder / 'role-password').read_text().strip()}@127.0.0.1:{port}/sumatra"
        monkeypatch.setenv("PGPASSFILE", str(home / ".pgpass"))  # the jobs run as root, as that user
        for name, value in (("GIT_CONFIG_COUNT", "1"), ("GIT_CONFIG_KEY_0", "safe.directory"),
                            ("GIT_CONFIG_VALUE_0", "*"), ("SMTLOCK_TIMEOUT", "60")):
            monkeypatch.setenv(name, value)  # SMTLOCK_TIMEOUT: the jobs' wait; the start is at once
        jobs, burst = tmp_path / "jobs", {}
        thread = threading.Thread(target=lambda: burst.update(run_burst(project, "smt-run", 8, 1, jobs)))
        thread.start()

        def stored() -> int:
            import psycopg2
            try:
                with psycopg2.connect(uri.replace("postgres://", "postgresql://")) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM django_store_record")
                    return int(cur.fetchone()[0])
            except psycopg2.Error:  # the tables are not made yet
                return 0
        while thread.is_alive() and stored() < 1:
            time.sleep(0.01)
        assert thread.is_alive(), "the burst ended before the kill"
        postmaster = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        processes = [postmaster, *_children(postmaster)]
        os.kill(postmaster, signal.SIGKILL)
        deadline = time.monotonic() + 120  # only so that a broken run fails instead of hanging
        while not all(_dead(pid) for pid in processes):  # its backends end when they see it die
            assert time.monotonic() < deadline, "the server's processes did not end"
            time.sleep(0.01)

        def settled(job: int) -> bool:  # finished, or said that it waits for the server
            log = jobs / f"job-{job}.log"
            return (jobs / f"job-{job}.json").exists() or (log.exists() and "is not reachable" in log.read_text())
        while not all(settled(job) for job in range(8)):
            assert thread.is_alive(), "the burst ended before every job settled"
            time.sleep(0.05)
        with open(project / ".smt" / "smtlock.lock", "a") as lock:  # nobody holds it while they wait
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(lock, fcntl.LOCK_UN)
        started = as_user(home, "server", "start")
        assert started.returncode == 0, started.stderr
        thread.join()
        rows = recount(uri, project)["records"]
    finally:
        as_user(home, "server", "stop")
        if "thread" in locals():
            thread.join()  # the jobs end (they give up within $SMTLOCK_TIMEOUT) before their folder goes
        shutil.rmtree(home)
    logs = {job: (jobs / f"job-{job}.log").read_text() for job in range(8)}
    assert burst["codes"] == {job: 0 for job in range(8)}, [log[-1500:] for log in logs.values()]
    assert not [job for job, log in logs.items() if "Traceback" in log]
    assert sorted((row["job"], row["rec"]) for row in rows) == [(job, 0) for job in range(8)]
    assert len({row["label"] for row in rows}) == 8 and all("_finished_" in row["tags"] for row in rows)
