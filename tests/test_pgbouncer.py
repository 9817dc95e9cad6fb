"""PostgreSQL as a site runs it: Debian's PgBouncer (transaction pooling) in front of the server, a role
without CREATEDB, one database its administrator made for it; two project folders that share no files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from conftest import PROGRAMS, overlaps
from pgserver import Bouncer, free_port, need_pgbouncer

from smtlock._harness.burst import JOB_SCRIPT, make_project, start_together

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")
SECTIONS = str(PROGRAMS / "sections.py")
#: the site's databases, made by the superuser for role `site` (no CREATEDB), exposed by the pooler
SITE_DATABASES = ("sitedb", "movedb", "stmtdb")


@pytest.fixture(scope="module")
def site(pg) -> Iterator[Bouncer]:
    """PgBouncer in front of the session's server: `sitedb` and `movedb` pooled per transaction, `stmtdb`
    per statement; the `postgres` database not exposed; role `site` may not create databases."""
    need_pgbouncer()
    pg.sql("DO $$ BEGIN CREATE ROLE site LOGIN PASSWORD 'site-pw' NOCREATEDB; "
           "EXCEPTION WHEN duplicate_object THEN END $$")
    for db in SITE_DATABASES:
        pg.sql(f"DROP DATABASE IF EXISTS {db}")
        pg.sql(f"CREATE DATABASE {db} OWNER site")
    bouncer = Bouncer(pg, {"site": "site-pw"}, {"sitedb": ("sitedb", "transaction"),
                                                 "movedb": ("movedb", "transaction"),
                                                 "stmtdb": ("stmtdb", "statement")})
    try:
        yield bouncer
    finally:
        bouncer.stop()
        for db in SITE_DATABASES:
            pg.sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([SMTLOCK, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def advisory_locks(pg, db: str) -> int:
    """Advisory locks granted in ``db`` now, whoever holds them (a pooled server connection too)."""
    return pg.sql("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                  f"WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '{db}'")[0][0]


TRY_ONCE = ("import smtlock, sys\ntry:\n    with smtlock.SMTLock(sys.argv[1], timeout=0):\n        print('acquired')\n"
            "except smtlock.LockTimeout as err:\n    print('busy:', err)\n")


@pytest.fixture(scope="module")
def folders(site: Bouncer, tmp_path_factory) -> list:
    """Two project folders (two hosts' worth: nothing shared but the database) on `sitedb` through the pooler."""
    base = tmp_path_factory.mktemp("site")
    uri = site.uri("site", "site-pw", "sitedb")
    return [make_project(base / name, uri) for name in ("host-a", "host-b")]


def test_the_lock_excludes_through_a_transaction_pooler_and_strands_nothing(site: Bouncer, pg, folders: list,
                                                                            tmp_path: Path) -> None:
    """2 + 2 processes x 30 sections from two folders, released together. Before: 30 overlapping sections
    of 114, the session lock left granted to an idle pooled server connection, every later job waiting."""
    log = tmp_path / "sections.log"
    commands = [[sys.executable, SECTIONS, str(folder), str(log), "30", "{ready}", "{go}"]
                for folder in folders for _ in range(2)]
    burst = start_together(commands, [tmp_path / f"{i}.out" for i in range(4)])
    assert burst["codes"] == {i: 0 for i in range(4)}, (tmp_path / "0.out").read_text()[-2000:]
    assert log.read_text().count("enter ") == 120
    print("overlaps", overlaps(log), "stranded", advisory_locks(pg, "sitedb"))  # the figures, for the note
    assert overlaps(log) == 0
    assert advisory_locks(pg, "sitedb") == 0  # all gone with their transactions
    for folder in folders:  # a job started afterwards gets it at its one try
        later = subprocess.run([sys.executable, "-c", TRY_ONCE, str(folder)], capture_output=True, text=True)
        assert later.stdout.strip() == "acquired", later.stdout + later.stderr


@pytest.mark.burst
def test_a_burst_from_two_folders_through_the_pooler_keeps_every_record(site: Bouncer, folders: list,
                                                                        tmp_path: Path) -> None:
    jobs = 16
    commands = [[sys.executable, JOB_SCRIPT, "locked", str(folder), str(100 * h + j), "1", "{ready}", "{go}",
                 str(tmp_path / f"{h}-{j}.json")] for h, folder in enumerate(folders) for j in range(jobs)]
    burst = start_together(commands, [tmp_path / f"{i}.log" for i in range(2 * jobs)])
    assert burst["codes"] == {i: 0 for i in range(2 * jobs)}, (tmp_path / "0.log").read_text()[-2000:]
    code = "import json, sys; from smtlock._harness.census import census; print(json.dumps(census(sys.argv[1], '.')))"
    done = subprocess.run([sys.executable, "-c", code, site.uri("site", "site-pw", "sitedb")], cwd=folders[0],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    counted = json.loads(done.stdout)
    labels = {json.loads((tmp_path / f"{h}-{j}.json").read_text())["labels"][0]
              for h in range(2) for j in range(jobs)}
    assert sorted(r["job"] for r in counted["records"]) == [*range(jobs), *range(100, 100 + jobs)]
    assert {r["label"] for r in counted["records"]} == labels and len(labels) == 2 * jobs
    assert counted["duplicate_rows"] == {}


LIST = ("import json\nfrom sumatra.projects import load_project\np = load_project()\n"
        "print(json.dumps(sorted(r.label for r in p.find_records())))\n")


def test_smtlock_postgres_moves_a_project_onto_the_database_it_was_given(site: Bouncer, project: Path) -> None:
    """As role `site` (no CREATEDB), through the pooler (no `postgres` database). Before: "cannot reach
    PostgreSQL ...: no such database: postgres (check the host, the port ...)"."""
    make = ("from sumatra.projects import load_project\nfrom sumatra.parameters import SimpleParameterSet\n"
            "import smtlock\np = load_project()\nfor i in range(3):\n    p.add_record(p.new_record("
            "parameters=SimpleParameterSet({'i': i}), main_file='main.py', label=f'run{i}'))\n")
    subprocess.run([sys.executable, "-c", make], cwd=project, check=True, capture_output=True)
    done = cli("postgres", site.uri("site", "site-pw", "movedb"), cwd=project)
    assert done.returncode == 0, done.stderr
    assert "created database" not in done.stdout and "all 3 in" in done.stdout and "site-pw" not in done.stdout
    listed = subprocess.run([sys.executable, "-c", LIST], cwd=project, capture_output=True, text=True)
    assert json.loads(listed.stdout) == ["run0", "run1", "run2"], listed.stderr
    assert "movedb" in (project / ".smt" / "project").read_text()


@pytest.mark.parametrize("case", ["unreachable", "no such database", "authentication failed",
                                  "may not create"])
def test_each_way_smtlock_postgres_can_fail_is_one_line_that_says_which(site: Bouncer, pg, project: Path,
                                                                       case: str) -> None:
    uri, expect = {
        "unreachable": (f"postgres://site:site-pw@127.0.0.1:{free_port()}/sitedb", "cannot reach PostgreSQL"),
        "no such database": (site.uri("site", "site-pw", "elsewhere"), "ask your administrator to create database "
                                                                       "elsewhere for role site"),
        "authentication failed": (site.uri("site", "wrong-pw", "sitedb"), "refused the login of role site"),
        # directly to the server: its `postgres` database is reachable, CREATE DATABASE is refused
        "may not create": (pg.uri("site", "site-pw", "not_there"), "role 'site' may not create database"),
    }[case]
    before = (project / ".smt" / "project").read_text()
    done = cli("postgres", uri, cwd=project)
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expect in done.stderr, done.stderr
    assert "site-pw" not in done.stderr and ":***@" in done.stderr
    if case != "unreachable":
        assert "cannot reach" not in done.stderr  # the server answered: not the network's fault
    assert (project / ".smt" / "project").read_text() == before


def test_statement_pooling_is_refused_in_one_line_before_anything_is_written(site: Bouncer, pg,
                                                                             project: Path) -> None:
    from smtlock._lock.backends import PostgresBackend
    from smtlock.errors import StoreError
    uri = site.uri("site", "site-pw", "stmtdb")
    with pytest.raises(StoreError, match="statement pooling") as refused:
        PostgresBackend(uri).try_acquire()
    assert "\n" not in str(refused.value) and "site-pw" not in str(refused.value)
    done = cli("postgres", uri, cwd=project)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "statement pooling" in done.stderr and "site-pw" not in done.stderr
    assert pg.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db="stmtdb") == [(0,)]
