"""PostgreSQL stores against a real server started by the tests (see pgserver.py)."""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_python
from pgserver import Cluster, free_port

from smtlock._harness.burst import JOB_SCRIPT, make_project, start_together
from smtlock._harness.stress import run_mode

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SMTLOCK, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def census(uri: str, cwd: Path) -> dict:
    code = "import json, sys; from smtlock._harness.census import census; print(json.dumps(census(sys.argv[1], '.')))"
    done = subprocess.run([sys.executable, "-c", code, uri], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.burst
def test_locked_burst_keeps_every_record_and_makes_no_duplicate_rows(pg, tmp_path: Path) -> None:
    result = run_mode("locked", pg.uri("smt", "s3cret", "burst"), 32, 3, tmp_path)
    assert sorted((r["job"], r["rec"]) for r in result["_rows"]) == [(j, r) for j in range(32) for r in range(3)]
    assert sorted(r["label"] for r in result["_rows"]) == result["_labels_reported"]
    assert result["distinct_labels"] == 96 and result["failed_jobs"] == 0
    assert result["duplicate_rows"] == {}


def _jobs(project: Path, first: int, n: int, records: int, tmp: Path) -> list:
    return [[sys.executable, JOB_SCRIPT, "locked", str(project), str(first + i), str(records), "{ready}", "{go}",
             str(tmp / f"{first + i}.json")] for i in range(n)]


@pytest.mark.burst
def test_two_project_folders_share_only_the_database(pg_uri: str, tmp_path: Path) -> None:
    """As two hosts would: no common lock file, the same project name, the same database."""
    a, b = make_project(tmp_path / "host-a", pg_uri), make_project(tmp_path / "host-b", pg_uri)
    assert not (a / ".smt").samefile(b / ".smt")
    commands = _jobs(a, 0, 16, 3, tmp_path) + _jobs(b, 100, 16, 3, tmp_path)
    burst = start_together(commands, [tmp_path / f"{i}.log" for i in range(32)])
    assert burst["codes"] == {i: 0 for i in range(32)}
    counted = census(pg_uri, a)
    pairs = sorted((r["job"], r["rec"]) for r in counted["records"])
    assert pairs == [(j, r) for j in [*range(16), *range(100, 116)] for r in range(3)]
    reported = sorted(label for path in tmp_path.glob("*.json") for label in json.loads(path.read_text())["labels"])
    assert sorted(r["label"] for r in counted["records"]) == reported and len(set(reported)) == 96
    assert counted["duplicate_rows"] == {}


@pytest.mark.burst
def test_many_jobs_on_a_server_with_few_connections(tmp_path: Path) -> None:
    """A job holds no connection between writes and retries 'too many clients' within its timeout."""
    small = Cluster(max_connections=10)  # 7 for ordinary roles: superuser_reserved_connections = 3
    try:
        small.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
        result = run_mode("locked", small.uri("smt", "s3cret", "few"), 40, 2, tmp_path)
    finally:
        small.stop()
    assert result["lost"] == 0 and result["failed_jobs"] == 0 and result["found"] == 80
    assert result["duplicate_rows"] == {}


HOLDER = """
import sys, smtlock
lock = smtlock.SMTLock(sys.argv[1]); lock.acquire()
print("held", flush=True); sys.stdin.read()
"""


def test_advisory_lock_excludes_across_folders_and_dies_with_its_holder(pg_uri: str, tmp_path: Path) -> None:
    a, b = make_project(tmp_path / "a", pg_uri), make_project(tmp_path / "b", pg_uri)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(a)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waiter = ("import sys, smtlock\ntry:\n    smtlock.SMTLock(sys.argv[1]).acquire(timeout=float(sys.argv[2]))\n"
                  "    print('acquired')\nexcept smtlock.LockTimeout as err:\n    print(err)\n")
        blocked = subprocess.run([sys.executable, "-c", waiter, str(b), "0.5"], capture_output=True, text=True)
        assert "advisory lock" in blocked.stdout and f"pid {holder.pid} on " in blocked.stdout
        assert "s3cret" not in blocked.stdout
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        freed = subprocess.run([sys.executable, "-c", waiter, str(b), "30"], capture_output=True, text=True)
        assert freed.stdout.strip() == "acquired", freed.stdout + freed.stderr
    finally:
        holder.kill()
        holder.wait()


MAKE_RECORDS = """
import smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
p = load_project()
for i in range(3):
    record = p.new_record(parameters=SimpleParameterSet({"i": i}), main_file="main.py", label=f"run{i}")
    record.tags.add(f"tag{i}")
    p.add_record(record)
"""
LIST = """
import json
from sumatra.projects import load_project
p = load_project()
print(json.dumps([p.record_store._db_file.startswith("postgres"),
                  sorted([r.label, r.parameters.as_dict()["i"]] for r in p.find_records())]))
"""


def test_smtlock_postgres_moves_a_sqlite_project(pg, project: Path) -> None:
    run_python(MAKE_RECORDS, project)
    sqlite_file = project / ".smt" / "records"
    before = hashlib.sha256(sqlite_file.read_bytes()).hexdigest()
    uri = pg.uri("smt", "s3cret", "moved")
    dry = cli("postgres", uri, "--dry-run", cwd=project)
    assert dry.returncode == 0 and "would copy 3 records" in dry.stdout and "s3cret" not in dry.stdout
    assert '"db_file": "' + str(sqlite_file) in (project / ".smt" / "project").read_text()
    done = cli("postgres", uri, cwd=project)
    assert done.returncode == 0, done.stderr
    assert "created database 'moved'" in done.stdout and "all 3 in" in done.stdout and "s3cret" not in done.stdout
    on_pg, records = json.loads(run_python(LIST, project).stdout)
    assert on_pg and records == [["run0", 0], ["run1", 1], ["run2", 2]]
    tags = "print(sorted((r.label, sorted(r.tags)) for r in load_project().find_records()))"
    assert run_python("from sumatra.projects import load_project; " + tags, project).stdout.strip() == str(
        [(f"run{i}", ["_initialized_", f"tag{i}"]) for i in range(3)])  # before: no tags arrived
    assert hashlib.sha256(sqlite_file.read_bytes()).hexdigest() == before  # the old store is the backup
    again = cli("postgres", uri, cwd=project)
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.parametrize("case", ["unreachable", "wrong password", "may not create"])
def test_bad_postgres_input_is_one_line_exit_2_and_masked(pg, project: Path, case: str) -> None:
    if case == "unreachable":
        uri, expect = f"postgres://smt:s3cret@127.0.0.1:{free_port()}/x", "cannot reach PostgreSQL"
    elif case == "wrong password":
        uri, expect = pg.uri("smt", "wrong-s3cret", "x"), "refused the login"
    else:
        pg.sql("DO $$ BEGIN CREATE ROLE weak LOGIN PASSWORD 's3cret'; EXCEPTION WHEN duplicate_object THEN END $$")
        uri, expect = pg.uri("weak", "s3cret", "not_there"), "may not create database"
    for args in (["postgres", uri], ["stress", "--jobs", "1", "--records", "1", "--store", uri]):
        done = cli(*args, cwd=project)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert expect in done.stderr and "s3cret" not in done.stderr and ":***@" in done.stderr


@pytest.mark.burst
def test_a_server_restart_mid_burst_loses_nothing_and_fails_no_job(tmp_path: Path) -> None:
    """A job used to die with "server closed the connection unexpectedly", its later records never
    written (188 of 192 kept). Now a write whose connection broke is rolled back and done again."""
    import threading
    import time

    from smtlock._harness.burst import run_burst
    from smtlock._harness.census import recount
    cluster = Cluster()
    try:
        cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
        cluster.sql("CREATE DATABASE restart OWNER smt")
        uri = cluster.uri("smt", "s3cret", "restart")
        project = make_project(tmp_path / "project", uri)
        burst = {}
        thread = threading.Thread(target=lambda: burst.update(run_burst(project, "locked", 32, 6, tmp_path / "jobs")))
        thread.start()

        def written() -> int:
            try:
                return cluster.sql("SELECT count(*) FROM django_store_record", db="restart")[0][0]
            except Exception:  # the tables are not made yet
                return 0
        while thread.is_alive() and written() < 40:
            time.sleep(0.05)
        assert thread.is_alive(), "the burst ended before the restart"
        cluster.restart()
        thread.join()
        rows = recount(uri, project)["records"]
    finally:
        cluster.stop()
    assert burst["codes"] == {job: 0 for job in range(32)}, [r for r in burst["reports"] if r.get("error")][:2]
    assert sorted((r["job"], r["rec"]) for r in rows) == [(j, r) for j in range(32) for r in range(6)]
    assert len({r["label"] for r in rows}) == 192


@pytest.mark.burst
def test_writes_stay_serialized_when_the_lock_connection_is_cut(pg_uri: str, pg, tmp_path: Path) -> None:
    """The lock lives on a connection of its own; if it is declared dead while its holder still writes
    (a partition that heals), the next holder starts at once. Every lock connection is cut here, again
    and again (every 20 ms), during a burst from two folders: the write lock taken inside each write's own
    transaction still serializes them, a holder whose hold was cut has its write refused (LockLost) and
    the job runs it again (no duplicate rows, unique labels, every record)."""
    import threading
    a, b = make_project(tmp_path / "host-a", pg_uri), make_project(tmp_path / "host-b", pg_uri)
    commands = _jobs(a, 0, 12, 3, tmp_path) + _jobs(b, 100, 12, 3, tmp_path)
    done = threading.Event()
    cuts = []

    def cut() -> None:  # the fault injector: terminate every connection that holds or waits for the lock
        while not done.is_set():
            cuts.extend(pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name LIKE 'smtlock pid %' OR application_name = 'smtlock waiting'"))
            done.wait(0.02)  # every 5 ms, most holds were cut before their write: 126 s of retries

    cutter = threading.Thread(target=cut)
    cutter.start()
    try:
        burst = start_together(commands, [tmp_path / f"{i}.log" for i in range(24)])
    finally:
        done.set()
        cutter.join()
    assert len(cuts) > 0
    assert burst["codes"] == {i: 0 for i in range(24)}, [(tmp_path / f"{i}.log").read_text()[-800:] for i in range(2)]
    counted = census(pg_uri, a)
    assert sorted((r["job"], r["rec"]) for r in counted["records"]) == [
        (j, r) for j in [*range(12), *range(100, 112)] for r in range(3)]
    assert len({r["label"] for r in counted["records"]}) == 72
    assert counted["duplicate_rows"] == {}


FORK_WHILE_HOLDING = """
import os, sys, smtlock
lock = smtlock.SMTLock(sys.argv[1])
lock.acquire()
if os.fork() == 0:  # the child exits normally: Python closes what it inherited
    sys.exit(0)
os.wait()
print("child exited", flush=True)
sys.stdin.read()
"""


def test_a_forked_child_never_ends_its_parents_server_session(pg_uri: str, tmp_path: Path) -> None:
    """The child inherits the connection that holds the advisory lock; closing it there would tell
    the server the session ended, freeing the parent's lock while the parent writes."""
    from smtlock._lock.backends import PostgresBackend
    (tmp_path / ".smt").mkdir()
    (tmp_path / ".smt" / "project").write_text(json.dumps({"record_store": {"db_file": pg_uri}}))
    parent = subprocess.Popen([sys.executable, "-c", FORK_WHILE_HOLDING, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "child exited"
        other = PostgresBackend(pg_uri)
        assert not other.try_acquire(), "the parent's lock was freed by its child"
    finally:
        parent.kill()
        parent.wait()


WRITE_ONE = """
import smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
print(load_project().new_record(parameters=SimpleParameterSet({"i": 1}), main_file="main.py").label)
"""


def lock_connection_of(pid: int) -> str:
    """SQL: the connection process ``pid`` tries (or holds) the store's advisory lock on, by its name."""
    return f"application_name LIKE 'smtlock pid {pid} on %'"


SET_UP = "import smtlock; from sumatra.projects import load_project; load_project().record_store._get_models()"


def test_a_write_connects_before_it_waits_for_the_store(pg, pg_uri: str, tmp_path: Path) -> None:
    """A write opens its database connection once this host's file lock is held and before it waits
    for the store's advisory lock (held here by another project folder, as by another host): the
    connection costs more than the write, and no other host should wait while it is made. Before,
    it connected after taking the store's lock."""
    import time
    db = pg_uri.rsplit("/", 1)[1]
    a, b = make_project(tmp_path / "a", pg_uri), make_project(tmp_path / "b", pg_uri)
    run_python(SET_UP, a)  # the store's set-up (its label index) is done, as after its first use
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(a)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    writer = None
    try:
        assert holder.stdout.readline().strip() == "held"
        writer = subprocess.Popen([sys.executable, "-c", WRITE_ONE], cwd=b, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        # the connection that tries the store's lock, once it has run a statement (a try, or the rollback
        # after one): it is opened first, then the write's own, then the lock is tried
        waiting = (f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' "
                   f"AND {lock_connection_of(writer.pid)} AND query <> ''")
        deadline = time.monotonic() + 120
        while writer.poll() is None and pg.sql(waiting)[0][0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the writer waits for the store's advisory lock
        assert writer.poll() is None, writer.communicate()
        assert pg.sql(waiting)[0][0] == 1, "no connection of the writer's waits for the store's lock"
        django = f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND application_name = ''"
        assert pg.sql(django)[0][0] == 1  # the write's own connection, open before the store's lock
        holder.stdin.close()
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    finally:
        for process in (holder, writer):
            if process is not None:
                process.kill()
                process.wait()
    assert run_python(LIST, b).stdout.count(out.strip()) == 1


def test_a_write_whose_connection_died_while_it_waited_is_made_again(tmp_path: Path) -> None:
    """The write connects before it waits for the store's lock; a server restart during that wait
    breaks the connection, and its first statement fails. Django then reconnects on its own while it
    cleans up, so the broken connection must be told by the error, not by the connection's state
    afterwards: the write is made again and the job succeeds (before: "server closed the connection
    unexpectedly", the record lost)."""
    import time
    cluster = Cluster()
    holder = writer = None
    try:
        cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
        cluster.sql("CREATE DATABASE restart OWNER smt")
        uri = cluster.uri("smt", "s3cret", "restart")
        a, b = make_project(tmp_path / "a", uri), make_project(tmp_path / "b", uri)
        run_python(MAKE_RECORDS, b)  # tables made, rows stored
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(a)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        writer = subprocess.Popen([sys.executable, "-c", WRITE_ONE], cwd=b, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        # once it has tried the lock: the write's own connection is open by then
        waiting = f"SELECT count(*) FROM pg_stat_activity WHERE {lock_connection_of(writer.pid)} AND query <> ''"
        deadline = time.monotonic() + 120
        while writer.poll() is None and cluster.sql(waiting)[0][0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # until the writer, connected, waits for the store's advisory lock
        assert writer.poll() is None, writer.communicate()
        assert cluster.sql(waiting)[0][0] == 1, "no connection of the writer's waits for the store's lock"
        cluster.restart()  # cuts every session: the holder's lock is freed, the writer's connection dies
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        listed = run_python(LIST, b).stdout
    finally:
        for process in (holder, writer):
            if process is not None:
                process.kill()
                process.wait()
        cluster.stop()
    assert listed.count(out.strip()) == 1


def _no_password_in_the_project(project: Path, password: str) -> None:
    for name in ("project", "project.last-good"):
        path = project / ".smt" / name
        assert not path.exists() or password not in path.read_text(), name


def test_a_password_given_to_smtlock_postgres_stays_out_of_the_project(pg, project: Path,
                                                                      password_file: Path) -> None:
    """Before: the URI, password and all, in .smt/project and .smt/project.last-good (0644 in a 0755
    home: readable by every local user), and in `smt info`; and in the command line of the process
    that copies the records (which `ps` shows every local user)."""
    pg.sql("DO $$ BEGIN CREATE ROLE kept LOGIN PASSWORD 'k33p-s3cret' CREATEDB; "
           "EXCEPTION WHEN duplicate_object THEN END $$")
    started = project.parent / "started"  # each command line smtlock starts, from an audit hook
    code = ("import sys; sys.addaudithook(lambda event, args: event == 'subprocess.Popen' and "
            f"open({str(started)!r}, 'a').write(repr(args[1]) + '\\n')); "
            "from smtlock.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "postgres", pg.uri("kept", "k33p-s3cret", "kept_apart")],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "smtlock._sumatra.copying" in started.read_text() and "k33p-s3cret" not in started.read_text()
    assert f"is kept in {password_file} (readable by you only)" in done.stdout
    assert "k33p-s3cret" not in done.stdout + done.stderr
    _no_password_in_the_project(project, "k33p-s3cret")
    assert f"postgres://kept@127.0.0.1:{pg.port}/kept_apart" in (project / ".smt" / "project").read_text()
    assert (password_file.stat().st_mode & 0o777) == 0o600 and "k33p-s3cret" in password_file.read_text()
    listed = subprocess.run([os.path.join(os.path.dirname(sys.executable), "smt"), "list"], cwd=project,
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr


def test_a_project_moved_by_an_earlier_version_has_its_password_moved_out(pg, new_project, tmp_path: Path,
                                                                         monkeypatch) -> None:
    """Also where the password file has a line libpq would take for that user already (an old
    password): the project's, which works, takes its place (before: stripped and kept nowhere)."""
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "pgpass"))
    (tmp_path / "pgpass").write_text("*:*:*:old:an-old-password\n")
    (tmp_path / "pgpass").chmod(0o600)
    pg.sql("DO $$ BEGIN CREATE ROLE old LOGIN PASSWORD '0ld-s3cret' CREATEDB; "
           "EXCEPTION WHEN duplicate_object THEN END $$")
    pg.sql("DROP DATABASE IF EXISTS moved_before")
    pg.sql("CREATE DATABASE moved_before OWNER old")
    project = new_project(pg.uri("old", "0ld-s3cret", "moved_before"))  # plain Sumatra's smt init -s URI
    assert "0ld-s3cret" in (project / ".smt" / "project").read_text()
    info = subprocess.run([os.path.join(os.path.dirname(sys.executable), "smt"), "info"], cwd=project,
                          capture_output=True, text=True)
    assert "0ld-s3cret" in info.stdout  # plain Sumatra prints it
    load = "import smtlock; from sumatra.projects import load_project; print(load_project().record_store)"
    first = run_python(load, project)
    assert first.stderr.strip().splitlines() == [
        f"smtlock: moved the password of postgres://old:***@127.0.0.1:{pg.port}/moved_before out of "
        f"{project / '.smt' / 'project'} into {os.environ['PGPASSFILE']} (readable by you only)"]
    assert first.stdout.strip() == f"Django (postgres://old:***@127.0.0.1:{pg.port}/moved_before)"
    _no_password_in_the_project(project, "0ld-s3cret")
    again = run_python(load + "; from smtlock import smt_logged", project)
    assert again.stderr == ""
    run_python(MAKE_RECORDS, project)  # the store works without the password in the project
    assert json.loads(run_python(LIST, project).stdout)[1] == [["run0", 0], ["run1", 1], ["run2", 2]]
