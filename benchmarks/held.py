"""How long one record write holds the project's lock, with no contention at all, and how many SQL
statements run while it is held; on SQLite and on a throwaway local PostgreSQL server.

    python benchmarks/held.py [--writes 300] [--jobs 30] [--stored 20000] [--label after]
                              [--against DIR [--rounds 3]]    (adds to benchmarks/held.json)

One process makes a project and writes records with the pattern of the README's first example:
``new_record`` (outside the lock), then ``with SMTLock(project): add_record; save``. Each write is
timed from inside (smtlock's own lock statistics, the time between acquiring and releasing), per
purpose: ``add_record`` (the record write) and ``user`` (the whole ``with`` block around it).
``first_write``: the same, one after another, in ``--jobs`` fresh processes that each write one
record, as each job of a sweep does (nothing remembered yet; statements counted for ``add_record``).
``stored_records``: the record write again, in a store that already holds ``--stored`` records.
``--against DIR`` (another checkout of smtlock, e.g. ``git worktree add /tmp/before HEAD~3``): the
record write and the first write measured with both, alternating ``--rounds`` times in this one run
(the machine is shared: only ratios mean anything), medians and this/against ratios under ``against``.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from smtlock._harness.burst import make_project  # noqa: E402

WRITER = r"""
import json, statistics, sys, time
import smtlock
from smtlock._lock import lock as smtlock_lock
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project

writes = int(sys.argv[1])
first = sys.argv[2:] == ["first"]  # one write in a fresh process: counted from the first
stored = int(sys.argv[2]) if sys.argv[2:3] and sys.argv[2].isdigit() else 0  # records put in the store first
project = load_project()
statements = []  # per outermost lock acquisition: statements run while it was held
counting = [0]

def count(execute, sql, params, many, context):
    if any(shared.depth for shared in smtlock_lock._shared.values()):
        counting[0] += 1
    return execute(sql, params, many, context)

def write(i):
    counting[0] = 0
    record = project.new_record(parameters=SimpleParameterSet({"i": i}), main_file="main.py")
    record.outcome = "done"
    if first:  # the statements of new_record's write
        statements.append(counting[0])
        return
    counting[0] = 0
    with smtlock.SMTLock(project):
        project.add_record(record)
        project.save()
    statements.append(counting[0])

if not first:
    write(-1)  # first use: Django set-up, migration check, connection
project.record_store._get_models()
from django.db import connections
if stored:  # copies of the first record under other labels, the store's statistics brought up to date
    connection = connections[project.record_store._db_label]
    fields = [f.column for f in project.record_store._get_models().Record._meta.concrete_fields if f.column != "db_id"]
    columns = ", ".join(connection.ops.quote_name(f) for f in fields)
    copied = ", ".join("%s" if f == "label" else connection.ops.quote_name(f) for f in fields)
    first_label = project.record_store.labels(project.name)[0]
    with connection.cursor() as cursor:
        cursor.executemany(f"INSERT INTO django_store_record ({columns}) SELECT {copied} FROM django_store_record"
                           " WHERE label = %s", [(f"stored-{n}", first_label) for n in range(stored)])
        cursor.execute("ANALYZE")
    connection.close()
with connections[project.record_store._db_label].execute_wrapper(count):
    smtlock_lock.enable_stats()
    for i in range(writes):
        write(i)
stats = smtlock_lock.collected_stats()

def pct(values, q):
    values = sorted(values)
    return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 2)

out = {}
for purpose in sorted({p for p, _, _ in stats}):
    held = [h for p, _, h in stats if p == purpose]
    out[purpose] = {"n": len(held), "held_p50_ms": pct(held, 0.5), "held_p99_ms": pct(held, 0.99)}
out["statements_under_lock"] = {"p50": statistics.median(statements), "max": max(statements)}
print(json.dumps(out))
"""


def _env(tree: Optional[str]) -> Optional[dict]:
    """The environment that imports smtlock from ``tree`` (None: this checkout)."""
    return {**os.environ, "PYTHONPATH": tree} if tree else None


def measure(project: Path, writes: int, stored: int = 0, tree: Optional[str] = None) -> dict:
    done = subprocess.run([sys.executable, "-c", WRITER, str(writes), str(stored)], cwd=project,
                          capture_output=True, text=True, env=_env(tree))
    if done.returncode:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_first(project: Path, jobs: int, tree: Optional[str] = None) -> dict:
    """One record written by each of ``jobs`` fresh processes, one after another."""
    held, statements = [], []
    for _ in range(jobs):
        done = subprocess.run([sys.executable, "-c", WRITER, "1", "first"], cwd=project, capture_output=True, text=True,
                              env=_env(tree))
        if done.returncode:
            raise SystemExit(done.stderr)
        out = json.loads(done.stdout.strip().splitlines()[-1])
        held.append(out["add_record"]["held_p50_ms"])
        statements.append(out["statements_under_lock"]["p50"])
    held.sort()
    return {"n": jobs, "held_p50_ms": held[len(held) // 2], "held_p99_ms": held[min(jobs - 1, int(0.99 * jobs))],
            "statements_under_lock": statistics.median(statements)}


def stored_records(project: Path, args: argparse.Namespace) -> dict:
    """The record write (``add_record``) with ``--stored`` records already in the store."""
    return {"records": args.stored, **measure(project, args.writes, args.stored)["add_record"]}


def side_by_side(new_project: Any, args: argparse.Namespace) -> dict:
    """This checkout and ``--against``, alternating, each in projects of its own: median held p50s
    (``add_record``, ``user``, ``first_write``) and the ratios this/against."""
    figures: dict = {"this": {}, "against": {}}
    for n in range(args.rounds):
        for who, tree in (("this", None), ("against", args.against)):
            out = measure(new_project(f"{who}-{n}"), args.writes, tree=tree)
            first = measure_first(new_project(f"{who}-first-{n}"), args.jobs, tree=tree)
            for key, value in (("add_record", out["add_record"]["held_p50_ms"]),
                               ("user", out["user"]["held_p50_ms"]), ("first_write", first["held_p50_ms"])):
                figures[who].setdefault(key, []).append(value)
    medians = {who: {k: statistics.median(v) for k, v in f.items()} for who, f in figures.items()}
    return {"against": args.against, "rounds": args.rounds, "held_p50_ms": medians,
            "ratio": {k: round(medians["this"][k] / medians["against"][k], 3) for k in medians["this"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=30, help="fresh processes for first_write")
    parser.add_argument("--stored", type=int, default=20000,
                        help="records in the store for the stored_records measurement")
    parser.add_argument("--label", default="now", help="the name of this measurement in held.json")
    parser.add_argument("--against", help="another checkout of smtlock to measure beside this one")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --against")
    args = parser.parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.against:
            results["sqlite"] = {"side_by_side": side_by_side(lambda name: make_project(Path(tmp) / name), args)}
            from pgserver import Cluster
            server = Cluster()
            try:
                server.sql("CREATE ROLE smt LOGIN PASSWORD 'bench' CREATEDB")

                def pg_project(name: str) -> Path:
                    db = name.replace("-", "_")
                    server.sql(f"CREATE DATABASE {db} OWNER smt")
                    return make_project(Path(tmp) / f"pg-{name}", server.uri("smt", "bench", db))
                results["postgres"] = {"side_by_side": side_by_side(pg_project, args)}
            finally:
                server.stop()
            return _save(results, args, f" --against {args.against} --rounds {args.rounds}")
        results["sqlite"] = measure(make_project(Path(tmp) / "sqlite"), args.writes)
        results["sqlite"]["first_write"] = measure_first(make_project(Path(tmp) / "sqlite-first"), args.jobs)
        results["sqlite"]["stored_records"] = stored_records(make_project(Path(tmp) / "sqlite-stored"), args)
        from pgserver import Cluster
        server = Cluster()
        try:
            server.sql("CREATE ROLE smt LOGIN PASSWORD 'bench' CREATEDB")
            server.sql("CREATE DATABASE held OWNER smt")
            results["postgres"] = measure(make_project(Path(tmp) / "pg", server.uri("smt", "bench", "held")),
                                          args.writes)
            server.sql("CREATE DATABASE first OWNER smt")
            results["postgres"]["first_write"] = measure_first(
                make_project(Path(tmp) / "pg-first", server.uri("smt", "bench", "first")), args.jobs)
            server.sql("CREATE DATABASE stored OWNER smt")
            results["postgres"]["stored_records"] = stored_records(
                make_project(Path(tmp) / "pg-stored", server.uri("smt", "bench", "stored")), args)
        finally:
            server.stop()
    _save(results, args, "")


def _save(results: dict, args: argparse.Namespace, extra: str) -> None:
    print(json.dumps(results, indent=1))
    out = HERE / "held.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = {"command": f"python benchmarks/held.py --writes {args.writes} --jobs {args.jobs} "
                                   f"--stored {args.stored} --label {args.label}{extra}",
                        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
                        **results}
    out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
