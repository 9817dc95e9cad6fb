"""The safe write path, one behaviour at a time (each in a fresh process: Django is configured once)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_python

from smtlock._harness.burst import start_together

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")

NEW_RECORD = """
import json, smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
project = load_project()
def new(label=None, **params):
    return project.new_record(parameters=SimpleParameterSet(params), main_file="main.py", label=label)
"""


def test_adding_the_same_record_again_updates_it(project: Path) -> None:
    done = run_python(NEW_RECORD + """
record = new(x=1)                      # new_record already writes it
with smtlock.SMTLock(project):
    project.add_record(record)         # the usual pattern adds it again
    project.save()
record.outcome = "updated"
project.add_record(record)
print(json.dumps(project.get_labels()), project.get_record(record.label).outcome)
""", project)
    labels, outcome = done.stdout.rsplit(" ", 1)
    assert len(json.loads(labels)) == 1 and outcome.strip() == "updated"


def test_a_taken_label_gets_a_readable_suffix(project: Path) -> None:
    done = run_python(NEW_RECORD + """
labels = [new(label="sweep", x=i).label for i in range(3)]
print(json.dumps([labels, sorted(project.get_labels())]))
""", project)
    made, stored = json.loads(done.stdout)
    assert made == ["sweep", "sweep_1", "sweep_2"] and stored == sorted(made)


def test_sumatra_capture_decorator_makes_one_record(project: Path) -> None:
    (project / "captured.py").write_text(
        "import smtlock\nfrom sumatra.decorators import capture\n\n"
        "@capture\ndef main(parameters):\n    print('ran', parameters['x'])\n\n"
        "from sumatra.parameters import SimpleParameterSet\nmain(SimpleParameterSet({'x': 3}))\n")
    run_python("import subprocess; subprocess.run(['git', 'add', 'captured.py']);"
               "subprocess.run(['git', '-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'c'])",
               project)
    run_python("import runpy, sys; sys.argv = ['captured.py']; runpy.run_path('captured.py', run_name='__main__')",
               project)
    done = run_python("from sumatra.projects import load_project; p = load_project();"
                      "r = p.find_records(); print(len(r), sorted(r[0].tags), r[0].stdout_stderr.strip())",
                      project)
    assert done.stdout.split(" ", 1)[0] == "1"
    assert "_finished_" in done.stdout and "ran 3" in done.stdout


def test_a_failed_write_raises_and_leaves_nothing_half_written(project: Path) -> None:
    run_python(NEW_RECORD + "new(x=0)", project)  # creates the tables
    # A real SQLite trigger refuses new record rows, as a full disk or a broken store would.
    run_python("""
import sqlite3
db = sqlite3.connect(".smt/records")
db.execute("CREATE TRIGGER refuse BEFORE INSERT ON django_store_record "
           "BEGIN SELECT RAISE(ABORT, 'store refuses writes'); END")
db.commit()
""", project)
    done = run_python(NEW_RECORD + """
from django.db import connections
project.record_store._get_models()  # configures Django
before = connections["default"].cursor().execute("select count(*) from django_store_parameterset").fetchone()
try:
    new(x=1)
except Exception as err:
    after = connections["default"].cursor().execute("select count(*) from django_store_parameterset").fetchone()
    print("raised", type(err).__name__, before == after)
""", project, check=False)
    assert done.stdout.strip() == "raised IntegrityError True", done.stdout + done.stderr
    assert "Reached maximum" not in done.stdout and "Trying again" not in done.stdout


TAGGER = """
import os, sys, smtlock
from sumatra.projects import load_project
project = load_project()
os.write(int(sys.argv[1]), b"r"); os.read(int(sys.argv[2]), 1)
project.add_tag(sys.argv[3], "tag-" + sys.argv[4])
project.add_comment(sys.argv[3], "comment-" + sys.argv[4])
"""


@pytest.mark.burst
def test_concurrent_tags_and_comments_are_all_kept(project: Path, tmp_path: Path) -> None:
    """Upstream add_tag/add_comment are get -> modify -> save: concurrent updates overwrite each other."""
    label = run_python(NEW_RECORD + "print(new(x=1).label)", project).stdout.strip()
    n = 16
    commands = [[sys.executable, "-c", TAGGER, "{ready}", "{go}", label, str(i)] for i in range(n)]
    burst = start_together(commands, [tmp_path / f"t{i}.log" for i in range(n)], cwd=project)
    assert burst["codes"] == {i: 0 for i in range(n)}
    done = run_python(f"""
import json
from sumatra.projects import load_project
r = load_project().get_record({label!r})
print(json.dumps([sorted(r.tags), r.outcome.split()]))
""", project)
    tags, comments = json.loads(done.stdout)
    assert {f"tag-{i}" for i in range(n)} <= set(tags)
    assert sorted(comments) == sorted(f"comment-{i}" for i in range(n))


def test_a_record_read_back_and_added_again_is_updated_not_copied(project: Path) -> None:
    done = run_python(NEW_RECORD + """
label = new(x=1).label
again = project.get_record(label)   # a different object, read from the store
again.outcome = "second look"
project.add_record(again)
print(json.dumps([project.get_labels(), project.get_record(label).outcome]))
""", project)
    labels, outcome = json.loads(done.stdout)
    assert len(labels) == 1 and outcome == "second look"


def test_unchanged_record_is_not_written_twice(project: Path) -> None:
    done = run_python(NEW_RECORD + """
from smtlock._lock import lock
lock.enable_stats()
record = new(x=1)
with smtlock.SMTLock(project):
    project.add_record(record)   # unchanged since new_record wrote it
record.outcome = "changed"
project.add_record(record)       # changed: written
print(json.dumps([p for p, _, _ in lock.collected_stats() if p != "migrate"]))  # the store's first use
""", project)
    assert json.loads(done.stdout) == ["add_record", "user", "add_record"]


def test_the_sqlite_store_is_never_taken_for_a_shelf(project: Path) -> None:
    """Python 3.13's shelve opens SQLite files: Sumatra's get_record_store took .smt/records for an
    empty shelf (smt init --store, smt configure --store, smt sync) and added a Dict table to it."""
    run_python(NEW_RECORD + "new(x=1)", project)
    done = run_python("""
import sqlite3, smtlock
from sumatra.recordstore import get_record_store
store = get_record_store(".smt/records")
tables = {row[0] for row in sqlite3.connect(".smt/records").execute("SELECT name FROM sqlite_master")}
print(type(store).__name__, len(store.list("stress")), "Dict" in tables)
""", project)
    assert done.stdout.split() == ["DjangoRecordStore", "1", "False"]



CONNECT = """
import smtlock
from django.db import connections
from sumatra.projects import load_project
store = load_project().record_store
store._get_models()
with connections[store._db_label].cursor() as cursor:
    print(cursor.execute("PRAGMA journal_mode").fetchone()[0])
"""


def test_a_reader_of_the_store_never_fails_a_connection(project: Path) -> None:
    """Each connection switches the store to the WAL journal, which needs SQLite's write lock from
    inside a read. SQLite fails that at once with "database is locked", without waiting its timeout,
    whenever another connection reads: a ``smt list`` or several jobs connecting at once."""
    import sqlite3
    reader = sqlite3.connect(str(project / ".smt" / "records"), isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM sqlite_master").fetchone()  # holds SQLite's read lock
    try:
        assert run_python(CONNECT, project).stdout.strip() == "delete"  # switched later
    finally:
        reader.close()
    assert run_python(CONNECT, project).stdout.strip() == "wal"


STALE_ROW = NEW_RECORD + """
import sys
new(x=1)                     # this process now remembers the rows of this write (executable...)
print("wrote", flush=True)
sys.stdin.readline()         # meanwhile the test makes the executable's row a duplicate, and repairs
record = new(x=2)
print(project.get_record(record.label).executable.path, flush=True)
"""


def test_a_remembered_row_merged_away_by_the_doctor_does_not_break_the_next_write(project: Path) -> None:
    """Each process remembers the never-changing rows its writes used (rows.py). ``smtlock doctor
    --repair`` keeps the lowest id of duplicate rows and deletes the others: the next write that
    uses a deleted one fails on its foreign key, forgets, and is made again from the store."""
    import sqlite3
    writer = subprocess.Popen([sys.executable, "-c", STALE_ROW], cwd=project, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "wrote"
        db = sqlite3.connect(str(project / ".smt" / "records"))
        with db:  # a copy of the executable's row with a lower id: the repair keeps the copy
            db.execute("DROP INDEX smtlock_unique_django_store_executable")  # a store that has none
            columns = [row[1] for row in db.execute("PRAGMA table_info(django_store_executable)") if row[1] != "id"]
            names = ", ".join(columns)
            db.execute(f"INSERT INTO django_store_executable (id, {names}) "
                       f"SELECT 0, {names} FROM django_store_executable WHERE id = 1")
        db.close()
        repair = subprocess.run([SMTLOCK, "doctor", "--repair"], cwd=project, capture_output=True, text=True)
        assert "merged 1 extra rows (Executable 1)" in repair.stdout, repair.stdout + repair.stderr
        out, err = writer.communicate("\n", timeout=120)
    finally:
        writer.kill()
    assert writer.returncode == 0, err
    assert out.strip(), "the second record has an executable"
    db = sqlite3.connect(str(project / ".smt" / "records"))
    assert db.execute("SELECT DISTINCT executable_id FROM django_store_record").fetchall() == [(0,)]
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []


UNDER_THE_LOCK = NEW_RECORD + """
project.record_store._get_models()  # Django configured, as by the first store call
from django.db import connections
from smtlock._lock import lock as smtlock_lock
seen, before = [], []  # statements run under the lock, and before it

def watch(execute, sql, params, many, context):
    table = next((t for t in sql.replace('"', ' ').split() if t.startswith("django_")), "")
    under = any(shared.depth for shared in smtlock_lock._shared.values())
    (seen if under else before).append(sql.split()[0] + " " + table)
    return execute(sql, params, many, context)

def write(x):
    seen.clear()
    with connections["default"].execute_wrapper(watch):
        record = new(x=x)
    return list(seen)
"""


@pytest.mark.parametrize("unique_index", [True, False], ids=["hardened-store", "store-with-duplicates"])
def test_a_write_asks_under_the_lock_only_for_what_is_new_and_saves_each_row_once(project: Path,
                                                                                   unique_index: bool) -> None:
    """A job's first write (a fresh process) finds the stored rows before it takes the lock; under
    it, a new record with new parameters claims its label, inserts its parameter set (in one
    statement: the prefetch found it not stored, and the store's unique index catches one made
    meanwhile), its row and its tag link, and runs no UPDATE and no SAVEPOINT: upstream asked for the
    parameter set again, saved it and the record twice, asked for the new record's tag links and
    wrapped each insert in a savepoint. A store whose parameter sets have no unique index (duplicates
    that plain Sumatra made refuse it) is asked first, as upstream does. Whether the index is still
    there costs one PRAGMA (SQLite's schema version, unchanged since the process asked)."""
    run_python(NEW_RECORD + "new(x=0)", project)  # the project's rows (executable, tags...) are stored
    if not unique_index:
        import sqlite3
        db = sqlite3.connect(str(project / ".smt" / "records"))
        with db:  # two copies of another parameter set, as racing plain-Sumatra writers leave them
            db.execute("DROP INDEX smtlock_unique_django_store_parameterset")
            db.execute("INSERT INTO django_store_parameterset (type, content) VALUES ('SimpleParameterSet', 'y = 9'),"
                       " ('SimpleParameterSet', 'y = 9')")
        db.close()
    done = run_python(UNDER_THE_LOCK + """
print(json.dumps([write(1), write(2), len(connections["default"].queries), before]))
print(json.dumps([sorted(r.tags) for r in project.find_records()]))
print(json.dumps(sorted(str(r.parameters) for r in project.find_records())))
""", project)
    first, second, logged, before = json.loads(done.stdout.splitlines()[0])
    made = ["INSERT django_store_parameterset"] if unique_index else ["SELECT django_store_parameterset",
                                                                      "INSERT django_store_parameterset"]
    expected = ["BEGIN ", "SELECT django_store_record",  # the label claim
                "PRAGMA ",  # has the schema changed since the process asked for the unique indexes?
                *made, "INSERT django_store_record", "INSERT django_store_taggeditem"]
    assert first == expected and second == expected
    assert "INSERT django_store_parameterset" not in before
    assert logged == 0  # upstream runs Django with DEBUG=True: every query kept in memory
    assert json.loads(done.stdout.splitlines()[1]) == [["_initialized_"]] * 3
    assert json.loads(done.stdout.splitlines()[2]) == ["x = 0", "x = 1", "x = 2"]


OUTSIDE_WRITER = """
import sqlite3, sys
db = sqlite3.connect(".smt/records", timeout=0)
insert = "INSERT INTO django_store_parameterset (type, content) VALUES ('SimpleParameterSet', 'outside = 1')"
try:
    with db:
        db.execute(insert)
    print("committed", flush=True)
except sqlite3.OperationalError:  # the write lock is taken: say so, then wait for it as any writer does
    print("waiting", flush=True)
    db = sqlite3.connect(".smt/records", timeout=60)
    with db:
        db.execute(insert)
"""


def test_a_writer_outside_the_lock_between_a_writes_statements_never_fails_it(project: Path) -> None:
    """Plain Sumatra and smtweb write with no lock. On SQLite such a writer can commit between the
    statements of a write made under the lock: after its label claim read the store, before it
    inserts. Django begins a deferred
    transaction, and in WAL mode SQLite fails its first write at once ("database is locked", without
    waiting) when another connection wrote after it read. The write now takes SQLite's write lock as
    its transaction begins (BEGIN IMMEDIATE): that writer waits for it instead."""
    run_python(NEW_RECORD + "new(x=0)", project)  # the store and its tables
    done = run_python(UNDER_THE_LOCK + f"""
import subprocess, sys
writer = []

def meanwhile(execute, sql, params, many, context):
    result = execute(sql, params, many, context)
    if not writer and sql.startswith("SELECT") and any(s.depth for s in smtlock_lock._shared.values()):
        writer.append(subprocess.Popen([sys.executable, "-c", {OUTSIDE_WRITER!r}], stdout=subprocess.PIPE, text=True))
        writer.append(writer[0].stdout.readline().strip())  # it committed, or it waits for this write
    return result

with connections["default"].execute_wrapper(meanwhile):
    record = new(x=1)
writer[0].communicate(timeout=120)
print(json.dumps([writer[1], writer[0].returncode, sorted(str(r.parameters) for r in project.find_records())]))
""", project)
    said, code, stored = json.loads(done.stdout)
    assert said == "waiting" and code == 0
    assert stored == ["x = 0", "x = 1"]


SAME_PARAMETERS = """
import os, sys, smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
project = load_project()
project.record_store._get_models()  # Django set up and the store's tables there before the start
os.write(int(sys.argv[1]), b"r"); os.read(int(sys.argv[2]), 1)
project.new_record(parameters=SimpleParameterSet({"x": 42}), main_file="main.py", label="job-" + sys.argv[3])
"""


@pytest.mark.burst
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_jobs_started_together_with_the_same_new_parameters_store_them_once(new_project, store: str, request,
                                                                              tmp_path: Path) -> None:
    """Jobs started together with the same new parameters each find them not stored before they take
    the lock; the first to hold it makes the row, and the others' INSERT finds it there (the store's
    unique index) and uses it: every record refers to that one row."""
    project = new_project(request.getfixturevalue("pg_uri") if store == "postgres" else "sqlite")
    run_python(NEW_RECORD + "new(x=0)", project)  # the store's tables and unique indexes
    n = 8
    commands = [[sys.executable, "-c", SAME_PARAMETERS, "{ready}", "{go}", str(i)] for i in range(n)]
    burst = start_together(commands, [tmp_path / f"j{i}.log" for i in range(n)], cwd=project)
    assert burst["codes"] == {i: 0 for i in range(n)}, [(tmp_path / f"j{i}.log").read_text() for i in range(n)]
    done = run_python(NEW_RECORD + """
models = project.record_store._get_models()
rows = models.ParameterSet.objects.using(project.record_store._db_label).filter(content="x = 42")
records = models.Record.objects.using(project.record_store._db_label).filter(label__startswith="job-")
print(json.dumps([[row.id for row in rows], sorted(records.values_list("label", flat=True)),
                  sorted(set(records.values_list("parameters_id", flat=True)))]))
""", project)
    made, labels, used = json.loads(done.stdout)
    assert len(made) == 1 and used == made
    assert labels == sorted(f"job-{i}" for i in range(n))


ROWS_MADE = NEW_RECORD + """
import sqlite3, sys
from smtlock._sumatra import rows
if sys.argv[1] == "upstream":
    rows._insert_new = lambda store, db_class, obj: None  # every new row asked for and made by get_or_create,
    rows._insert_row = lambda obj, using: False  # and the record's row inserted by Django's save
inserted, insert_new, insert_row = [], rows._insert_new, rows._insert_row

def counted(store, db_class, obj):
    row = insert_new(store, db_class, obj)
    if row is not None:
        inserted.append(db_class)
    return row

def counted_row(obj, using):
    done = insert_row(obj, using)
    if done:
        inserted.append(type(obj).__name__)
    return done
rows._insert_new, rows._insert_row = counted, counted_row
import os
record = project.new_record(parameters=SimpleParameterSet({"x": 1, "name": "é"}), main_file="deps.py")
record.register(project.default_repository.get_working_copy())  # its dependencies and platform
record.tags, record.reason, record.outcome, record.duration = {"a", "b"}, "why", "what", 1.5
project.add_record(record)
db = sqlite3.connect(".smt/records")
made = {}
for model in sorted(rows.REMEMBERED_MODELS | {"Record", "Record_dependencies", "Record_platforms", "TaggedItem"}):
    table = "django_store_" + model.lower()
    cursor = db.execute(f"SELECT * FROM {table}" + (" WHERE label = ?" if model == "Record" else ""),
                        [record.label] if model == "Record" else [])
    names = [d[0] for d in cursor.description]
    found = [[v.replace(os.getcwd(), "<project>").replace(sys.argv[2], "<project>") if isinstance(v, str) else v
              for n, v in zip(names, row) if n not in ("id", "label", "timestamp")] for row in cursor.fetchall()]
    if model == "Record":  # its tags as Sumatra joins them: in the set's order, which differs by process
        found = [[",".join(sorted(v.split(","))) if n == "tags" else v for n, v in zip(
                 [n for n in names if n not in ("id", "label", "timestamp")], row)] for row in found]
    made[model] = sorted(found, key=str)
stored = project.get_record(record.label)
assert stored.timestamp == record.timestamp and stored.tags == record.tags, (stored.timestamp, record.timestamp)
dependencies = stored.dependencies
print(json.dumps([made, sorted(str(d).replace(os.getcwd(), "<project>") for d in dependencies), sorted(inserted)]))
"""


def test_the_rows_a_new_record_makes_are_those_upstream_makes(new_project) -> None:
    """The first record of a fresh store makes its executable, repository, launch mode, datastores,
    parameter set, dependencies and platform rows in one INSERT each (rows._insert_new), and its own
    row in one INSERT (rows._insert_row): each row, column by column, is the one upstream's
    get_or_create and Django's save make, and so are the record's links to its tags, dependencies
    and platform."""
    import shutil
    project = new_project()
    _a_main_file_with_three_dependencies(project)
    twin = project.parent / "twin"
    shutil.copytree(project, twin, symlinks=True)  # the same repository, commit and empty store
    settings = twin / ".smt" / "project"
    settings.write_text(settings.read_text().replace(str(project), str(twin)))  # its own store, data...
    made = []
    for how, folder in (("smtlock", project), ("upstream", twin)):
        done = subprocess.run([sys.executable, "-c", ROWS_MADE, how, str(project)], cwd=folder, capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        made.append(json.loads(done.stdout))
    (rows, dependencies, inserted), (upstream_rows, upstream_dependencies, upstream_inserted) = made
    assert rows == upstream_rows and dependencies == upstream_dependencies
    assert all(rows[model] for model in rows) and len(rows["Dependency"]) >= 3, rows
    assert set(inserted) == set(rows) - {"Record_dependencies", "Record_platforms", "TaggedItem"}
    assert upstream_inserted == []  # every new row made in one INSERT, and upstream's way


def test_the_prefetchs_compiled_lookup_finds_what_djangos_get_finds(project: Path) -> None:
    """The prefetch looks each value up with SQL compiled once per process (rows._get), for the models
    of text columns (the platform's IP address is Django's to prepare): for every row a record made
    (NULL columns among them), the same row, with the same values, as Django's get; for a value not
    stored, DoesNotExist; for a value stored twice (plain Sumatra's duplicates), MultipleObjectsReturned."""
    _a_main_file_with_three_dependencies(project)
    done = run_python(NEW_RECORD + """
import sqlite3
from smtlock._sumatra import rows
record = project.new_record(parameters=SimpleParameterSet({"x": 1}), main_file="deps.py")
record.register(project.default_repository.get_working_copy())
project.add_record(record)
models, db = project.record_store._get_models(), project.record_store._db_label
checked, compiled = [], []
for name in sorted(rows.REMEMBERED_MODELS):
    model = getattr(models, name)
    for row in model.objects.using(db).all():
        lookup = {f.name: getattr(row, f.attname) for f in model._meta.concrete_fields if not f.primary_key}
        found = rows._get(model, db, lookup)
        if found is rows._UNCOMPILED:  # a column not text (an IP address): Django's get, as upstream's
            checked.append([name, None, [], False])
            continue
        same = model.objects.using(db).get(**lookup)
        checked.append([name, found.pk == same.pk, [getattr(found, f.attname) == getattr(same, f.attname)
                                                     for f in model._meta.concrete_fields], found._state.adding])
missing = {"type": "SimpleParameterSet", "content": "x = 2"}
try:
    rows._get(models.ParameterSet, db, missing)
except models.ParameterSet.DoesNotExist:
    checked.append("not stored")
connection = sqlite3.connect(".smt/records")
with connection:
    connection.execute("DROP INDEX smtlock_unique_django_store_parameterset")
    connection.execute("INSERT INTO django_store_parameterset (type, content) VALUES ('SimpleParameterSet', 'x = 2'),"
                       " ('SimpleParameterSet', 'x = 2')")
try:
    rows._get(models.ParameterSet, db, missing)
except models.ParameterSet.MultipleObjectsReturned:
    checked.append("stored twice")
print(json.dumps(checked))
""", project)
    checked = json.loads(done.stdout)
    assert checked[-2:] == ["not stored", "stored twice"]
    compiled = {name for name, same, *_ in checked[:-2] if same is not None}
    assert compiled == {"Datastore", "Dependency", "Executable", "LaunchMode", "ParameterSet", "Repository"}
    assert all(same and all(values) and not adding for _, same, values, adding in checked[:-2] if same is not None)


def test_the_prefetchs_lookup_prepares_each_value_as_djangos_get_does(project: Path) -> None:
    """A dependency's version is whatever its module's attribute holds (Sumatra's
    find_version_by_attribute): an int, a float, a list... Django's get looks for its text, which is
    what the row upstream made holds; so does the compiled lookup. Bound as it is, SQLite's column
    affinity found another row ('0.3' for 0.1 + 0.2, '1' for True), and sqlite3 before Python 3.11
    cannot bind a list at all (InterfaceError, which failed the write)."""
    done = run_python(NEW_RECORD + """
from smtlock._sumatra import rows
models, db = project.record_store._get_models(), project.record_store._db_label
Dependency = models.Dependency
for version in ("0.3", "1", "[1, 2]", "2"):
    Dependency.objects.using(db).create(name="m", path="/m.py", version=version, diff="", module="python")
found = []
for version in (0.1 + 0.2, True, [1, 2], 2):
    lookup = {"name": "m", "path": "/m.py", "version": version, "diff": "", "source": None, "module": "python"}
    answers = []
    for get in (lambda: rows._get(Dependency, db, lookup), lambda: Dependency.objects.using(db).get(**lookup)):
        try:
            answers.append(get().version)
        except Dependency.DoesNotExist:
            answers.append("not stored")
    found.append(answers)
print(json.dumps(found))
""", project)
    assert json.loads(done.stdout) == [["not stored", "not stored"], ["not stored", "not stored"],
                                       ["[1, 2]", "[1, 2]"], ["2", "2"]]


def test_a_new_rows_insert_that_stored_nothing_fails_the_write(project: Path) -> None:
    """A new record's row is inserted with one INSERT (rows._insert_row); one that stored no row (here
    a trigger of the store's that ignores it) fails the write, which raises and stores nothing of the
    record, where it went on as if the row were there."""
    run_python(NEW_RECORD + "new(x=0)", project)  # the store and its tables
    import sqlite3
    db = sqlite3.connect(str(project / ".smt" / "records"))
    with db:
        db.execute("CREATE TRIGGER ignore_records BEFORE INSERT ON django_store_record BEGIN SELECT RAISE(IGNORE); END")
    db.close()
    done = run_python(NEW_RECORD + """
try:
    new(x=1)
except Exception as error:
    print(json.dumps([type(error).__name__, str(error)]))
""", project)
    name, message = json.loads(done.stdout)
    assert name == "StoreError" and "django_store_record" in message, message
    db = sqlite3.connect(str(project / ".smt" / "records"))
    assert db.execute("SELECT COUNT(*) FROM django_store_record").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM django_store_parameterset WHERE content = 'x = 1'").fetchone()[0] == 0
    db.close()


def test_a_process_sees_a_unique_index_dropped_after_its_first_write(project: Path) -> None:
    """Where the store's table has smtlock's unique index, a new row is made under the lock with an
    INSERT that the index stops from adding one made meanwhile (rows._insert_new). A process asks
    whether the index is there again when SQLite's schema changed since it asked: a table that
    Django remade in a migration, or an index dropped, leaves none, and the write then asks for the
    row first, as upstream does. Here the index is dropped after the process's first write, and a
    writer outside the lock stores the same parameter set between the write's prefetch and its
    lock: one row of it, not two."""
    done = run_python(NEW_RECORD + """
import sqlite3
from django.db import connections
new(x=0)  # the process has asked for the store's unique indexes
outside = sqlite3.connect(".smt/records")
with outside:
    outside.execute("DROP INDEX smtlock_unique_django_store_parameterset")
meanwhile = []

def before_the_write(execute, sql, params, many, context):
    if sql.startswith("BEGIN IMMEDIATE") and not meanwhile:  # after the prefetch found x = 5 not stored
        with outside:
            outside.execute("INSERT INTO django_store_parameterset (type, content) "
                            "VALUES ('SimpleParameterSet', 'x = 5')")
        meanwhile.append(sql)
    return execute(sql, params, many, context)

with connections["default"].execute_wrapper(before_the_write):
    new(x=5)
print(json.dumps([len(meanwhile), outside.execute(
    "SELECT COUNT(*) FROM django_store_parameterset WHERE content = 'x = 5'").fetchone()[0]]))
""", project)
    assert json.loads(done.stdout) == [1, 1]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="sqlite3's setlimit is new in Python 3.11")
def test_a_record_with_more_tags_than_one_statement_holds_keeps_them_all(project: Path) -> None:
    """A record's new tag links are inserted in statements of 300 rows, within SQLite's oldest limit
    of 999 parameters (set here: SQLite builds since 3.32 allow 32766): 700 tags, all kept."""
    done = run_python(NEW_RECORD + """
import sqlite3
from django.db import connections
project.record_store._get_models()
connections["default"].ensure_connection()
connections["default"].connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
record = new(x=1)
record.tags.update(f"t{i}" for i in range(700))
project.add_record(record)
print(len(project.get_record(record.label).tags))
""", project)
    assert done.stdout.strip() == "701"


def _a_main_file_with_three_dependencies(project: Path) -> None:
    """``deps.py``, committed, importing three packages of the project."""
    for name in ("pkg_a", "pkg_b", "pkg_c"):
        (project / name).mkdir()
        (project / name / "__init__.py").write_text("")
    (project / "deps.py").write_text("import pkg_a\nimport pkg_b\nimport pkg_c\n")
    subprocess.run(["git", "add", "deps.py", "pkg_a", "pkg_b", "pkg_c"], cwd=project, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "deps"], cwd=project,
                   check=True)


def test_a_records_dependency_and_platform_links_are_added_in_one_statement_each_once(project: Path) -> None:
    """Upstream adds each dependency and each platform link with its own statement, in every write of
    a record (@smt_logged writes each call twice). Here a write adds the links it has not seen
    committed together, one statement for each relation (rows.add_links), and the record's
    dependencies and platform are stored as found."""
    _a_main_file_with_three_dependencies(project)
    done = run_python(UNDER_THE_LOCK + """
record = project.new_record(parameters=SimpleParameterSet({"x": 1}), main_file="deps.py")
written = []
with connections["default"].execute_wrapper(watch):
    for outcome in ("registered", "done"):
        seen.clear()
        record.outcome = outcome
        project.add_record(record)
        written.append([s for s in seen if "_dependencies" in s or "_platforms" in s])
stored = project.get_record(record.label)
print(json.dumps([written, sorted(d.name for d in record.dependencies), sorted(d.name for d in stored.dependencies),
                  len(record.platforms), len(stored.platforms)]))
""", project)
    written, found, stored, platforms, stored_platforms = json.loads(done.stdout)
    assert written == [["INSERT django_store_record_dependencies", "INSERT django_store_record_platforms"], []]
    assert found == stored == ["pkg_a", "pkg_b", "pkg_c"]
    assert platforms == stored_platforms == 1


LINKS = UNDER_THE_LOCK + """
import os
from django.db.models.signals import m2m_changed, pre_init
Record = project.record_store._get_models().Record
made, sent = [], []
for relation in (Record.dependencies.through, Record.platforms.through):
    pre_init.connect(lambda sender, **kw: made.append(sender.__name__), sender=relation, weak=False)
if os.environ.get("LISTENING"):
    m2m_changed.connect(lambda sender, action, pk_set, **kw: sent.append([action, len(pk_set or ())]),
                        sender=Record.dependencies.through, weak=False)
record = project.new_record(parameters=SimpleParameterSet({"x": 1}), main_file="deps.py")
record.outcome = "registered"
project.add_record(record)  # its dependencies and platform, found after new_record's first write
stored = project.get_record(record.label)
print(json.dumps([made, sent, sorted(d.name for d in stored.dependencies), len(stored.platforms)]))
"""


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_records_links_are_inserted_without_a_model_instance_each_unless_someone_listens(new_project, store: str,
                                                                                          request) -> None:
    """Django's ``add`` inserts a record's links through ``bulk_create``, which builds a model instance
    for each link (13 of an ``@smt_logged`` call, ~0.3 ms of the lock's hold in its first write); here
    the same INSERT is made from the ids (rows._insert_links). Where an ``m2m_changed`` receiver
    listens, Django's ``add`` makes them, and sends the signal as upstream does."""
    project = new_project(request.getfixturevalue("pg_uri") if store == "postgres" else "sqlite")
    _a_main_file_with_three_dependencies(project)
    quiet = json.loads(run_python(LINKS, project).stdout.splitlines()[-1])
    assert quiet == [[], [], ["pkg_a", "pkg_b", "pkg_c"], 1]  # before: 4 instances made
    listened = json.loads(run_python(LINKS, project, env={**os.environ, "LISTENING": "1"}).stdout.splitlines()[-1])
    assert listened[1] == [["pre_add", 3], ["post_add", 3]] and listened[2:] == [["pkg_a", "pkg_b", "pkg_c"], 1]
    assert listened[0] == ["Record_dependencies"] * 3  # Django's add, for the relation listened to only


def test_a_process_remembers_the_links_of_its_latest_records_only(project: Path) -> None:
    """A long session (a notebook's thousands of calls) must not keep every record's links: the
    process keeps those of the LINKS_KEPT records it wrote last. A record whose links it forgot is
    written again with its links added again, none doubled."""
    _a_main_file_with_three_dependencies(project)
    done = run_python(NEW_RECORD + """
from smtlock._sumatra import rows
rows.LINKS_KEPT = 2
records = []
for x in range(4):
    record = project.new_record(parameters=SimpleParameterSet({"x": x}), main_file="deps.py")
    project.add_record(record)  # registered: its dependencies and platform linked
    records.append(record)
kept = len(rows._links)
records[0].outcome = "again"  # its links forgotten: added again
project.add_record(records[0])
stored = [project.get_record(record.label) for record in records]
print(json.dumps([kept, [sorted(d.name for d in record.dependencies) for record in stored],
                  [len(record.platforms) for record in stored], stored[0].outcome]))
""", project)
    kept, dependencies, platforms, outcome = json.loads(done.stdout)
    assert kept == 2
    assert dependencies == [["pkg_a", "pkg_b", "pkg_c"]] * 4 and platforms == [1] * 4 and outcome == "again"


def test_a_process_remembers_the_rows_it_used_last_only(project: Path) -> None:
    """Each call of a sweep has a parameter set of its own: a long session must not remember them
    all. The process keeps the ROWS_KEPT rows it used last; a value whose row it forgot is looked up
    in the store again, and no row is made twice."""
    done = run_python(NEW_RECORD + """
from smtlock._sumatra import rows
rows.ROWS_KEPT = 3
labels = [new(x=x % 4).label for x in range(8)]  # four parameter sets, each used twice, the first again last
kept = len(rows._rows)
records = [project.get_record(label) for label in labels]
import sqlite3
sets = sqlite3.connect(".smt/records").execute("SELECT COUNT(*) FROM django_store_parameterset").fetchone()[0]
print(json.dumps([kept, [record.parameters.as_dict()["x"] for record in records], sets]))
""", project)
    kept, xs, sets = json.loads(done.stdout)
    assert kept == 3
    assert xs == [0, 1, 2, 3, 0, 1, 2, 3] and sets == 4


def test_a_new_record_and_an_updated_one_keep_exactly_their_tags(project: Path) -> None:
    """A record's first write links its row to all its tags in one INSERT (rows.update_tags); a later
    write of the same record changes its links the upstream way."""
    done = run_python(NEW_RECORD + """
import copy
twin = copy.deepcopy(new(x=1))
twin.label += "-twin"
twin.tags = {"a", "b", "c"}
project.add_record(twin)     # a new row: its three links made at once
tags = [sorted(project.get_record(twin.label).tags)]
twin.tags = {"b", "d"}
project.add_record(twin)     # an update: one link removed, one added
tags.append(sorted(project.get_record(twin.label).tags))
other = new(x=2)
other.tags.update({"a", "e"})
project.add_record(other)
tags.append(sorted(project.get_record(other.label).tags))
print(json.dumps(tags))
""", project)
    assert json.loads(done.stdout) == [["a", "b", "c"], ["b", "d"], ["_initialized_", "a", "e"]]


ENDED = UNDER_THE_LOCK + """
import os, sqlite3, subprocess, sys
from smtlock._sumatra import djangostore, rows
from sumatra.core import STATUS_FORMAT
SMT = [os.path.join(os.path.dirname(sys.executable), "smt")]

def run(upstream):
    record = project.new_record(parameters=SimpleParameterSet({"x": 1}), main_file="deps.py")  # stored
    record.tags = {STATUS_FORMAT % "running", "sweep"}
    record.stdout_stderr = "Not yet captured."
    project.save_record(record)                        # stored running
    subprocess.run(SMT + ["tag", "person", record.label], check=True)  # a person's edits while it runs
    subprocess.run(SMT + ["comment", record.label, "looks odd"], check=True)
    record.tags = {STATUS_FORMAT % "finished", "sweep"}
    record.duration, record.stdout_stderr, record.outcome = 1.5, "line\\n", "converged"
    seen.clear()
    saved, prefetch, prefetched = djangostore.save_changed, rows.prefetch, []
    if upstream:
        djangostore.save_changed = lambda *args: False  # upstream's whole save instead
    rows.prefetch = lambda *args: prefetched.append(prefetch(*args))
    try:
        with connections["default"].execute_wrapper(watch):
            project.save_record(record)                # the run ended
    finally:
        djangostore.save_changed, rows.prefetch = saved, prefetch
    return record.label, [list(seen), len(prefetched)]

def stored(label):
    db = sqlite3.connect(".smt/records")
    db.row_factory = sqlite3.Row
    row = dict(db.execute("SELECT * FROM django_store_record WHERE label = ?", [label]).fetchone())
    links = {}
    for table in ("dependencies", "platforms", "input_data"):
        links[table] = sorted([v for k, v in dict(r).items() if k not in ("id", "record_id")] for r in db.execute(
            f"SELECT * FROM django_store_record_{table} WHERE record_id = ?", [row["db_id"]]))
    links["tags"] = sorted(r[0] for r in db.execute(
        "SELECT t.name FROM django_store_taggeditem i JOIN django_store_tag t ON t.id = i.tag_id "
        "WHERE i.object_id = ?", [row["db_id"]]))
    return {k: v for k, v in row.items() if k not in ("db_id", "label", "timestamp")}, links

(whole, whole_sql), (narrow, narrow_sql) = run(upstream=True), run(upstream=False)
print(json.dumps([stored(whole), stored(narrow), whole_sql, narrow_sql]))
"""


def test_an_ended_record_is_stored_as_upstream_stores_it_in_one_update(project: Path) -> None:
    """A record's save after its run ended (status, duration, output, outcome changed, nothing else)
    updates those columns and its tag links (djangostore.save_changed); upstream rebuilt the whole row
    under the lock. What is stored must be what upstream's whole save stores, a person's tag and
    comment made while it ran merged in the same way: every column and every link. No related row is
    looked up before the lock either (upstream's save needs them: rows.prefetch finds them first)."""
    _a_main_file_with_three_dependencies(project)
    done = run_python(ENDED, project)
    whole, narrow, whole_sql, narrow_sql = json.loads(done.stdout)
    assert narrow == whole
    row, links = narrow
    assert links["tags"] == ["_finished_", "person", "sweep"] and row["outcome"] == "looks odd\nconverged"
    assert row["duration"] == 1.5 and row["stdout_stderr"] == "line\n" and links["dependencies"]
    assert narrow_sql == [["BEGIN ", "SELECT django_store_record", "UPDATE django_store_record",
                           "SELECT django_store_taggeditem", "DELETE django_store_taggeditem",
                           "INSERT django_store_taggeditem"], 0]  # and no related row looked up first
    assert len(whole_sql[0]) > len(narrow_sql[0])


def test_labels_with_like_wildcards_are_claimed_exactly(project: Path) -> None:
    """The label claim finds taken labels with a LIKE query compiled once; a label holding LIKE's
    wildcards or its escape character must still see its own earlier use."""
    done = run_python(NEW_RECORD + r"""
wanted = ["run_1", "run%", "run%", "run\\x", "run\\x", "runX1", "run_1"]
print(json.dumps([new(label=label, i=i).label for i, label in enumerate(wanted)]))
""", project)
    assert json.loads(done.stdout) == ["run_1", "run%", "run%_1", "run\\x", "run\\x_1", "runX1", "run_1_1"]


BY_LABEL = NEW_RECORD + """
project.record_store._get_models()  # Django configured, as by the first store call
from django.db import connections
from smtlock._lock import lock as smtlock_lock
connection = connections["default"]
ran = []

def watch(execute, sql, params, many, context):
    if any(shared.depth for shared in smtlock_lock._shared.values()) and "django_store_record" in sql:
        ran.append((sql, params))
    return execute(sql, params, many, context)

first = new(x=0)
fields = [f.column for f in project.record_store._get_models().Record._meta.concrete_fields if f.column != "db_id"]
columns = ", ".join(connection.ops.quote_name(f) for f in fields)
copied = ", ".join("%s" if f == "label" else connection.ops.quote_name(f) for f in fields)
with connection.cursor() as cursor:  # a store of some size, its statistics known, as a real one
    cursor.executemany(f"INSERT INTO django_store_record ({columns}) SELECT {copied} FROM django_store_record"
                       " WHERE label = %s", [(f"old-{n}", first.label) for n in range(300)])
    cursor.execute("ANALYZE")
with connection.execute_wrapper(watch):
    record = new(x=1)          # the label claim
    record.outcome = "done"
    project.add_record(record)  # an update: the record's row looked up by its label
plans = []
with connection.cursor() as cursor:
    for sql, params in ran:
        if sql.startswith("SELECT"):
            cursor.execute(("EXPLAIN " if connection.vendor == "postgresql" else "EXPLAIN QUERY PLAN ") + sql, params)
            plans.append([str(row[-1]) for row in cursor.fetchall()])
print(json.dumps(plans))
"""


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_write_finds_records_by_label_through_an_index(new_project, store: str, request) -> None:
    """Under the lock a write looks records up by label twice (its label claim; an update's row).
    Sumatra's record table has no index on the label, so each read every record of the project and
    the lock was held longer the more records the store had; smtlock adds one (LABEL_INDEX). On
    SQLite the claim is a range, as SQLite's LIKE ignores case and cannot use an index."""
    project = new_project(request.getfixturevalue("pg_uri") if store == "postgres" else "sqlite")
    plans = json.loads(run_python(BY_LABEL, project).stdout)
    assert len(plans) == 2, plans

    def by_label(line: str) -> bool:  # the index's condition names the label, not only the project
        if line.strip().startswith("Index Cond:"):  # PostgreSQL
            return "label" in line
        return re.search(r"django_store_record USING (COVERING )?INDEX \w+ \([^)]*\blabel\b", line) is not None
    assert all(any(by_label(line) for line in plan) for plan in plans), plans
