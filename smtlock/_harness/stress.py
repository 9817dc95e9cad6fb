"""``smtlock stress``: runs of N simultaneous jobs against one project in each mode, on one host, on
hosts sharing a folder or on hosts of their own, and the table, verdict and plot of what they kept.

Each job is its own OS process (``job.py``), released with the others by a start barrier once it has
imported everything (:mod:`smtlock._harness.burst`); afterwards a fresh process reads the store and counts
expected vs found, duplicates, distinct labels and duplicate table rows (:mod:`smtlock._harness.census`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional
from urllib.parse import urlsplit

from .._postgres.client import drop_database, is_postgres, mask_uri
from ..errors import SMTLockError
from .burst import JOB_SCRIPT, Jobs, fresh_database, make_project, run_burst, start_together
from .census import journal_mode, per_host, percentiles_ms, recount, verify
from .hosts import NetworkHosts, SharedFolderHosts

__all__ = ["MODES", "TITLES", "verdict", "run_mode", "run_network_mode", "exit_status", "format_table"]

#: raw: plain Sumatra, the user's pattern; locked: the same in SMTLock; decorator: @smt_logged;
#: smt-run: unmodified `smt run` in a project with the plugin enabled; smt-run-raw: without it
MODES = ("raw", "locked", "decorator", "smt-run", "smt-run-raw")
BASELINES = ("raw", "smt-run-raw")
#: the modes in words, for the table, the verdict and the plot
TITLES = {"raw": "plain Sumatra", "locked": "smtlock", "decorator": "@smt_logged",
          "smt-run": "smt run + smtlock", "smt-run-raw": "plain smt run"}


def run_mode(mode: str, store: str, jobs: int, records: int, base_dir: Path,
             progress: Optional[Callable[[int, int, int, int], None]] = None,
             keep: bool = False, kill: int = 0, hosts: int = 0) -> Dict[str, Any]:
    """One run: a fresh project under ``base_dir/<mode>`` (and a fresh database for PostgreSQL, dropped
    afterwards unless ``keep``), the burst, the recount, the figures. With ``hosts``, the project lives
    in a folder those hosts share (see :mod:`smtlock._harness.hosts`) and the jobs are spread over them."""
    run_dir = base_dir / mode
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_store = fresh_database(store, mode) if is_postgres(store) else store
    shared = run_dir / "shared" if hosts else run_dir
    try:
        project_dir = make_project(shared / f"project-{mode}", run_store, plugin=mode == "smt-run")
        with SharedFolderHosts(shared, hosts) if hosts else contextlib.nullcontext() as on_hosts:
            burst = run_burst(project_dir, mode, jobs, records, run_dir / "jobs", progress, kill, on_hosts)
        journal = journal_mode(project_dir / ".smt" / "records") if store == "sqlite" else None
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
        result["hosts"] = per_host(counted["records"], burst, hosts, records)
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
        "lock_held_ms": percentiles_ms([held for _, _, held in stats]),
        "lock_wait_ms": percentiles_ms([wait for _, wait, _ in stats]),
        "duplicate_rows": counted["duplicate_rows"],
        "killed_holding_lock": burst["killed_holding_lock"],
        "project_dir": str(project_dir),
    })
    result["_rows"] = counted["records"]
    result["_labels_reported"] = sorted(label for r in burst["reports"] for label in r.get("labels") or [])
    return result


_MAKE = ("import sys; from pathlib import Path; from smtlock._harness.burst import make_project; "
         "print(make_project(Path(sys.argv[1]), sys.argv[2], plugin=sys.argv[3] == 'smt-run'))")
_CENSUS = ("import json, sys; from smtlock._harness.census import census; "
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
        self.started: Optional[Jobs] = None
        self.release_s: Optional[float] = None
        self.killed: List[int] = []

    def start_on(self, started: Jobs) -> None:
        self.started = started
        self.start()

    def run(self) -> None:
        assert self.started is not None
        jobs, victim = self.started, self.hosts.host_addresses[0]
        others = [pid for job, pid in enumerate(jobs.pids) if job % self.hosts.count]

        def alive() -> bool:
            return any(jobs.alive(pid) for pid in others)
        while alive() and victim not in {r[0] for r in self.server.sql(_HOLDERS)}:
            time.sleep(0.005)
        if not alive():
            return
        self.hosts.cut(0)
        cut_at = time.monotonic()
        while alive() and not any(r[0] != victim for r in self.server.sql(_HOLDERS)):
            time.sleep(0.02)
        self.release_s = round(time.monotonic() - cut_at, 2)
        while alive():
            time.sleep(0.1)
        for job, pid in enumerate(jobs.pids):
            if job % self.hosts.count == 0 and jobs.kill(pid):
                self.killed.append(job)


def run_network_mode(mode: str, jobs: int, records: int, base_dir: Path, count: int,
                     progress: Optional[Callable[[int, int, int, int], None]] = None,
                     cut: bool = False) -> Dict[str, Any]:
    """One run on ``count`` hosts made of network namespaces (:class:`~smtlock._harness.hosts.NetworkHosts`),
    each with its own project folder, all on one throwaway PostgreSQL server in a namespace of its own;
    job ``j`` runs on host ``j % count``. With ``cut``, host-1 is cut off while it holds the lock."""
    from .._postgres.server import ThrowawayServer
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
        "lock_held_ms": percentiles_ms([held for _, _, held in stats]),
        "lock_wait_ms": percentiles_ms([wait for _, wait, _ in stats]),
        "duplicate_rows": counted["duplicate_rows"], "hosts": per_host(counted["records"], burst, count, records),
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
        from .._postgres.client import check_uri
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
        from .._postgres.client import check_server, connect
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
