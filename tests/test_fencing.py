"""A lock that was lost is never trusted: a ``with SMTLock`` block whose hold went (its server or
pooler restarted, its host cut off, its process stopped past its lease) learns it, none of its store
writes after the loss land, and leaving it raises LockLost; a write smtlock makes in a hold of its own
takes the lock again and is redone whole. Each fault is real (a server restarted, PgBouncer killed,
a link taken down, SIGSTOP), and an overlap verifier shows which blocks were exclusive."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Set, Tuple

import pytest
from conftest import PROGRAMS, overlaps
from pgserver import Bouncer, Cluster, need_pgbouncer

from smtlock._harness.burst import make_project
from smtlock._harness.hosts import NetworkHosts, SharedFolderHosts

FENCED = str(PROGRAMS / "fenced.py")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="hosts need root (namespaces)")


@pytest.fixture(scope="module")
def server() -> Iterator[Cluster]:
    """A server of this module's own: the tests restart it."""
    cluster = Cluster()
    try:
        cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def database(server: Cluster, request) -> Iterator[str]:
    """A fresh database for the test, dropped after it."""
    name = "f_" + request.node.name.split("[")[0][5:40].lower()
    server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    server.sql(f"CREATE DATABASE {name} OWNER smt")
    yield name
    server.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def hold(folder: Path, log: Path, name: str, command: Optional[List[str]] = None,
         env: Optional[dict] = None) -> subprocess.Popen:
    """fenced.py in ``folder``, once it holds the lock (its first record stored, "enter NAME" logged)."""
    argv = [sys.executable, FENCED, str(folder), str(log), name]
    proc = subprocess.Popen(command(argv) if command else argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    if line.strip() != "held":
        proc.kill()
        raise AssertionError(line + proc.communicate()[1][-3000:])
    return proc


def finish(proc: subprocess.Popen, word: str) -> dict:
    """Tell fenced.py to go on (``word``: "go", or "lost" to wait until it knows); what it saw."""
    out, err = proc.communicate(f"{word}\n", timeout=240)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.splitlines()[-1])


def exclusive_blocks(log: Path, lost: Set[str]) -> int:
    """The overlap count among blocks that ended without LockLost (the others' lines left out)."""
    kept = log.with_suffix(".kept")
    kept.write_text("".join(line + "\n" for line in log.read_text().splitlines() if line.split()[1] not in lost))
    return overlaps(kept)


def labels(server: Cluster, db: str) -> Set[str]:
    return {row[0] for row in server.sql("SELECT label FROM django_store_record", db)}


def assert_lost(seen: dict) -> None:
    """fenced.py saw its hold lost: the write after it raised LockLost, and so did leaving the block."""
    assert seen["write"].startswith("LockLost: the lock "), seen
    assert seen["exit"].startswith("LockLost: the lock ") and "run it again" in seen["exit"], seen


def test_a_block_whose_server_restarted_learns_it_and_writes_nothing_after(server: Cluster, database: str,
                                                                          tmp_path: Path) -> None:
    """Before: C got the lock 3.4 s into A's block, A's write after the restart was stored and A's block
    ended as if it had been exclusive."""
    uri = server.uri("smt", "s3cret", database)
    a, c = (make_project(tmp_path / name, uri) for name in ("a", "c"))
    log = tmp_path / "blocks.log"
    holder = hold(a, log, "A")
    server.restart("immediate")
    assert finish(hold(c, log, "C"), "go") == {"noticed": None, "write": "stored", "exit": "ok"}
    seen = finish(holder, "lost")
    assert seen["noticed"] and "connection" in seen["noticed"], seen  # the holder learnt it without writing
    assert_lost(seen)
    assert labels(server, database) == {"A-before", "C-before", "C-after"}
    assert overlaps(log) == 1  # C's block came inside A's: A's was not exclusive, and A was told
    assert exclusive_blocks(log, {"A"}) == 0


def test_a_block_whose_pooler_was_killed_learns_it_and_writes_nothing_after(server: Cluster, database: str,
                                                                           tmp_path: Path) -> None:
    """PgBouncer (transaction pooling) SIGKILLed inside A's block; C reaches the server directly.
    Before: C got the lock 2.7 s into A's 10 s block."""
    need_pgbouncer()
    bouncer = Bouncer(server, {"smt": "s3cret"}, {database: (database, "transaction")})
    try:
        a = make_project(tmp_path / "a", bouncer.uri("smt", "s3cret", database))
        c = make_project(tmp_path / "c", server.uri("smt", "s3cret", database))
        log = tmp_path / "blocks.log"
        holder = hold(a, log, "A")
        bouncer.proc.kill()
        bouncer.proc.wait()
        assert finish(hold(c, log, "C"), "go")["exit"] == "ok"
        seen = finish(holder, "go")  # at once: the write itself finds the hold gone
    finally:
        bouncer.stop()
    assert_lost(seen)
    assert labels(server, database) == {"A-before", "C-before", "C-after"}
    assert overlaps(log) == 1 and exclusive_blocks(log, {"A"}) == 0


#: a write whose hold is lost inside it, just before its transaction's first statement: the hold's
#: server connection is terminated (pg_terminate_backend, as a restart or a pooler would end it)
LOSE_MID_WRITE = r"""
import json, os, sys
import psycopg2, smtlock
from django.db import connections
from smtlock._lock import lock as smtlock_lock
from smtlock._lock.paths import postgres_uri
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project

in_block = sys.argv[1] == "block"
project = load_project()
project.record_store._get_models()
killer = psycopg2.connect(sys.argv[2])
killer.autocommit = True
writes = []

def lose_the_hold(execute, sql, params, many, context):
    if "pg_advisory_xact_lock" in sql:
        writes.append(sql)
        if len(writes) == 1:
            token = smtlock_lock.current_hold()[0].fence_token(postgres_uri(project.record_store))
            with killer.cursor() as cur:
                cur.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND objsubid = 1 AND classid = %s AND objid = %s", (token >> 32, token & 0xFFFFFFFF))
                assert cur.fetchall() == [(True,)]
    return execute(sql, params, many, context)

def record():  # new_record stores the record it makes
    project.new_record(parameters=SimpleParameterSet({"i": 1}), main_file="main.py", label="mid")

seen = {}
with connections[project.record_store._db_label].execute_wrapper(lose_the_hold):
    try:
        if in_block:
            with smtlock.SMTLock(project):
                try:
                    record()
                    seen["write"] = "stored"
                except smtlock.LockLost as lost:
                    seen["write"] = "LockLost: " + str(lost)
        else:
            record()
            seen["write"] = "stored"
        seen["exit"] = "ok"
    except smtlock.LockLost as lost:
        seen["exit"] = "LockLost: " + str(lost)
seen["attempts"] = len(writes)
print(json.dumps(seen))
"""


@pytest.mark.parametrize("pooled", [False, True], ids=["direct", "pgbouncer"])
@pytest.mark.parametrize("where", ["own", "block"])
def test_a_hold_lost_inside_a_write_is_caught_by_the_write_itself(server: Cluster, database: str, pooled: bool,
                                                                 where: str, tmp_path: Path) -> None:
    """The write's own transaction proves the hold: its check finds the hold's token gone. In a hold of
    its own (``project.new_record`` outside any block) smtlock takes the lock again and writes the record once;
    in a user's block the write raises LockLost and nothing is stored. Before: stored, no error."""
    bouncer = None
    if pooled:
        need_pgbouncer()
        bouncer = Bouncer(server, {"smt": "s3cret"}, {database: (database, "transaction")})
    try:
        uri = (bouncer or server).uri("smt", "s3cret", database)
        project = make_project(tmp_path / "p", uri)
        killer = f"host={server.dir} port={server.port} user=postgres dbname={database}"
        done = subprocess.run([sys.executable, "-c", LOSE_MID_WRITE, where, killer], cwd=project,
                              capture_output=True, text=True, timeout=240)
    finally:
        if bouncer is not None:
            bouncer.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    if where == "own":
        assert seen == {"write": "stored", "exit": "ok", "attempts": 2}
        assert labels(server, database) == {"mid"}
    else:
        assert_lost(seen)
        assert seen["attempts"] == 1
        assert labels(server, database) == set()


@contextlib.contextmanager
def two_hosts(tmp_path: Path) -> Iterator[Tuple[NetworkHosts, Cluster, List[Path]]]:
    """Two hosts (network namespaces), a server in a third with the database ``shared``, and a project
    on each host whose store is that database, at the host's own address of the server."""
    with NetworkHosts(2) as hosts:
        cluster = Cluster(listen=",".join(hosts.server_addresses), prefix=["ip", "netns", "exec", hosts.server_ns])
        try:
            cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
            cluster.sql("CREATE DATABASE shared OWNER smt")
            folders = []
            for h, address in enumerate(hosts.server_addresses):
                make = ("import sys; from pathlib import Path; from smtlock._harness.burst import make_project; "
                        "make_project(Path(sys.argv[1]), sys.argv[2])")
                subprocess.run(hosts.command(h, [sys.executable, "-c", make, str(tmp_path / hosts.names[h]),
                                                 cluster.uri("smt", "s3cret", "shared", host=address)]), check=True)
                folders.append(tmp_path / hosts.names[h])
            yield hosts, cluster, folders
        finally:
            cluster.stop()


@as_root
def test_a_block_on_a_host_cut_off_learns_it(tmp_path: Path) -> None:
    """Host 1's cable is pulled inside A's block (no FIN, no RST): the server frees the lock by its
    keepalives, C on host 2 gets it, and A, from its own keepalives, knows its hold is gone."""
    with two_hosts(tmp_path) as (hosts, cluster, folders):
        log = tmp_path / "blocks.log"
        holder = hold(folders[0], log, "A", command=lambda argv: hosts.command(0, argv))
        try:
            hosts.cut(0)
            other = finish(hold(folders[1], log, "C", command=lambda argv: hosts.command(1, argv)), "go")
            seen = finish(holder, "lost")
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait()
        assert other["exit"] == "ok"
        assert seen["noticed"] and "connection" in seen["noticed"], seen
        assert_lost(seen)
        assert labels(cluster, "shared") == {"A-before", "C-before", "C-after"}
        assert overlaps(log) == 1 and exclusive_blocks(log, {"A"}) == 0


ENTER_AND_LEAVE = ("import os, sys, smtlock\nfd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
                   "with smtlock.SMTLock(sys.argv[1], timeout=120):\n    os.write(fd, b'enter C\\n')\n"
                   "    os.write(fd, b'leave C\\n')\nprint('ok')\n")


@as_root
def test_a_lease_holder_stopped_past_its_lease_learns_it_and_writes_nothing_after(tmp_path: Path) -> None:
    """A project on a shared filesystem (its SQLite store written from host 1): A is SIGSTOPped inside
    its block, host 2 breaks the expired lease and holds the lock, A is continued. A's lease is never
    renewed back to life, its write raises LockLost and stores nothing, and so does leaving."""
    shared = make_project(tmp_path / "shared")
    env = {**os.environ, "SMTLOCK_LEASE": "2"}
    log = tmp_path / "blocks.log"
    with SharedFolderHosts(shared, 2) as hosts:
        holder = hold(shared, log, "A", command=lambda argv: hosts.command(0, argv), env=env)
        try:
            os.kill(holder.pid, signal.SIGSTOP)
            other = subprocess.run(hosts.command(1, [sys.executable, "-c", ENTER_AND_LEAVE, str(shared), str(log)]),
                                   env=env, capture_output=True, text=True, timeout=240)
            assert other.stdout.strip() == "ok", other.stderr[-3000:]
        finally:
            os.kill(holder.pid, signal.SIGCONT)
        seen = finish(holder, "lost")
    assert seen["noticed"] and "lease" in seen["noticed"], seen
    assert_lost(seen)
    stored = subprocess.run(["smt", "list"], cwd=shared, capture_output=True, text=True, check=True,
                            env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"})
    assert stored.stdout.split() == ["A-before"]
    assert overlaps(log) == 1 and exclusive_blocks(log, {"A"}) == 0


def test_a_write_to_another_database_is_not_fenced_by_this_hold() -> None:
    """``smt sync`` and a move write a second store under the project's lock: that store's writes
    check no token of this hold (it is not there), whatever the URI's user or query."""
    from smtlock._lock.backends import PostgresBackend
    backend = PostgresBackend("postgres://smt@db.example:5433/sumatra")
    assert backend.same_database("postgres://other:pw@db.example:5433/sumatra?sslmode=require")
    assert not backend.same_database("postgres://smt@db.example:5433/elsewhere")
    assert not backend.same_database("postgres://smt@db.example:5432/sumatra")
    assert not backend.same_database("not a uri")


#: a job's first record (argv[2:] "record LABEL"), ``smtlock doctor --repair`` ("doctor") or ``smt
#: delete LABEL`` ("delete LABEL"), that stops itself (SIGSTOP) right after the first statement that
#: begins with argv[1] and does not fail, inside that statement's transaction, holding the store's lock
STOP_INSIDE = r"""
import os, signal, sys
import smtlock
from django.db.backends.signals import connection_created
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project

def stop_after(execute, sql, params, many, context):
    result = execute(sql, params, many, context)
    if sql.lstrip().startswith(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGSTOP)
    return result

def wrap(sender, connection, **kwargs):
    if stop_after not in connection.execute_wrappers:
        connection.execute_wrappers.append(stop_after)

connection_created.connect(wrap, weak=False)
if sys.argv[2] == "doctor":
    from smtlock.cli import main
    sys.exit(main(["doctor", "--repair"]))
if sys.argv[2] == "delete":
    sys.exit(load_project().delete_record(sys.argv[3]))
load_project().new_record(parameters=SimpleParameterSet({"label": sys.argv[3]}), main_file="main.py", label=sys.argv[3])
"""
PARAMETER_SET_INDEX = "smtlock_unique_django_store_parameterset"


@as_root
@pytest.mark.parametrize("statement, inside", [("CREATE TABLE", "record"), ("CREATE UNIQUE INDEX", "record"),
                                               ("CREATE UNIQUE INDEX", "doctor"),
                                               ('DELETE FROM "django_store_record" WHERE', "delete")])
def test_a_host_cut_off_inside_a_change_of_the_stores_schema_holds_up_no_other_host(tmp_path: Path, statement: str,
                                                                                    inside: str) -> None:
    """Host 1's first job creates Django's tables (a new store), or adds the unique indexes (a store
    that plain Sumatra's smt init made), or its ``smtlock doctor --repair`` merges a duplicate row and
    adds that table's unique index, or its ``smt delete`` deletes a record, when its cable is pulled
    inside that transaction. The server ends the transaction by its keepalives and frees what it
    locked, so host 2's job takes the lock and stores its record (tags the record, which is still
    there). Before: the transaction had no keepalives of its own and held its tables (its row) for
    the kernel's two hours; host 2's job waited for it holding the lock, and so did every other job
    (CI's smtlock stress --cut-host hung: 1 run in 14 here)."""
    with two_hosts(tmp_path) as (hosts, cluster, folders):
        expected = {"B"}
        if statement == "CREATE TABLE":  # a new store: smt init made Django's tables; none now
            cluster.sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION smt", "shared")
        if inside == "doctor":  # a record's parameter set twice, as plain Sumatra's racing writers leave it
            subprocess.run(hosts.command(1, [sys.executable, "-c", STOP_INSIDE, "-", "record", "B0"]),
                           cwd=folders[1], check=True)
            cluster.sql(f"DROP INDEX {PARAMETER_SET_INDEX}; INSERT INTO django_store_parameterset (type, content) "
                        "SELECT type, content FROM django_store_parameterset", "shared")
            expected.add("B0")
        then = [sys.executable, "-c", STOP_INSIDE, "-", "record", "B"]
        if inside == "delete":  # a record of host 1's, deleted there, tagged by host 2
            subprocess.run(hosts.command(0, [sys.executable, "-c", STOP_INSIDE, "-", "record", "A"]),
                           cwd=folders[0], check=True)
            then, expected = [os.path.join(os.path.dirname(sys.executable), "smt"), "tag", "kept", "A"], {"A"}
        victim = subprocess.Popen(hosts.command(0, [sys.executable, "-c", STOP_INSIDE, statement, inside, "A"]),
                                  cwd=folders[0], stderr=subprocess.PIPE, text=True)
        try:
            _, status = os.waitpid(victim.pid, os.WUNTRACED)
            assert os.WIFSTOPPED(status), victim.communicate()[1][-3000:]
            hosts.cut(0)
            other = subprocess.run(hosts.command(1, then), cwd=folders[1], capture_output=True, text=True,
                                   timeout=180)
        finally:
            victim.kill()
            victim.wait()
        assert other.returncode == 0, other.stderr[-3000:]
        assert labels(cluster, "shared") == expected
        if inside == "delete":
            assert "kept" in cluster.sql("SELECT tags FROM django_store_record", "shared")[0][0]
        else:  # added by host 2's job; the cut repair did not land, so its duplicate row is left (no index)
            assert cluster.sql(f"SELECT count(*) FROM pg_indexes WHERE indexname = '{PARAMETER_SET_INDEX}'",
                               "shared") == [(0 if inside == "doctor" else 1,)]
