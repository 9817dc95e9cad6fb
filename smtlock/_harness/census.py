"""Counting what a burst left: a fresh process reads the store itself (not the jobs' reports) and
compares the records found with those the jobs should have written, by their parameters.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

from .burst import PROJECT_NAME, store_uri_for

__all__ = ["census", "recount", "verify", "journal_mode", "per_host", "percentiles_ms"]

def census(store: str, project_dir: str, project_name: str = PROJECT_NAME) -> Dict[str, Any]:
    """Read the store directly (the project file may be torn): every record's label, job, rec and
    tags, and duplicate rows in Sumatra's tables. Run it in a fresh process per store."""
    from sumatra.recordstore import ShelveRecordStore
    from sumatra.recordstore.django_store import DjangoRecordStore

    from .._ops.doctor import duplicate_rows
    # the kind of store the project was made with, not a guess from the path (see
    # shelf.accepts_uri: on Python 3.13 a guess took the SQLite store for a shelf)
    uri = store_uri_for(store, Path(project_dir)) or str(Path(project_dir) / ".smt" / "records")
    record_store = ShelveRecordStore(uri) if store == "shelve" else DjangoRecordStore(uri)
    rows = []
    for record in record_store.list(project_name):
        params = record.parameters.as_dict() if hasattr(record.parameters, "as_dict") else {}
        rows.append({"label": record.label, "job": params.get("job"), "rec": params.get("rec"),
                     "tags": sorted(record.tags), "duration": record.duration,
                     "stdout": record.stdout_stderr})
    dup = duplicate_rows(record_store) if isinstance(record_store, DjangoRecordStore) else {}
    integrity = None
    if store == "sqlite":
        with contextlib.closing(sqlite3.connect(f"file:{uri}?mode=ro", uri=True)) as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    return {"records": rows, "duplicate_rows": dup, "integrity": integrity}


def recount(store: str, project_dir: Path) -> Dict[str, Any]:
    """:func:`census` in a fresh process (Django is configured once per process)."""
    code = ("import json, sys; from smtlock._harness.census import census; "
            "print(json.dumps(census(sys.argv[1], sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", code, store, str(project_dir)], cwd=project_dir,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"could not read the store of {project_dir}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def verify(found_rows: List[Dict[str, Any]], jobs: int, records: int,
           killed: Iterable[int] = (), failed: Iterable[int] = ()) -> Dict[str, Any]:
    """Compare the records found with the (job, rec) pairs the burst should have left; the jobs in
    ``killed`` owe nothing (what they wrote before dying is counted apart). A record missing from a
    job that did not fail (``failed``: non-zero exit) is lost silently: its write had returned."""
    killed, failed = set(killed), set(failed)
    expected = {(j, r) for j in range(jobs) if j not in killed for r in range(records)}
    found = Counter((row["job"], row["rec"]) for row in found_rows)
    missing = expected - set(found)
    return {
        "expected": len(expected),
        "found": sum(n for (job, _), n in found.items() if job not in killed),
        "lost": len(missing),
        "lost_silently": sum(1 for job, _ in missing if job not in failed),
        "duplicates": sum(n - 1 for n in found.values() if n > 1),
        "unexpected": sum(n for (job, rec), n in found.items()
                          if job not in killed and (job, rec) not in expected),
        "distinct_labels": len({row["label"] for row in found_rows if row["job"] not in killed}),
        "killed_jobs": len(killed),
        "records_of_killed_jobs": sum(n for (job, _), n in found.items() if job in killed),
    }


def percentiles_ms(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None}
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return {"p50": round(statistics.median(values) * 1000, 3), "p99": round(p99 * 1000, 3)}


def journal_mode(db: Path) -> Optional[str]:
    """The journal mode the jobs left an SQLite store in, read without changing it."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    except sqlite3.Error:
        return None


def per_host(rows: List[Dict[str, Any]], burst: Dict[str, Any], hosts: int, records: int) -> Dict[str, Any]:
    """Jobs, failed jobs and records found, for each host (job ``j`` ran on host ``j % hosts``)."""
    found = Counter(row["job"] % hosts for row in rows if isinstance(row["job"], int))
    return {f"host-{h + 1}": {"jobs": sum(1 for job in burst["codes"] if job % hosts == h),
                              "failed_jobs": sum(1 for job, code in burst["codes"].items()
                                                 if code and code != -signal.SIGKILL and job % hosts == h),
                              "killed_jobs": sum(1 for job, code in burst["codes"].items()
                                                 if code == -signal.SIGKILL and job % hosts == h),
                              "expected": records * sum(1 for job in burst["codes"] if job % hosts == h),
                              "found": found.get(h, 0)} for h in range(hosts)}
