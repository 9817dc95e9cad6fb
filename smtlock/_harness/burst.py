"""Launching a burst: a demo project, N jobs as OS processes released together by a start barrier,
and a killer that SIGKILLs jobs while they hold the lock. What the burst left is counted by
:mod:`smtlock._harness.census`.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from .._lock.backends import Holder
from .._postgres.client import create_database, drop_database
from .hosts import SharedFolderHosts

__all__ = ["PROJECT_NAME", "JOB_SCRIPT", "store_uri_for", "make_project", "Jobs", "start_together", "Killer",
           "run_burst", "fresh_database"]

PROJECT_NAME = "stress"


JOB_SCRIPT = str(Path(__file__).with_name("job.py"))


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


class Jobs:
    """A burst's processes, each reaped here when it ends, and signalled only until then, under one
    lock: a signal never reaches a process that took the pid of a job that ended (pid_max is 32768
    on many systems, and a burst's jobs, their git and their server's backends make thousands of
    processes), and no other thread's child is reaped here (``os.wait`` took any)."""

    def __init__(self, pids: List[int]) -> None:
        self.pids = list(pids)
        self._lock = threading.Lock()
        self._codes: Dict[int, int] = {}  # pid -> exit code, once reaped
        self._ended: queue.Queue[int] = queue.Queue()
        for pid in self.pids:
            threading.Thread(target=self._watch, args=(pid,), daemon=True).start()

    def _watch(self, pid: int) -> None:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # until it ends; still unreaped, its pid still its
        self._ended.put(pid)

    def next_ended(self) -> Tuple[int, int]:
        """The next job to end, reaped now, and its exit code (minus the signal that ended it)."""
        pid = self._ended.get()
        with self._lock:
            _, status = os.waitpid(pid, 0)
            self._codes[pid] = code = os.waitstatus_to_exitcode(status)
        return pid, code

    def alive(self, pid: int) -> bool:
        """Whether job ``pid`` has not ended yet."""
        with self._lock:
            return pid not in self._codes and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None

    def kill(self, pid: int) -> bool:
        """SIGKILL job ``pid`` unless it has ended; whether it was sent."""
        with self._lock:
            if pid in self._codes or pid not in self.pids:
                return False
            os.kill(pid, signal.SIGKILL)  # not reaped, so still this job (a zombie ignores it)
            return True


def start_together(commands: List[List[str]], logs: List[Path],
                   progress: Optional[Callable[[int, int, int, int], None]] = None,
                   cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None,
                   on_start: Optional[Callable[[Jobs], Any]] = None) -> Dict[str, Any]:
    """Run each command as its own process and release them together; return exit codes and wall.

    In each command the arguments ``{ready}`` and ``{go}`` become file descriptors: the process
    writes a byte to ``ready`` when it has imported everything, then blocks reading ``go``. Once all
    are ready the harness closes the other end of ``go``, and every read returns at the same moment.
    ``on_start`` gets the :class:`Jobs` then, to watch or end them during the burst.
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
    jobs = Jobs(list(procs))
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
        on_start(jobs)
    codes: Dict[int, int] = {}
    while len(codes) < len(commands):
        pid, code = jobs.next_ended()
        index, proc = procs[pid]
        proc.returncode = codes[index] = code
        if progress:
            killed = sum(1 for c in codes.values() if c == -signal.SIGKILL)
            failed = sum(1 for c in codes.values() if c) - killed
            progress(len(codes) - failed - killed, len(commands) - len(codes), failed, killed)
    return {"codes": codes, "wall_s": time.perf_counter() - start,
            "pids": {index: proc.pid for index, proc in procs.values()}}


class Killer(threading.Thread):
    """Fault injection: SIGKILL ``count`` jobs during the burst, every other one the process that holds
    the project's lock at that moment (so some die inside a store transaction)."""

    def __init__(self, jobs: Jobs, count: int, holder_file: Path, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.jobs, self.count, self.holder_file = jobs, count, holder_file
        self.rng = random.Random(seed)
        self.killed: List[int] = []
        self.holding = 0  # how many were killed while they held the lock

    def _holder(self) -> Optional[int]:
        try:
            holder = Holder.parse(self.holder_file.read_text())
        except OSError:
            return None
        pid = holder.pid if holder else None
        return pid if pid in self.jobs.pids and pid not in self.killed else None

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
                pid = self.rng.choice([p for p in self.jobs.pids if p not in self.killed])
            self.jobs.kill(pid)  # not if it has ended: its pid may be another process's now
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

    def start_killer(started: Jobs) -> None:
        if kill:
            killers.append(Killer(started, min(kill, jobs), project_dir / ".smt" / "smtlock.lock.holder"))
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


def fresh_database(uri: str, mode: str) -> str:
    """A new, empty database beside the URI's one for one run (a raw run may poison its store)."""
    parts = urlsplit(uri)
    run_uri = parts._replace(path=f"{parts.path.lstrip('/')}_{mode.replace('-', '_')}_{os.getpid()}").geturl()
    drop_database(run_uri)
    create_database(run_uri)
    return run_uri
