"""The stress harness: N simultaneous jobs against one project, then a recount of what survived.

Each job is its own OS process (``_job.py``), released with the others by a start barrier once it has
imported everything. Afterwards a fresh process reads the store (not the jobs' reports) and counts
expected vs found by the jobs' parameters, duplicates, distinct labels and duplicate table rows.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

__all__ = ["MODES", "make_project", "run_burst", "census", "verify", "run_mode", "mask_uri",
           "store_uri_for"]

MODES = ("raw", "locked", "decorator", "smt-run")
PROJECT_NAME = "stress"
JOB_SCRIPT = str(Path(__file__).with_name("_job.py"))

MAIN_PY = '''"""A stand-in simulation for smtlock stress runs."""
import sys


def simulate(job, rec, steps=1000):
    total = sum(i * (job + 1) for i in range(steps))
    print(f"job {job} record {rec} total {total}")
    return total


if __name__ == "__main__":  # smt run: main.py <parameter file>
    values = dict(line.split("=", 1) for line in open(sys.argv[1]) if "=" in line)
    simulate(int(values["job"]), int(values["rec"]))
'''


def mask_uri(uri: str) -> str:
    """The URI with any password replaced by ``***`` (safe to print)."""
    from urllib.parse import urlsplit, urlunsplit
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _smt(args: List[str], cwd: Path) -> None:
    """Run Sumatra's own ``smt`` (no smtlock loaded) and raise with its output if it fails."""
    code = "import sys; from sumatra.cli import smt; sys.argv[0] = 'smt'; sys.exit(smt())"
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"smt {' '.join(args)} failed: {done.stdout}{done.stderr}".strip())


def store_uri_for(store: str, project_dir: Path) -> Optional[str]:
    """The ``smt init -s`` value for a ``--store`` choice (None: Sumatra's default SQLite store)."""
    if store == "sqlite":
        return None
    if store == "shelve":
        return str(project_dir / ".smt" / "records.shelf")
    return store


def make_project(project_dir: Path, store: str = "sqlite") -> Path:
    """A fresh git repository with a main.py, committed, and ``smt init`` done by plain Sumatra."""
    project_dir.mkdir(parents=True)
    (project_dir / "main.py").write_text(MAIN_PY)
    (project_dir / "params.txt").write_text("job = 0\nrec = 0\n")
    git = ["git", "-c", "user.name=smtlock", "-c", "user.email=smtlock@localhost"]
    for args in (["init", "-q"], ["add", "main.py", "params.txt"], ["commit", "-q", "-m", "stress"]):
        subprocess.run(git + args, cwd=project_dir, check=True, capture_output=True)
    uri = store_uri_for(store, project_dir)
    _smt(["init", "-e", sys.executable, "-m", "main.py", *(["-s", uri] if uri else []), PROJECT_NAME],
         project_dir)
    return project_dir


def run_burst(project_dir: Path, mode: str, jobs: int, records: int, work_dir: Path,
              progress: Optional[Callable[[int, int, int], None]] = None) -> Dict[str, Any]:
    """Start ``jobs`` processes, release them together, wait for all; return exit codes, reports, wall."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    procs = {}
    for job in range(jobs):
        log = open(work_dir / f"job-{job}.log", "wb")
        args = [sys.executable, JOB_SCRIPT, mode, str(project_dir), str(job), str(records),
                str(ready_w), str(go_r), str(work_dir / f"job-{job}.json")]
        proc = subprocess.Popen(args, pass_fds=(ready_w, go_r), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        procs[proc.pid] = (job, proc)
    os.close(ready_w)
    os.close(go_r)
    with os.fdopen(ready_r, "rb") as ready:  # EOF once every job has said ready (or died)
        ready.read()
    start = time.perf_counter()
    os.close(go_w)  # the barrier opens
    codes: Dict[int, int] = {}
    while len(codes) < jobs:
        pid, status = os.wait()
        if pid in procs:
            job, proc = procs[pid]
            proc.returncode = codes[job] = os.waitstatus_to_exitcode(status)
            if progress:
                failed = sum(1 for c in codes.values() if c)
                progress(len(codes) - failed, jobs - len(codes), failed)
    wall = time.perf_counter() - start
    reports = []
    for job in range(jobs):
        path = work_dir / f"job-{job}.json"
        reports.append(json.loads(path.read_text()) if path.exists() else {"job": job, "error": None})
    return {"codes": codes, "reports": reports, "wall_s": wall}


def census(store: str, project_dir: str, project_name: str = PROJECT_NAME) -> Dict[str, Any]:
    """Read the store directly (the project file may be torn): every record's label, job, rec and
    tags, and duplicate rows in Sumatra's tables. Run it in a fresh process per store."""
    from sumatra.recordstore import get_record_store
    from sumatra.recordstore.django_store import DjangoRecordStore
    from .doctor import duplicate_rows
    uri = store_uri_for(store, Path(project_dir)) or str(Path(project_dir) / ".smt" / "records")
    record_store = get_record_store(uri)
    rows = []
    for record in record_store.list(project_name):
        params = record.parameters.as_dict() if hasattr(record.parameters, "as_dict") else {}
        rows.append({"label": record.label, "job": params.get("job"), "rec": params.get("rec"),
                     "tags": sorted(record.tags), "duration": record.duration,
                     "stdout": record.stdout_stderr})
    dup = duplicate_rows(record_store) if isinstance(record_store, DjangoRecordStore) else {}
    return {"records": rows, "duplicate_rows": dup}


def _census_in_subprocess(store: str, project_dir: Path) -> Dict[str, Any]:
    code = ("import json, sys; from smtlock.stress import census; "
            "print(json.dumps(census(sys.argv[1], sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, store, str(project_dir)], cwd=project_dir,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"could not read the store of {project_dir}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verify(found_rows: List[Dict[str, Any]], jobs: int, records: int) -> Dict[str, Any]:
    """Compare the records found with the (job, rec) pairs the burst should have left."""
    expected = {(j, r) for j in range(jobs) for r in range(records)}
    found = Counter((row["job"], row["rec"]) for row in found_rows)
    return {
        "expected": len(expected),
        "found": len(found_rows),
        "lost": len(expected - set(found)),
        "duplicates": sum(n - 1 for n in found.values() if n > 1),
        "unexpected": sum(n for pair, n in found.items() if pair not in expected),
        "distinct_labels": len({row["label"] for row in found_rows}),
    }


def _percentiles_ms(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None}
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return {"p50": round(statistics.median(values) * 1000, 3), "p99": round(p99 * 1000, 3)}


def run_mode(mode: str, store: str, jobs: int, records: int, base_dir: Path,
             progress: Optional[Callable[[int, int, int], None]] = None) -> Dict[str, Any]:
    """One run: a fresh project under ``base_dir/<mode>``, the burst, the recount, the figures."""
    run_dir = base_dir / mode
    if run_dir.exists():
        shutil.rmtree(run_dir)
    project_dir = make_project(run_dir / f"project-{mode}", store)
    burst = run_burst(project_dir, mode, jobs, records, run_dir / "jobs", progress)
    counted = _census_in_subprocess(store, project_dir)
    result: Dict[str, Any] = {"mode": mode, "store": mask_uri(store), "jobs": jobs,
                              "records_per_job": records}
    result.update(verify(counted["records"], jobs, records))
    errors = Counter(r["error"] for r in burst["reports"] if r.get("error"))
    errors.update("killed by signal" for code in burst["codes"].values() if code < 0)
    stats = [s for r in burst["reports"] for s in r.get("lock") or []]
    result.update({
        "failed_jobs": sum(1 for code in burst["codes"].values() if code),
        "errors": dict(errors),
        "wall_s": round(burst["wall_s"], 3),
        "records_per_s": round(result["found"] / burst["wall_s"], 1) if burst["wall_s"] else None,
        "lock_held_ms": _percentiles_ms([held for _, _, held in stats]),
        "lock_wait_ms": _percentiles_ms([wait for _, wait, _ in stats]),
        "duplicate_rows": counted["duplicate_rows"],
        "project_dir": str(project_dir),
    })
    result["_rows"] = counted["records"]
    return result
