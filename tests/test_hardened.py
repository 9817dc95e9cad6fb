"""A store no writer can poison: once smtlock has opened a clean store, Sumatra's get_or_create tables
have unique indexes, so plain-Sumatra processes racing on it (no smtlock loaded) find each other's
rows instead of adding copies, and the store stays readable by plain Sumatra and by smtweb."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMTWEB, run_python
from test_doctor import POISON, doctor

from smtlock._harness.burst import PROJECT_NAME, make_project, run_burst
from smtlock._harness.census import recount
from smtlock._sumatra.uniques import UNIQUE_MODELS

JOBS, RECORDS = 12, 2
FIRST_CONNECTION = """
import smtlock
from sumatra.projects import load_project
project = load_project()
print(len(project.record_store.list(project.name)))
"""
WEB = SMTWEB + """
label = project.record_store.labels(project.name)[0]
print(client.get(f"/{project.name}/").status_code, client.get(f"/{project.name}/{label}/").status_code)
"""


def plain_smt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    code = "import sys; from sumatra.cli import smt; sys.argv[0] = 'smt'; sys.exit(smt())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)


def plain_burst_on_hardened_store(project: Path, store: str, tmp_path: Path) -> None:
    """smtlock opens the store once (it adds the indexes), then only plain Sumatra writes to it."""
    assert run_python(FIRST_CONNECTION, project).stdout.strip() == "0"
    code, found = doctor(project)
    assert code == 0 and found["unique indexes"]["status"] == "ok", found["unique indexes"]
    burst = run_burst(project, "raw", JOBS, RECORDS, tmp_path / "jobs")  # no smtlock in these processes
    errors = {r.get("error") for r in burst["reports"]} - {None}
    counted = recount(store, project)
    assert counted["duplicate_rows"] == {}
    labels = [r["label"] for r in counted["records"]]
    assert labels and len(labels) == len(set(labels))  # no label on two rows (plain Sumatra: the later wins)
    # no job found the store poisoned (MultipleObjectsReturned); plain Sumatra's own torn project file
    # (it writes .smt/project in place) may still fail a job: smtlock fixes that only where it is loaded
    assert errors <= {"JSONDecodeError"}, [r.get("message") for r in burst["reports"]]
    listed = plain_smt("list", cwd=project)
    assert listed.returncode == 0 and set(listed.stdout.split()) == {r["label"] for r in counted["records"]}
    assert run_python(WEB, project).stdout.split() == ["200", "200"]  # smtweb's list and a record's page


@pytest.mark.burst
def test_plain_sumatra_burst_leaves_no_duplicate_on_a_hardened_sqlite_store(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", "sqlite")
    plain_burst_on_hardened_store(project, "sqlite", tmp_path)


@pytest.mark.burst
def test_plain_sumatra_burst_leaves_no_duplicate_on_a_hardened_postgres_store(pg, pg_uri: str,
                                                                               tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", pg_uri)
    plain_burst_on_hardened_store(project, pg_uri, tmp_path)
    db = pg_uri.rsplit("/", 1)[1]
    names = {row[0] for row in pg.sql("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'smtlock_unique_%'", db)}
    assert len(names) == len(UNIQUE_MODELS)
    with pytest.raises(Exception, match="smtlock_unique_django_store_executable"):
        pg.sql(POISON[0], db)  # even the superuser cannot add a copy
    big = "".join(f"{i:x}" for i in range(20000))  # a diff longer than a btree entry may be: its md5
    insert = ("INSERT INTO django_store_dependency (name, path, version, diff, source, module) "
              f"VALUES ('d', '/d', '1', '{big}', NULL, 'python')")
    pg.sql(insert, db)
    with pytest.raises(Exception, match="smtlock_unique_django_store_dependency"):
        pg.sql(insert, db)  # the same again, NULL source and all


def test_doctor_hardens_a_poisoned_store_only_once_repaired(project: Path) -> None:
    """A store with duplicates refuses the index: the doctor says so, and --repair merges, then adds."""
    run_python("""
        from sumatra.projects import load_project
        from sumatra.parameters import SimpleParameterSet
        load_project().new_record(parameters=SimpleParameterSet({"job": 0}), main_file="main.py", label="seed")
    """, project)  # plain Sumatra: no index yet
    import sqlite3
    with sqlite3.connect(project / ".smt" / "records") as db:
        for statement in POISON:
            db.execute(statement)
    code, found = doctor(project)  # smtlock opens the store: the index is refused, nothing fails
    assert code == 1 and found["duplicate rows"]["status"] == "problem"
    check = found["unique indexes"]
    assert check["status"] == "warning" and "Executable" in check["detail"] and "merged" in check["detail"]
    assert check["count"] == 1  # the poisoned table (the seed has no platform row); the clean ones: at once
    code, found = doctor(project, "--repair")
    assert code == 0 and found["unique indexes"]["status"] == "repaired"
    assert found["unique indexes"]["count"] == 1
    assert doctor(project)[1]["unique indexes"]["status"] == "ok"
    with sqlite3.connect(project / ".smt" / "records") as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(POISON[0])
    done = plain_smt("list", "--long", cwd=project)
    assert done.returncode == 0 and "seed" in done.stdout
    assert json.loads((project / ".smt" / "project").read_text())["name"] == PROJECT_NAME
    assert os.path.exists(project / ".smt" / "records")


def test_a_busy_table_is_not_waited_for_and_hardened_later(pg, pg_uri: str, tmp_path: Path) -> None:
    """A write holding a table (here: an open transaction that wrote to it) is not waited for by a job's
    first connection; the index is added by a later connection, once the table is free."""
    import psycopg2
    project = make_project(tmp_path / "p", pg_uri)
    db = pg_uri.rsplit("/", 1)[1]
    holder = psycopg2.connect(host=str(pg.dir), port=pg.port, user="postgres", dbname=db)
    try:
        with holder.cursor() as cur:  # a lock CREATE INDEX must wait for, held until the test lets go
            cur.execute("LOCK TABLE django_store_executable IN ROW EXCLUSIVE MODE")
        first = subprocess.run([sys.executable, "-c", FIRST_CONNECTION], cwd=project, capture_output=True,
                               text=True, timeout=120)
        assert first.returncode == 0 and first.stdout.strip() == "0", first.stderr
    finally:
        holder.close()
    names = "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'smtlock_unique_%'"
    assert "smtlock_unique_django_store_executable" not in {row[0] for row in pg.sql(names, db)}
    assert len(pg.sql(names, db)) == len(UNIQUE_MODELS) - 1  # the free tables were hardened at once
    run_python(FIRST_CONNECTION, project)
    assert len(pg.sql(names, db)) == len(UNIQUE_MODELS)


RIVAL = """
import sys
from django.db import transaction
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
project = load_project()  # plain Sumatra: no smtlock, no lock
record = project.new_record(parameters=SimpleParameterSet({"job": 7}), main_file="main.py", label="rival")
with transaction.atomic(using=project.record_store._db_label):
    project.record_store.save(project.name, record)
    print("saved", flush=True)
    sys.stdin.readline()  # commits when the test says so
"""
OURS = """
import smtlock
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
project = load_project()
record = project.new_record(parameters=SimpleParameterSet({"job": 7}), main_file="main.py", label="ours")
project.add_record(record)
"""


def test_a_write_that_loses_a_race_with_a_plain_writer_is_made_again(pg, pg_uri: str, tmp_path: Path) -> None:
    """A plain-Sumatra writer (no lock) inserts the rows a smtlock write needs and commits while that
    write waits on the unique index: the write's INSERT fails, and it is made again, whole, finding the
    rival's rows (before: the job failed, TransactionManagementError)."""
    project = make_project(tmp_path / "p", pg_uri)
    run_python(FIRST_CONNECTION, project)  # hardened
    db = pg_uri.rsplit("/", 1)[1]
    rival = subprocess.Popen([sys.executable, "-c", RIVAL], cwd=project, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert rival.stdout.readline().strip() == "saved"  # its rows inserted, not committed
        ours = subprocess.Popen([sys.executable, "-c", OURS], cwd=project, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s"
        while pg.sql(waiting.replace("%s", f"'{db}'"))[0][0] == 0:  # until our INSERT waits on the rival's
            assert ours.poll() is None, ours.communicate()
        rival.stdin.write("\n")
        rival.stdin.flush()
        assert rival.wait(timeout=60) == 0
        out, err = ours.communicate(timeout=120)
        assert ours.returncode == 0, err
    finally:
        for process in (rival,):
            if process.poll() is None:
                process.kill()
                process.wait()
    counted = recount(pg_uri, project)
    assert counted["duplicate_rows"] == {}
    assert sorted(r["label"] for r in counted["records"]) == ["ours", "rival"]


SEED = """
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
load_project().new_record(parameters=SimpleParameterSet({"job": 0}), main_file="main.py", label="seed")
"""
SMTLOCK_WRITES = """
import smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
project = load_project()
for n in range(2):
    project.new_record(parameters=SimpleParameterSet({"job": 1, "rec": n}), main_file="main.py")
"""


def test_a_store_plain_sumatra_poisoned_takes_smtlock_writes_and_says_to_repair(project: Path) -> None:
    """Upstream fails every write on a store with duplicate rows (MultipleObjectsReturned). smtlock's
    writes use the oldest of the rows, the one the repair keeps, and say once what to run."""
    import sqlite3
    run_python(SEED, project)  # plain Sumatra: no index yet
    with sqlite3.connect(project / ".smt" / "records") as db:
        for statement in POISON:
            db.execute(statement)
    assert "MultipleObjectsReturned" in run_python(SEED.replace("seed", "plain"), project, check=False).stderr
    done = run_python(SMTLOCK_WRITES, project)
    assert [line for line in done.stderr.splitlines() if line.startswith("smtlock:")] == [
        f"smtlock: the store {project / '.smt' / 'records'} has duplicate Executable rows, made by writers "
        "without smtlock; records use the oldest of each, the one `smtlock doctor --repair` keeps: run it once "
        "to merge them"]
    with sqlite3.connect(project / ".smt" / "records") as db:
        used = db.execute("SELECT DISTINCT executable_id FROM django_store_record WHERE label <> 'seed'").fetchall()
        assert used == db.execute("SELECT min(id) FROM django_store_executable").fetchall()
    code, found = doctor(project, "--repair")
    assert code == 0 and found["duplicate rows"]["status"] == "repaired"
    labels = plain_smt("list", cwd=project).stdout.split()
    assert len(labels) == 3 and "seed" in labels  # the seed and smtlock's two; none lost to the repair


@pytest.mark.burst
def test_a_postgres_store_a_plain_burst_poisoned_keeps_every_smtlock_record(pg, pg_uri: str, tmp_path: Path) -> None:
    """The issue's case: plain-Sumatra jobs released together into a store smtlock never opened leave
    duplicate rows (made certain with POISON); then a burst of smtlock jobs keeps every record."""
    project = make_project(tmp_path / "p", pg_uri)
    run_python(SEED, project)
    run_burst(project, "raw", 8, 1, tmp_path / "plain")
    db = pg_uri.rsplit("/", 1)[1]
    for statement in POISON:
        pg.sql(statement, db)
    burst = run_burst(project, "locked", 16, 2, tmp_path / "smtlock")
    assert set(burst["codes"].values()) == {0}, [r.get("message") for r in burst["reports"]]
    written = [label for report in burst["reports"] for label in report["labels"]]
    stored = {r["label"] for r in recount(pg_uri, project)["records"]}
    assert len(written) == len(set(written)) == 32 and set(written) <= stored
