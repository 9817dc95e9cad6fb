"""The stress harness: N simultaneous jobs against one project, then a recount of what survived.

Each job is its own OS process (``_job.py``), released with the others by a start barrier once it has
imported everything. Afterwards a fresh process reads the store (not the jobs' reports) and counts
expected vs found by the jobs' parameters, duplicates, distinct labels and duplicate table rows.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional
from urllib.parse import urlsplit

from .backends import Holder
from .errors import SMTLockError
from .hosts import NetworkHosts, SharedFolderHosts
from .postgres import create_database, drop_database, is_postgres, mask_uri

__all__ = ["MODES", "TITLES", "verdict", "make_project", "start_together", "run_burst", "census", "recount", "verify",
           "run_mode", "store_uri_for", "exit_status", "format_table"]

#: raw: plain Sumatra, the user's pattern; locked: the same in SMTLock; decorator: @smt_logged;
#: smt-run: unmodified `smt run` in a project with the plugin enabled; smt-run-raw: without it
MODES = ("raw", "locked", "decorator", "smt-run", "smt-run-raw")
BASELINES = ("raw", "smt-run-raw")
#: the modes in words, for the table, the verdict and the plot
TITLES = {"raw": "plain Sumatra", "locked": "smtlock", "decorator": "@smt_logged",
          "smt-run": "smt run + smtlock", "smt-run-raw": "plain smt run"}
PROJECT_NAME = "stress"
JOB_SCRIPT = str(Path(__file__).with_name("_job.py"))

MAIN_PY = '''"""A stand-in simulation for smtlock stress runs."""
import sys


def simulate(job, rec, steps=1000):
    total = sum(i * (job + 1) for i in range(steps))
    print(f"job {job} record {rec} total {total}")
    return total


if __name__ == "__main__":  # smt run: main.py <parameter file>
    values = {k.strip(): v for k, v in (line.split("=", 1) for line in open(sys.argv[1]) if "=" in line)}
    simulate(int(values["job"]), int(values["rec"]))
'''


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


def make_project(project_dir: Path, store: str = "sqlite", plugin: bool = False) -> Path:
    """A fresh git repository with a main.py, committed, and ``smt init`` done by plain Sumatra;
    with ``plugin``, ``smt configure --add-plugin smtlock.plugin`` too."""
    project_dir.mkdir(parents=True)
    (project_dir / "main.py").write_text(MAIN_PY)
    (project_dir / "params.txt").write_text("job = 0\nrec = 0\n")
    git = ["git", "-c", "user.name=smtlock", "-c", "user.email=smtlock@localhost"]
    for args in (["init", "-q"], ["add", "main.py", "params.txt"], ["commit", "-q", "-m", "stress"]):
        subprocess.run(git + args, cwd=project_dir, check=True, capture_output=True)
    uri = store_uri_for(store, project_dir)
    _smt(["init", "-e", sys.executable, "-m", "main.py", *(["-s", uri] if uri else []), PROJECT_NAME],
         project_dir)
    if plugin:
        _smt(["configure", "--add-plugin", "smtlock.plugin"], project_dir)
    return project_dir


def start_together(commands: List[List[str]], logs: List[Path],
                   progress: Optional[Callable[[int, int, int, int], None]] = None,
                   cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
                   on_start: Optional[Callable[[List[int]], Any]] = None) -> Dict[str, Any]:
    """Run each command as its own process and release them together; return exit codes and wall.

    In each command the arguments ``{ready}`` and ``{go}`` become file descriptors: the process
    writes a byte to ``ready`` when it has imported everything, then blocks reading ``go``. Once all
    are ready the harness closes the other end of ``go``, and every read returns at the same moment.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    procs = {}
    for index, (command, log_path) in enumerate(zip(commands, logs)):
        fds = {"{ready}": str(ready_w), "{go}": str(go_r)}
        argv = [fds.get(arg, arg) for arg in command]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, pass_fds=(ready_w, go_r), stdout=log, cwd=cwd, env=env,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        procs[proc.pid] = (index, proc)
    os.close(ready_w)
    os.close(go_r)
    with os.fdopen(ready_r, "rb", buffering=0) as ready:  # one byte per process; EOF if all died
        count = 0
        while count < len(commands):
            got = ready.read(len(commands) - count)
            if not got:
                break
            count += len(got)
    start = time.perf_counter()
    os.close(go_w)  # the barrier opens
    if on_start:
        on_start(list(procs))
    codes: Dict[int, int] = {}
    while len(codes) < len(commands):
        pid, status = os.wait()
        if pid in procs:
            index, proc = procs[pid]
            proc.returncode = codes[index] = os.waitstatus_to_exitcode(status)
            if progress:
                killed = sum(1 for c in codes.values() if c == -signal.SIGKILL)
                failed = sum(1 for c in codes.values() if c) - killed
                progress(len(codes) - failed - killed, len(commands) - len(codes), failed, killed)
    return {"codes": codes, "wall_s": time.perf_counter() - start,
            "pids": {index: proc.pid for index, proc in procs.values()}}


class Killer(threading.Thread):
    """Fault injection: SIGKILL ``count`` jobs during the burst, every other one the process that holds
    the project's lock at that moment (so some die inside a store transaction)."""

    def __init__(self, pids: List[int], count: int, holder_file: Path, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.pids, self.count, self.holder_file = pids, count, holder_file
        self.rng = random.Random(seed)
        self.killed: List[int] = []
        self.holding = 0  # how many were killed while they held the lock

    def _holder(self) -> Optional[int]:
        try:
            holder = Holder.parse(self.holder_file.read_text())
        except OSError:
            return None
        pid = holder.pid if holder else None
        return pid if pid in self.pids and pid not in self.killed else None

    def _wait_for_holder(self, limit: float = 5.0) -> Optional[int]:
        """A job that holds the lock now (early in a burst nobody holds it yet)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            pid = self._holder()
            if pid is not None:
                return pid
            time.sleep(0.002)
        return None

    def run(self) -> None:
        for n in range(self.count):
            time.sleep(self.rng.uniform(0.05, 0.4))  # spread the kills over the burst
            pid = self._wait_for_holder() if n % 2 == 0 else None
            self.holding += pid is not None
            if pid is None:
                pid = self.rng.choice([p for p in self.pids if p not in self.killed])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.killed.append(pid)


def run_burst(project_dir: Path, mode: str, jobs: int, records: int, work_dir: Path,
              progress: Optional[Callable[[int, int, int, int], None]] = None, kill: int = 0,
              hosts: Optional[SharedFolderHosts] = None) -> Dict[str, Any]:
    """``jobs`` stress jobs on one project, released together (``kill`` of them SIGKILLed during the
    burst; with ``hosts``, job ``j`` runs on host ``j % hosts.count``); exit codes, reports, killed
    job numbers and wall time."""
    work_dir.mkdir(parents=True, exist_ok=True)
    commands = [[sys.executable, JOB_SCRIPT, mode, str(project_dir), str(job), str(records),
                 "{ready}", "{go}", str(work_dir / f"job-{job}.json")] for job in range(jobs)]
    if hosts is not None:
        commands = [hosts.command(job % hosts.count, command) for job, command in enumerate(commands)]
    killers: List[Killer] = []

    def start_killer(pids: List[int]) -> None:
        if kill:
            killers.append(Killer(pids, min(kill, jobs), project_dir / ".smt" / "smtlock.lock.holder"))
            killers[0].start()

    burst = start_together(commands, [work_dir / f"job-{job}.log" for job in range(jobs)], progress,
                           env={**os.environ, "SMTLOCK_STATS": "1"}, on_start=start_killer)
    for killer in killers:
        killer.join()
    killed_pids = set(killers[0].killed) if killers else set()
    burst["killed"] = sorted(job for job, code in burst["codes"].items()
                             if code == -signal.SIGKILL and burst["pids"][job] in killed_pids)
    burst["killed_holding_lock"] = killers[0].holding if killers else 0
    reports = []
    for job in range(jobs):
        path = work_dir / f"job-{job}.json"
        reports.append(json.loads(path.read_text()) if path.exists() else {"job": job, "error": None})
    burst["reports"] = reports
    return burst


def census(store: str, project_dir: str, project_name: str = PROJECT_NAME) -> Dict[str, Any]:
    """Read the store directly (the project file may be torn): every record's label, job, rec and
    tags, and duplicate rows in Sumatra's tables. Run it in a fresh process per store."""
    from sumatra.recordstore import ShelveRecordStore
    from sumatra.recordstore.django_store import DjangoRecordStore

    from .doctor import duplicate_rows
    # the kind of store the project was made with, not a guess from the path (see
    # patches._shelve_accepts_uri: on Python 3.13 a guess took the SQLite store for a shelf)
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
    code = ("import json, sys; from smtlock.stress import census; "
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


def _percentiles_ms(values: List[float]) -> Dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None}
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(round(0.99 * (len(values) - 1))))]
    return {"p50": round(statistics.median(values) * 1000, 3), "p99": round(p99 * 1000, 3)}


def fresh_database(uri: str, mode: str) -> str:
    """A new, empty database beside the URI's one for one run (a raw run may poison its store)."""
    parts = urlsplit(uri)
    run_uri = parts._replace(path=f"{parts.path.lstrip('/')}_{mode.replace('-', '_')}_{os.getpid()}").geturl()
    drop_database(run_uri)
    create_database(run_uri)
    return run_uri


def _journal_mode(db: Path) -> Optional[str]:
    """The journal mode the jobs left an SQLite store in, read without changing it."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    except sqlite3.Error:
        return None


def _per_host(rows: List[Dict[str, Any]], burst: Dict[str, Any], hosts: int, records: int) -> Dict[str, Any]:
    """Jobs, failed jobs and records found, for each host (job ``j`` ran on host ``j % hosts``)."""
    found = Counter(row["job"] % hosts for row in rows if isinstance(row["job"], int))
    return {f"host-{h + 1}": {"jobs": sum(1 for job in burst["codes"] if job % hosts == h),
                              "failed_jobs": sum(1 for job, code in burst["codes"].items()
                                                 if code and code != -signal.SIGKILL and job % hosts == h),
                              "killed_jobs": sum(1 for job, code in burst["codes"].items()
                                                 if code == -signal.SIGKILL and job % hosts == h),
                              "expected": records * sum(1 for job in burst["codes"] if job % hosts == h),
                              "found": found.get(h, 0)} for h in range(hosts)}


def run_mode(mode: str, store: str, jobs: int, records: int, base_dir: Path,
             progress: Optional[Callable[[int, int, int, int], None]] = None,
             keep: bool = False, kill: int = 0, hosts: int = 0) -> Dict[str, Any]:
    """One run: a fresh project under ``base_dir/<mode>`` (and a fresh database for PostgreSQL, dropped
    afterwards unless ``keep``), the burst, the recount, the figures. With ``hosts``, the project lives
    in a folder those hosts share (see :mod:`smtlock.hosts`) and the jobs are spread over them."""
    run_dir = base_dir / mode
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_store = fresh_database(store, mode) if is_postgres(store) else store
    shared = run_dir / "shared" if hosts else run_dir
    try:
        project_dir = make_project(shared / f"project-{mode}", run_store, plugin=mode == "smt-run")
        with SharedFolderHosts(shared, hosts) if hosts else contextlib.nullcontext() as on_hosts:
            burst = run_burst(project_dir, mode, jobs, records, run_dir / "jobs", progress, kill, on_hosts)
        journal = _journal_mode(project_dir / ".smt" / "records") if store == "sqlite" else None
        try:
            counted = recount(run_store, project_dir)
        except RuntimeError as err:  # a store so damaged that Sumatra cannot read it: every record lost
            counted = {"records": [], "duplicate_rows": {},
                       "integrity": "unreadable: " + str(err).strip().splitlines()[-1]}
    finally:
        if run_store != store and not keep:
            drop_database(run_store)
    result: Dict[str, Any] = {"mode": mode, "store": mask_uri(store), "jobs": jobs,
                              "records_per_job": records}
    failed = [job for job, code in burst["codes"].items() if code and job not in burst["killed"]]
    result.update(verify(counted["records"], jobs, records, burst["killed"], failed))
    if hosts:
        result["hosts"] = _per_host(counted["records"], burst, hosts, records)
    result["messages"] = sorted({r["message"].splitlines()[0] for r in burst["reports"]
                                 if r.get("message")})
    result["integrity"] = counted.get("integrity")
    result["journal_mode"] = journal
    errors = Counter(r["error"] for r in burst["reports"] if r.get("error"))
    errors.update("killed by signal" for job, code in burst["codes"].items()
                  if code < 0 and job not in burst["killed"])
    stats = [s for r in burst["reports"] for s in r.get("lock") or []]
    result.update({
        "failed_jobs": sum(1 for job, code in burst["codes"].items() if code and job not in burst["killed"]),
        "errors": dict(errors),
        "wall_s": round(burst["wall_s"], 3),
        "records_per_s": round(result["found"] / burst["wall_s"], 1) if burst["wall_s"] else None,
        "lock_held_ms": _percentiles_ms([held for _, _, held in stats]),
        "lock_wait_ms": _percentiles_ms([wait for _, wait, _ in stats]),
        "duplicate_rows": counted["duplicate_rows"],
        "killed_holding_lock": burst["killed_holding_lock"],
        "project_dir": str(project_dir),
    })
    result["_rows"] = counted["records"]
    result["_labels_reported"] = sorted(label for r in burst["reports"] for label in r.get("labels") or [])
    return result


_MAKE = ("import sys; from pathlib import Path; from smtlock.stress import make_project; "
         "print(make_project(Path(sys.argv[1]), sys.argv[2], plugin=sys.argv[3] == 'smt-run'))")
_CENSUS = ("import json, sys; from smtlock.stress import census; "
           "print(json.dumps(census(sys.argv[1], sys.argv[2])))")
_HOLDERS = ("SELECT host(a.client_addr) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND a.client_addr IS NOT NULL")


def _on_host(hosts: NetworkHosts, host: int, code: str, *args: str) -> str:
    done = subprocess.run(hosts.command(host, [sys.executable, "-c", code, *args]), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"on {hosts.names[host]}: {done.stderr.strip()[-500:]}")
    return done.stdout


class _Cutter(threading.Thread):
    """``--cut-host``: pull host-1's cable while one of its jobs holds the store's lock; measure how
    long until a job of another host holds it; once every other job has ended, end host-1's (they
    wait for a server they cannot reach)."""

    def __init__(self, server: Any, hosts: NetworkHosts, jobs: int) -> None:
        super().__init__(daemon=True)
        self.server, self.hosts, self.jobs = server, hosts, jobs
        self.pids: List[int] = []
        self.release_s: Optional[float] = None
        self.killed: List[int] = []

    def start_on(self, pids: List[int]) -> None:
        self.pids = pids
        self.start()

    def _alive(self, pids: List[int]) -> bool:
        for pid in pids:
            try:
                os.kill(pid, 0)
                return True
            except ProcessLookupError:
                continue
        return False

    def run(self) -> None:
        victim = self.hosts.host_addresses[0]
        others = [pid for job, pid in enumerate(self.pids) if job % self.hosts.count]
        while self._alive(others) and victim not in {r[0] for r in self.server.sql(_HOLDERS)}:
            time.sleep(0.005)
        if not self._alive(others):
            return
        self.hosts.cut(0)
        cut_at = time.monotonic()
        while self._alive(others) and not any(r[0] != victim for r in self.server.sql(_HOLDERS)):
            time.sleep(0.02)
        self.release_s = round(time.monotonic() - cut_at, 2)
        while self._alive(others):
            time.sleep(0.1)
        for job, pid in enumerate(self.pids):
            if job % self.hosts.count == 0:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(job)
                except ProcessLookupError:
                    pass


def run_network_mode(mode: str, jobs: int, records: int, base_dir: Path, count: int,
                     progress: Optional[Callable[[int, int, int, int], None]] = None,
                     cut: bool = False) -> Dict[str, Any]:
    """One run on ``count`` hosts made of network namespaces (:class:`~smtlock.hosts.NetworkHosts`),
    each with its own project folder, all on one throwaway PostgreSQL server in a namespace of its own;
    job ``j`` runs on host ``j % count``. With ``cut``, host-1 is cut off while it holds the lock."""
    from .server import ThrowawayServer
    run_dir = base_dir / mode
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    with NetworkHosts(count) as hosts:
        server = ThrowawayServer(listen=",".join(hosts.server_addresses), prefix=hosts.server_command([]))
        try:
            server.sql("CREATE ROLE smtlock LOGIN PASSWORD 'stress' CREATEDB")
            server.sql("CREATE DATABASE stress OWNER smtlock")
            uris = [server.uri("smtlock", "stress", "stress", host=a) for a in hosts.server_addresses]
            projects = [_on_host(hosts, h, _MAKE, str(run_dir / name), uris[h], mode).strip()
                        for h, name in enumerate(hosts.names)]
            commands = [hosts.command(job % count, [sys.executable, JOB_SCRIPT, mode, projects[job % count], str(job),
                                                    str(records), "{ready}", "{go}", str(run_dir / f"job-{job}.json")])
                        for job in range(jobs)]
            cutter = _Cutter(server, hosts, jobs) if cut and count > 1 else None
            burst = start_together(commands, [run_dir / f"job-{job}.log" for job in range(jobs)], progress,
                                   env={**os.environ, "SMTLOCK_STATS": "1"},
                                   on_start=cutter.start_on if cutter else None)
            if cutter:
                cutter.join()
            counted = json.loads(_on_host(hosts, count - 1, _CENSUS, uris[-1], projects[-1]))
        finally:
            server.stop()
    killed = cutter.killed if cutter else []
    failed = [job for job, code in burst["codes"].items() if code and job not in killed]
    reports: List[Dict[str, Any]] = [
        json.loads((run_dir / f"job-{job}.json").read_text()) if (run_dir / f"job-{job}.json").exists()
        else {"job": job, "error": None} for job in range(jobs)]
    result: Dict[str, Any] = {"mode": mode, "store": f"PostgreSQL on {count} hosts", "jobs": jobs,
                              "records_per_job": records}
    result.update(verify(counted["records"], jobs, records, killed, failed))
    stats = [s for r in reports for s in r.get("lock") or []]
    result.update({
        "failed_jobs": len(failed), "errors": dict(Counter(r["error"] for r in reports if r.get("error")
                                                          and r["job"] not in killed)),
        "wall_s": round(burst["wall_s"], 3), "killed_holding_lock": 1 if killed else 0,
        "records_per_s": round(result["found"] / burst["wall_s"], 1) if burst["wall_s"] else None,
        "lock_held_ms": _percentiles_ms([held for _, _, held in stats]),
        "lock_wait_ms": _percentiles_ms([wait for _, wait, _ in stats]),
        "duplicate_rows": counted["duplicate_rows"], "hosts": _per_host(counted["records"], burst, count, records),
        "messages": [], "integrity": None,
        "cut_host": "host-1" if cutter and cutter.release_s is not None else None,
        "lock_free_after_cut_s": cutter.release_s if cutter else None,
    })
    result["_rows"] = counted["records"]
    result["_labels_reported"] = sorted(label for r in reports for label in r.get("labels") or [])
    return result


# --- command line ---------------------------------------------------------------------------------

def _store_argument(value: str) -> str:
    import argparse
    if value.lower() in ("sqlite", "shelve"):
        return value.lower()
    if is_postgres(value):
        from .postgres import check_uri
        try:
            return check_uri(value)
        except SMTLockError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    raise argparse.ArgumentTypeError(
        f"unknown store {mask_uri(value)!r}: use sqlite, shelve or postgres://user:pass@host:port/db")


def add_arguments(parser: Any) -> None:
    """The options of ``smtlock stress``."""
    parser.add_argument("--jobs", type=int, default=48, metavar="N", help="simultaneous jobs (default 48)")
    parser.add_argument("--records", type=int, default=5, metavar="R", help="records per job (default 5)")
    parser.add_argument("--store", type=_store_argument, default="sqlite",
                        help="sqlite (default), shelve, or postgres://user:pass@host:port/db")
    parser.add_argument("--mode", action="append", choices=MODES, dest="modes",
                        help="raw, locked, decorator, smt-run or smt-run-raw; repeat for side-by-side "
                             "runs (default: raw and locked)")
    parser.add_argument("--project-dir", type=Path, metavar="DIR",
                        help="keep each run's project under DIR/<mode>/ (default: a temporary folder)")
    parser.add_argument("--kill", type=int, default=0, metavar="K",
                        help="SIGKILL K jobs during each burst, some while they hold the lock")
    parser.add_argument("--shared-fs", type=int, default=0, metavar="HOSTS",
                        help="put the project in a folder shared by HOSTS hosts made here (mount namespaces "
                             "with their own FUSE mount, as a cluster's nodes on NFS) and spread the jobs "
                             "over them; needs root and bindfs")
    parser.add_argument("--hosts", type=int, default=0, metavar="K",
                        help="run the jobs on K hosts made of network namespaces (own network, hostname and "
                             "project folder) against a PostgreSQL server in a namespace of its own, started "
                             "for the run; needs root")
    parser.add_argument("--cut-host", action="store_true",
                        help="with --hosts: cut host-1 off (no FIN, no RST) while it holds the lock, and "
                             "measure how long the other hosts wait")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--plot", type=Path, metavar="PATH.png", help="plot the figures (needs matplotlib)")
    parser.set_defaults(handler=main)


ROWS = [("killed jobs", "killed_jobs"), ("  of them holding the lock", "killed_holding_lock"),
        ("  their records found", "records_of_killed_jobs"), ("expected", "expected"), ("found", "found"),
        ("lost", "lost"), ("  lost silently", "lost_silently"), ("duplicates", "duplicates"),
        ("distinct labels", "distinct_labels"),
        ("failed jobs", "failed_jobs"), ("wall time (s)", "wall_s"),
        ("lock held p50/p99 (ms)", "lock_held_ms"), ("lock wait p50/p99 (ms)", "lock_wait_ms"),
        ("duplicate table rows", "duplicate_rows")]


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "p50" in value:
        return "-" if value["p50"] is None else f"{value['p50']:.2f}/{value['p99']:.2f}"
    if isinstance(value, dict):
        return str(sum(value.values()))
    return "-" if value is None else str(value)


def format_table(runs: List[Dict[str, Any]]) -> str:
    """The runs side by side, one column per mode."""
    lines = [f"{'':26}" + "".join(f"{TITLES[run['mode']]:>20}" for run in runs)]
    killing = any(run.get("killed_jobs") for run in runs)
    for title, key in ROWS:
        if killing or "kill" not in key:
            lines.append(f"{title:26}" + "".join(f"{_cell(run[key]):>20}" for run in runs))
    for run in runs:
        for host, counts in (run.get("hosts") or {}).items():
            killed = f", {counts['killed_jobs']} killed" if counts["killed_jobs"] else ""
            lines.append(f"{TITLES[run['mode']]} on {host}: {counts['found']} of {counts['expected']} records "
                         f"found, {counts['failed_jobs']} of {counts['jobs']} jobs failed{killed}")
        if run["errors"]:
            kinds = ", ".join(f"{kind} x{n}" for kind, n in sorted(run["errors"].items()))
            lines.append(f"errors in {TITLES[run['mode']]}: {kinds}")
        for message in run.get("messages", [])[:3]:
            lines.append(f"  {message}")
        if run.get("lock_free_after_cut_s") is not None:
            lines.append(f"{TITLES[run['mode']]}: host-1 was cut off while it held the lock; another host "
                         f"held it {run['lock_free_after_cut_s']} s later")
        if run.get("integrity") not in (None, "ok"):
            lines.append(f"the store of {TITLES[run['mode']]} is damaged: {run['integrity']}")
    return "\n".join(lines)


def plot(runs: List[Dict[str, Any]], path: Path) -> None:
    """One bar per mode: the records kept (green) and lost (red), each with its count."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SMTLockError("--plot needs matplotlib (pip install 'smtlock[plot]')") from None
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(runs)))
    names = [TITLES[run["mode"]] for run in runs][::-1]
    kept = [run["expected"] - run["lost"] for run in runs][::-1]
    lost = [run["lost"] for run in runs][::-1]
    ax.barh(names, kept, color="#2e7d32", label="kept")
    ax.barh(names, lost, left=kept, color="#c62828", label="lost")
    for y, (k, n) in enumerate(zip(kept, lost)):
        ax.text(k + n, y, f"  {n} lost" if n else "  none lost", va="center")
    ax.set_xlim(0, max(run["expected"] for run in runs) * 1.25)
    ax.set_xlabel("records")
    ax.set_title(f"{runs[0]['jobs']} jobs x {runs[0]['records_per_job']} records started at once "
                 f"({runs[0]['store']} store)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.12), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _progress_line(mode: str) -> Callable[[int, int, int, int], None]:
    live = sys.stderr.isatty()

    def show(finished: int, running: int, failed: int, killed: int) -> None:
        if not live and running:
            return
        end = "\n" if running == 0 else ""
        died = f"  killed {killed:4d}" if killed else ""
        print(f"\r{TITLES[mode]:>18}: finished {finished:4d}  running {running:4d}  failed {failed:4d}{died}",
              end=end, file=sys.stderr, flush=True)
    return show


def check_store(store: str) -> None:
    """Fail early, in one line, when the store cannot be used."""
    if is_postgres(store):
        from .postgres import check_server, connect
        check_server(store, must_exist=False)
        conn = connect(store, dbname="postgres")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                allowed = cur.fetchone()[0]
        finally:
            conn.close()
        if not allowed:
            user = urlsplit(store).username
            raise SMTLockError(f"role {user!r} may not create database at {mask_uri(store)}, and the harness "
                               f"makes one for each run (ask an administrator: ALTER ROLE {user} CREATEDB)")


def main(args: Any) -> int:
    """``smtlock stress``: run each mode on a fresh project, print the table; exit 1 if a safe mode lost."""
    if args.jobs < 1 or args.records < 1:
        raise SMTLockError("--jobs and --records must be at least 1")
    if args.shared_fs < 0:
        raise SMTLockError("--shared-fs takes a number of hosts (at least 1)")
    if args.shared_fs:
        SharedFolderHosts.check()
    if args.hosts < 0 or (args.cut_host and args.hosts < 2):
        raise SMTLockError("--hosts takes a number of hosts, and --cut-host needs at least 2")
    if args.hosts:
        NetworkHosts.check()
        if args.store != "sqlite" or args.shared_fs:
            raise SMTLockError("--hosts starts its own PostgreSQL server for each run: leave out --store and "
                               "--shared-fs")
    _check_outputs(args)
    modes = args.modes or ["raw", "locked"]
    if not args.hosts:
        check_store(args.store)
    where = f"PostgreSQL on {args.hosts} hosts" if args.hosts else mask_uri(args.store)
    print(f"smtlock stress: {args.jobs} jobs x {args.records} records, all started at once, on a new "
          f"{where} project for each of: {', '.join(TITLES[m] for m in modes)}"
          + (f"; {args.kill} jobs killed in each" if args.kill else "")
          + (f"; the project in a folder shared by {args.shared_fs} hosts" if args.shared_fs else ""),
          flush=True)
    base = args.project_dir or Path(tempfile.mkdtemp(prefix="smtlock-stress-"))
    runs = []
    try:
        for mode in modes:
            if args.hosts:
                runs.append(run_network_mode(mode, args.jobs, args.records, base, args.hosts,
                                             _progress_line(mode), cut=args.cut_host))
                continue
            runs.append(run_mode(mode, args.store, args.jobs, args.records, base, _progress_line(mode),
                                 keep=args.project_dir is not None, kill=args.kill, hosts=args.shared_fs))
    finally:
        if args.project_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    for run in runs:
        run.pop("_rows", None)
        run.pop("_labels_reported", None)
        if args.project_dir is None:
            run.pop("project_dir", None)
    print(format_table(runs))
    print(verdict(runs))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
        print(f"figures written to {args.json}")
    if args.plot:
        plot(runs, args.plot)
        print(f"plot written to {args.plot}")
    if args.project_dir is not None:
        print(f"projects kept under {args.project_dir}/<mode>/")
    return exit_status(runs)


def verdict(runs: List[Dict[str, Any]]) -> str:
    """One line: what each mode lost, e.g. "plain Sumatra lost 125 of 128 records; smtlock lost 0"."""
    parts = []
    for run in runs:
        lost = f"lost {run['lost']} of {run['expected']} records" if run["lost"] else "lost 0"
        if run["lost"]:
            lost += f", {run['lost_silently']} of them silently" if run["lost_silently"] else ", none silently"
        extra = [f"{run[key]} {word}" for key, word in (("duplicates", "duplicated"),
                                                        ("failed_jobs", "jobs failed")) if run[key]]
        parts.append(f"{TITLES[run['mode']]} {lost}" + (f" ({', '.join(extra)})" if extra else ""))
    return "; ".join(parts)


def _check_outputs(args: Any) -> None:
    """Before the burst: the harness never writes into an existing project, and its files can be written."""
    if args.project_dir is not None:
        folder = args.project_dir.expanduser().absolute()
        inside = next((f for f in (folder, *folder.parents) if (f / ".smt").is_dir()), None)
        if inside is not None:
            raise SMTLockError(f"--project-dir {folder} is inside the Sumatra project at {inside}: give a new "
                               "or empty folder outside any project (the harness makes its own projects)")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise SMTLockError(f"--project-dir {folder} is not an empty folder: give a new or empty one")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and not path.expanduser().absolute().parent.is_dir():
            raise SMTLockError(f"{option} {path}: the folder {path.expanduser().absolute().parent} does not "
                               "exist (create it, or give another path)")


def exit_status(runs: List[Dict[str, Any]]) -> int:
    """0 when every safe mode kept every record; 1 when one lost, duplicated or failed (the
    baselines, plain Sumatra, are reported, not judged)."""
    unsafe = [run for run in runs if run["mode"] not in BASELINES
              and (run["lost"] or run["duplicates"] or run["failed_jobs"])]
    return 1 if unsafe else 0
