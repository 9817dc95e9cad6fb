"""The 100,000th record costs what the first did: every query a record write makes under the lock is
answered by an index on a store that was never analysed (as a user's is), and listings read the
labels alone, exactly as plain Sumatra lists them. Speed at 100,000 records is measured in
``benchmarks/store_size.py``; here, what makes it flat: the query plans and the queries themselves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_python

SEEDED = """
import datetime, json, sys
import smtlock
from sumatra.datastore.base import DataKey
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
from smtlock._harness.fill import fill
project = load_project()

def new(i, path):
    record = project.new_record(parameters=SimpleParameterSet({"i": i}), main_file="main.py")
    record.output_data = [DataKey(path, "0" * 40, datetime.datetime(2026, 1, 1), mimetype="text/plain", size=1)]
    record.tags = {"sweep", f"t{i % 2}"}
    record.outcome = "done"
    project.add_record(record)
    return record

for i in range(3):
    new(i, f"out{i}.dat")
"""

#: a store of 10,000 records (copies), then one new record and one status save of it, every
#: statement run under the lock explained
PLANS = SEEDED + """
fill(project.record_store, project.name, 10000)
from django.db import connections
from smtlock._lock import lock as smtlock_lock
connection = connections[project.record_store._db_label]
ran = []

def watch(execute, sql, params, many, context):
    if any(shared.depth for shared in smtlock_lock._shared.values()) and not many:
        ran.append((sql, params))
    return execute(sql, params, many, context)

with connection.execute_wrapper(watch):
    record = new(99, "new.dat")          # a new record: its label claim, parameter set, data key, tags
    record.tags.add("_running_")
    project.save_record(record)          # an update, as each status save of smt run: its tag links
plans = []
with connection.cursor() as cursor:
    for sql, params in ran:
        if sql.lstrip().split()[0] in ("SELECT", "UPDATE", "DELETE"):
            cursor.execute(("EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN ") + sql, params)
            plans.append((sql, [str(row[-1]) for row in cursor.fetchall()]))
print(json.dumps({"plans": plans, "records": len(project.get_labels())}))
"""

#: the tables that grow with the store
GROWING = ("django_store_record", "django_store_parameterset", "django_store_datakey", "django_store_taggeditem",
           "django_store_record_dependencies", "django_store_record_platforms", "django_store_record_input_data")
#: columns that each match a large part of a growing table: an index on them alone reads that part
WEAK = {"content_type_id", "project_id", "type"}


def reads_everything(line: str) -> bool:
    """Whether a plan line reads a growing table whole, or through an index on a weak column alone."""
    scan = re.search(r"\b(?:SCAN|Seq Scan on) (\w+)", line)
    if scan and scan.group(1) in GROWING:
        return True
    search = re.search(r"SEARCH (\w+) USING (?:COVERING )?INDEX \w+ \(([^)]*)\)", line)
    if search and search.group(1) in GROWING:
        return set(re.findall(r"(\w+)\s*[=<>]", search.group(2))) <= WEAK
    cond = re.search(r"(?:Index|Recheck) Cond: (.*)", line)
    if cond:  # the columns compared: ((label)::text ~>=~ 'x'::text), (object_id = 5)
        return set(re.findall(r"(\w+)\)?(?:::\w+)?\s*[=<>~]", cond.group(1))) <= WEAK
    return False


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_every_lookup_of_a_write_is_answered_by_an_index_in_a_large_store(new_project, store: str, request) -> None:
    """10,000 records (copies with their own parameter sets, data keys and tag links), never analysed.
    Before: on SQLite a status save's tag-link lookup went through the index on content_type_id,
    which every link matches; on PostgreSQL the parameter set and data key lookups were sequential
    scans (their unique indexes are on md5 of the column)."""
    project = new_project(request.getfixturevalue("pg_uri") if store == "postgres" else "sqlite")
    out = json.loads(run_python(PLANS, project).stdout.splitlines()[-1])
    assert out["records"] == 10001
    assert out["plans"], "no statement ran under the lock"
    full = [(sql, plan) for sql, plan in out["plans"] if any(reads_everything(line) for line in plan)]
    assert full == []


LISTED = SEEDED + """
fill(project.record_store, project.name, 40)
from django.db import connections
from smtlock._sumatra.upstream import original
store = project.record_store
ran = []

def watch(execute, sql, params, many, context):
    ran.append(sql)
    return execute(sql, params, many, context)
upstream = original("DjangoRecordStore.labels")
cases = [{}, {"tags": "t1"}, {"tags": ["sweep", "t0"]}, {"tags": "none"}]
plain = [upstream(store, project.name, **case) for case in cases]
with connections[store._db_label].execute_wrapper(watch):
    ours = [project.get_labels(**case) for case in cases]
print(json.dumps({"plain": plain, "ours": ours, "queries": ran}))
"""


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_labels_are_plain_sumatras_read_from_the_label_column_alone(new_project, store: str, request) -> None:
    """``smt list`` and the ``.smt/labels`` every ``smt run`` writes: the same labels in the same order,
    with and without tags, from one query of the record table alone. Before: upstream joined every
    related table (select_related) and built each record's model object: 9.8 s of an 11 s smt run at
    100,000 records."""
    project = new_project(request.getfixturevalue("pg_uri") if store == "postgres" else "sqlite")
    out = json.loads(run_python(LISTED, project).stdout.splitlines()[-1])
    assert out["ours"] == out["plain"]
    assert [len(labels) for labels in out["plain"]] == [40, 13, 27, 0]
    assert len(out["queries"]) == 4
    for sql in out["queries"]:
        assert " JOIN " not in sql, sql
        assert re.match(r'SELECT "django_store_record"\."label"( AS "label")? FROM "django_store_record" WHERE',
                        sql), sql


def test_smt_list_and_the_labels_file_are_plain_sumatras(new_project) -> None:
    """``smt list`` (its short form) prints the labels as plain Sumatra does, newest first."""
    import subprocess
    import sys
    project = new_project("sqlite")
    run_python(SEEDED, project)
    smt = [str(Path(sys.executable).parent / "smt")]
    plain = subprocess.run([*smt, "list"], cwd=project, capture_output=True, text=True, check=True).stdout
    listed = run_python("import smtlock, sumatra.commands as c\nc.list([])", project).stdout
    assert listed == plain and len(plain.split()) == 3
