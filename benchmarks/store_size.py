"""What a run, a write and a listing cost as the store grows: stores of ~100, 10,000 and 100,000 records.

    python benchmarks/store_size.py [--sizes 100 10000 100000] [--stores sqlite postgres] [--rounds 3]
                                    [--writes 30] [--label now]          (adds to benchmarks/store_size.json)

Each store starts with real records (three API writes with output data and tags, two ``smt run``
jobs), then is filled to its size with copies of them (``smtlock._harness.fill``: bulk inserts, each
copy with its own label, parameter set, output data key and tag links, the original's executable,
dependencies and platform), checked by ``smtlock doctor``, and never analysed. Then, in ``--rounds``
rounds with the sizes interleaved, each store is measured: ``smt run`` of the stand-in simulation
(wall), plain Sumatra and with ``smtlock enable``; ``smt list`` (wall), both; the record write's held
time with smtlock (p50 of ``--writes`` new records, and of as many updates of a stored record's
status, the save each ``smt run`` makes) beside plain Sumatra's time for the same store calls; and
``smtlock doctor`` (wall). Plain Sumatra is measured on the same stores, so it has smtlock's indexes
too. Medians of the rounds, and each figure at the largest size over the smallest.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from smtlock._harness.burst import make_project  # noqa: E402

BIN = Path(sys.executable).parent
SEED = r"""
import datetime, sys
import smtlock
from sumatra.datastore.base import DataKey
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
from smtlock._harness.fill import fill
project = load_project()
for i in range(3):
    record = project.new_record(parameters=SimpleParameterSet({"job": i, "rec": 0}), main_file="main.py")
    record.output_data = [DataKey(f"out{i}.dat", "0" * 40, datetime.datetime(2026, 1, 1), mimetype="text/plain")]
    record.tags = {"sweep", f"t{i % 2}"}
    record.outcome = "done"
    project.add_record(record)
print(fill(project.record_store, project.name, int(sys.argv[1])))
"""
#: ``writes`` new records and a status save of each, timed: held (smtlock; the new record's write is
#: ``new_record``'s) or the store call itself (plain Sumatra: the status save, ``save_record``)
WRITES = r"""
import json, statistics, sys, time
plain = sys.argv[2] == "plain"
if not plain:
    import smtlock
    from smtlock._lock import lock as smtlock_lock
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
project = load_project()
project.record_store._get_models()
new, update = [], []
if not plain:
    smtlock_lock.enable_stats()
for i in range(int(sys.argv[1])):
    record = project.new_record(parameters=SimpleParameterSet({"job": 1000 + i, "rec": 1}), main_file="main.py")
    record.tags = {"_finished_"}  # the status save at the end of a run
    start = time.perf_counter()
    project.save_record(record)
    update.append(time.perf_counter() - start)
if not plain:
    stats = smtlock_lock.collected_stats()
    new = [h for p, _, h in stats if p == "add_record"]
    update = [h for p, _, h in stats if p == "save_record"]
print(json.dumps({"new_ms": round(1000 * statistics.median(new), 2) if new else None,
                  "update_ms": round(1000 * statistics.median(update), 2)}))
"""
#: plain Sumatra's first write of a new record, timed alone (``new_record`` writes it inside)
PLAIN_NEW = r"""
import json, statistics, sys, time
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
import sumatra.projects
project = load_project()
project.record_store._get_models()
times = []
original = sumatra.projects.Project.add_record
def timed(self, record):
    start = time.perf_counter()
    original(self, record)
    times.append(time.perf_counter() - start)
sumatra.projects.Project.add_record = timed
for i in range(int(sys.argv[1])):
    project.new_record(parameters=SimpleParameterSet({"job": 2000 + i, "rec": 2}), main_file="main.py")
print(json.dumps({"new_ms": round(1000 * statistics.median(times), 2)}))
"""


def run(command: List[str], cwd: Path) -> float:
    """Wall seconds of ``command``; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} in {cwd}: {done.stdout[-2000:]}{done.stderr[-3000:]}")
    return time.perf_counter() - start


def python(code: str, cwd: Path, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{cwd}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def switch(project: Path, on: bool) -> None:
    run([str(BIN / "smtlock"), "enable" if on else "disable", str(project)], project)


def build(project: Path, size: int) -> dict:
    """Real records, then copies up to ``size``; the doctor's verdict."""
    switch(project, True)
    for job in range(2):
        run([str(BIN / "smt"), "run", "params.txt", f"job={job}", "rec=0"], project)
    start = time.perf_counter()
    added = python(SEED, project, str(size))
    filled = time.perf_counter() - start
    doctor = subprocess.run([str(BIN / "smtlock"), "doctor", str(project)], capture_output=True, text=True)
    if doctor.returncode:
        raise SystemExit(f"doctor on {project}: {doctor.stdout}{doctor.stderr}")
    return {"added": added, "fill_s": round(filled, 1)}


def measure(project: Path, writes: int) -> Dict[str, float]:
    figures: Dict[str, float] = {}
    for mode in ("plain", "smtlock"):
        switch(project, mode == "smtlock")
        figures[f"smt_run_s/{mode}"] = run([str(BIN / "smt"), "run", "params.txt", "job=7", "rec=7"], project)
        figures[f"smt_list_s/{mode}"] = run([str(BIN / "smt"), "list"], project)
        held = python(WRITES, project, str(writes), mode)
        if mode == "plain":
            held["new_ms"] = python(PLAIN_NEW, project, str(writes))["new_ms"]
        figures[f"write_new_ms/{mode}"] = held["new_ms"]
        figures[f"write_update_ms/{mode}"] = held["update_ms"]
    figures["doctor_s/smtlock"] = run([str(BIN / "smtlock"), "doctor", str(project)], project)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 10000, 100000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writes", type=int, default=30)
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    os.environ["PATH"] = f"{BIN}:{os.environ['PATH']}"
    results: dict = {}
    server = None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            projects = {}
            for store in args.stores:
                for size in args.sizes:
                    uri = "sqlite"
                    if store == "postgres":
                        if server is None:
                            from pgserver import Cluster
                            server = Cluster()
                            server.sql("CREATE ROLE smt LOGIN PASSWORD 'bench' CREATEDB")
                        server.sql(f"CREATE DATABASE size{size} OWNER smt")
                        uri = server.uri("smt", "bench", f"size{size}")
                    project = make_project(Path(tmp) / f"{store}-{size}", uri)
                    results.setdefault(store, {})[str(size)] = {"build": build(project, size)}
                    projects[store, size] = project
                    print(store, size, results[store][str(size)]["build"], flush=True)
            rounds: Dict[tuple, List[Dict[str, float]]] = {}
            for n in range(args.rounds):
                for key, project in projects.items():
                    rounds.setdefault(key, []).append(measure(project, args.writes))
                    print(n, key, rounds[key][-1], flush=True)
        finally:
            if server is not None:
                server.stop()
    for (store, size), figures in rounds.items():
        results[store][str(size)]["median"] = {name: round(statistics.median(f[name] for f in figures), 3)
                                               for name in figures[0]}
    for store in args.stores:
        low, high = (results[store][str(size)]["median"] for size in (min(args.sizes), max(args.sizes)))
        results[store]["ratio_largest_to_smallest"] = {name: round(high[name] / low[name], 2) for name in low}
    print(json.dumps(results, indent=1))
    out = HERE / "store_size.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = {"command": "python benchmarks/store_size.py --sizes " + " ".join(map(str, args.sizes))
                        + f" --stores {' '.join(args.stores)} --rounds {args.rounds} --writes {args.writes}"
                        f" --label {args.label}",
                        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}", **results}
    out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
