"""The same sweep of short calls under ``@smt_logged``, under Sacred, MLflow and untracked, side by side.

    python benchmarks/sweep.py [--workers 2 8] [--calls 16 32] [--repeats 1] [--label now]
                                                        (adds to benchmarks/sweep.json)
    python benchmarks/sweep.py --profile 20             (where one @smt_logged call's time goes)
    python benchmarks/sweep.py --per-call 400 [--trackers smt_logged sacred]   (CPU ms per warm call)

Needs Sacred and MLflow: ``pip install -e '.[bench]'``. Each tracker gets a project of its own in a
temporary folder, made as a user makes one: for ``@smt_logged`` a git repository, ``smt init``
(Sumatra's default SQLite store) and the task module committed; for Sacred the same git repository
with the task committed, and its FileStorageObserver (a folder of runs) with its default output
capture; for MLflow an SQLite tracking store (``sqlite:///.../mlflow.db``), created before the
workers start (two workers creating one at once crash in its schema migration). The task takes a
parameter, prints a line and gives a result and does nothing else: ``@smt_logged`` records the call
(its argument, what it prints, its duration, its provenance); Sacred runs it as an experiment (its
config, what it prints, its result; sources, dependencies, git state and host at each run);
MLflow's ``start_run``, ``log_param``, ``log_metric``. For each pool size W and its call count C, a
fork pool of W workers is started and each worker makes one call (imports, connections, first
queries) before the clock starts; then the pool makes C calls. Every run is counted afterwards: a
call whose record or run is missing fails the benchmark; a record or run without the printed line
is counted (``output_lost``). Calls/s is C / wall time; the ratios are each tracker's calls/s over
Sacred's and over MLflow's.
``--profile N``: one process, one warm-up call, then N ``@smt_logged`` calls under cProfile; prints
each part's milliseconds per call (cumulative, so nested parts are inside their callers).
``--lock-stats``: each ``@smt_logged`` pool also reports how long a call waited for the project's lock
and held it (its two writes), in ms per call (``SMTLOCK_STATS=1`` in its workers).
``--per-call N``: for each tracker in turn, one process makes two warm-up calls, then N calls; prints
the CPU (the process's and its subprocesses') and wall milliseconds per call: what a call costs, without
the pool (run it from archives of two trees in turn to compare them).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from smtlock._harness.burst import make_project  # noqa: E402

GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
TRACKERS = ("smt_logged", "sacred", "mlflow", "untracked")
#: the trackers in git repositories, as a user of each keeps the code it records
IN_GIT = ("smt_logged", "sacred")

# One module per tracker, so Sumatra's dependency scan of the task's file sees only what that file
# imports (ModuleFinder finds imports inside functions too).
TASKS = {
    "smt_logged": '''"""A short call recorded by @smt_logged."""
from smtlock import smt_logged


@smt_logged
def task(x):
    y = 2 * x + 1
    print(f"y={y}")
    return y
''',
    "sacred": '''"""The same short call recorded by Sacred (FileStorageObserver, default capture)."""
import os

from sacred import Experiment
from sacred.observers import FileStorageObserver

ex = Experiment("sweep_task")
ex.observers.append(FileStorageObserver(os.path.join(os.path.dirname(os.path.abspath(__file__)), "runs")))


@ex.config
def config():
    x = 0


@ex.main
def _main(x):
    y = 2 * x + 1
    print(f"y={y}")
    return y


def task(x):
    return ex.run(config_updates={"x": x}).result
''',
    "mlflow": '''"""The same short call tracked by MLflow."""
import mlflow


def task(x):
    y = 2 * x + 1
    with mlflow.start_run():
        mlflow.log_param("x", x)
        mlflow.log_metric("y", y)
    return y
''',
    "untracked": '''"""The same short call, untracked."""


def task(x):
    y = 2 * x + 1
    return y
''',
}


def make_folders(base: Path, trackers: Iterable[str] = TRACKERS) -> Dict[str, Path]:
    """A folder per tracker, with its task module; the Sumatra project made as a user makes it."""
    folders = {}
    for tracker in trackers:
        source = TASKS[tracker]
        folder = base / tracker
        if tracker == "smt_logged":
            make_project(folder)  # git init, main.py committed, `smt init` by plain Sumatra
        else:
            folder.mkdir(parents=True)
        if tracker == "sacred":
            subprocess.run(GIT + ["init", "-q"], cwd=folder, check=True)
            (folder / ".gitignore").write_text("runs/\n")
            subprocess.run(GIT + ["add", ".gitignore"], cwd=folder, check=True)
        (folder / "sweep_task.py").write_text(source)
        if tracker in IN_GIT:
            subprocess.run(GIT + ["add", "sweep_task.py"], cwd=folder, check=True)
            subprocess.run(GIT + ["commit", "-qm", "sweep task"], cwd=folder, check=True)
        if tracker == "mlflow":
            _python("import mlflow; mlflow.set_tracking_uri(sys.argv[1]); mlflow.search_experiments()",
                    folder, mlflow_uri(folder))
        folders[tracker] = folder
    return folders


def mlflow_uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _python(code: str, cwd: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", "import sys\n" + code, *args], cwd=cwd, capture_output=True,
                          text=True)
    if done.returncode:
        raise RuntimeError(f"{code!r} failed in {cwd}:\n{done.stdout}{done.stderr}")
    return done.stdout


def count(tracker: str, folder: Path) -> Dict[str, int]:
    """What the tracker kept: records (distinct labels) or runs."""
    if tracker == "smt_logged":
        outputs = json.loads(_python("import json; from sumatra.projects import load_project; "
                                     "print(json.dumps({r.label: r.stdout_stderr for r in "
                                     "load_project().find_records()}))", folder))
        return {"kept": len(outputs), "distinct": len(set(outputs)),
                "output_lost": sum("y=" not in text for text in outputs.values())}
    if tracker == "sacred":
        runs = [run for run in (folder / "runs").iterdir() if (run / "run.json").exists()]
        done = [run for run in runs if json.loads((run / "run.json").read_text())["status"] == "COMPLETED"]
        lost = [run for run in done if "y=" not in (run / "cout.txt").read_text()]
        return {"kept": len(done), "distinct": len(done), "output_lost": len(lost)}
    if tracker == "mlflow":
        ids = json.loads(_python("import json, mlflow; mlflow.set_tracking_uri(sys.argv[1]); "
                                 "print(json.dumps(list(mlflow.search_runs(search_all_experiments=True)"
                                 "['run_id'])))", folder, mlflow_uri(folder)))
        return {"kept": len(ids), "distinct": len(set(ids))}
    return {}


def one_run(tracker: str, folder: Path, workers: int, calls: int) -> dict:
    """One timed pool in a fresh process (this one imports neither MLflow nor Django)."""
    out = subprocess.run([sys.executable, __file__, "--pool", tracker, str(workers), str(calls)], cwd=folder,
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{tracker} pool of {workers} failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- in the pool's process --------------------------------------------------------------------------

_task: Callable = None  # type: ignore[assignment]


def _warm(barrier: "multiprocessing.synchronize.Barrier", uri: str) -> None:
    """Each worker: import the task, make one call, wait until every worker has."""
    global _task
    if uri:
        import mlflow
        mlflow.set_tracking_uri(uri)
    sys.path.insert(0, os.getcwd())
    from sweep_task import task
    _task = task
    task(-1 - os.getpid())
    barrier.wait()


def _call(x: int) -> Any:
    """One call; with ``--lock-stats``, also the lock's (purpose, wait s, held s) of each acquisition it made."""
    if not os.environ.get("SMTLOCK_STATS"):
        return _task(x)
    from smtlock._lock.lock import collected_stats
    before = len(collected_stats())
    return _task(x), collected_stats()[before:]


def pool(tracker: str, workers: int, calls: int) -> dict:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers + 1)
    uri = mlflow_uri(Path.cwd()) if tracker == "mlflow" else ""
    with context.Pool(workers, initializer=_warm, initargs=(barrier, uri)) as workers_pool:
        barrier.wait(timeout=600)  # every worker warm
        start = time.perf_counter()
        results = workers_pool.map(_call, range(calls), chunksize=1)
        wall = time.perf_counter() - start
    held: Dict[str, float] = {}
    if os.environ.get("SMTLOCK_STATS"):
        results, stats = [result for result, _ in results], [s for _, acquired in results for s in acquired]
        held = {"lock_wait_ms": round(1000 * sum(wait for _, wait, _ in stats) / calls, 2),
                "lock_held_ms": round(1000 * sum(hold for _, _, hold in stats) / calls, 2)}
    assert results == [2 * x + 1 for x in range(calls)], results
    return {"wall_s": round(wall, 3), "calls_per_s": round(calls / wall, 2), **held}


# --- one call, profiled ----------------------------------------------------------------------------

#: (what, file ending, function): the parts of a call, cumulative ms per call
PARTS = [
    ("the whole call", "smtlock/_tracking/decorator.py", "_record_call"),
    ("  load the project (load_project)", "sumatra/projects.py", "load_project"),
    ("  Project.new_record", "sumatra/projects.py", "new_record"),
    ("    update_code (VCS)", "sumatra/projects.py", "update_code"),
    ("    add_record (write 1)", "smtlock/_sumatra/patches.py", "add_record"),
    ("    Record.register", "sumatra/records.py", "register"),
    ("      dependency scan", "sumatra/dependency_finder/__init__.py", "find_dependencies"),
    ("      platform information", "sumatra/launch.py", "get_platform_information"),
    ("  PythonExecutable(): its version", "sumatra/programs.py", "_get_version"),
    ("  save_record (writes 2 and 3)", "smtlock/_sumatra/patches.py", "save_record"),
    ("  find_new_data", "sumatra/datastore/filesystem.py", "find_new_data"),
    ("  Project.save (.smt/project)", "sumatra/projects.py", "save"),
    ("every git command (GitPython)", "git/cmd.py", "execute"),
    ("every subprocess, waited for", "subprocess.py", "communicate"),
    ("every record write (lock held)", "smtlock/_sumatra/patches.py", "_write"),
    ("every SMTLock acquire", "smtlock/_lock/lock.py", "acquire"),
]


def profile(calls: int) -> str:
    """N warm @smt_logged calls in this process under cProfile, in a fresh project."""
    import cProfile
    import pstats
    import resource
    with tempfile.TemporaryDirectory(prefix="smtlock-profile-") as tmp:
        folder = make_folders(Path(tmp), ["smt_logged"])["smt_logged"]
        os.chdir(folder)
        sys.path.insert(0, str(folder))
        from sweep_task import task
        shown, sys.stdout = sys.stdout, open(os.devnull, "w")  # what the task prints
        task(-1)

        def cpu() -> tuple:
            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime
        profiler = cProfile.Profile()
        (me0, kids0), start = cpu(), time.perf_counter()
        profiler.enable()
        for x in range(calls):
            task(x)
        profiler.disable()
        wall, (me1, kids1) = time.perf_counter() - start, cpu()
        sys.stdout.close()
        sys.stdout = shown
        os.chdir(ROOT)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    lines = [f"{calls} calls: per call {1000 * wall / calls:.1f} ms wall, {1000 * (me1 - me0) / calls:.1f} ms CPU "
             f"in the process, {1000 * (kids1 - kids0) / calls:.1f} ms CPU in its subprocesses",
             f"{'part':40} {'ms/call':>8} {'calls/call':>10}"]
    for what, file, function in PARTS:
        found = [(nc, ct) for (f, _, name), (_, nc, _, ct, _) in stats.items() if f.endswith(file) and name == function]
        ms = 1000 * sum(ct for _, ct in found) / calls
        lines.append(f"{what:40} {ms:8.1f} {sum(nc for nc, _ in found) / calls:10.1f}")
    return "\n".join(lines)


# --- one process, CPU per call ---------------------------------------------------------------------

def per_call(tracker: str, calls: int) -> dict:
    """N warm calls of one tracker in this process, in a fresh folder: CPU and wall ms per call."""
    import resource
    with tempfile.TemporaryDirectory(prefix="smtlock-per-call-") as tmp:
        folder = make_folders(Path(tmp), [tracker])[tracker]
        os.chdir(folder)
        sys.path.insert(0, str(folder))
        if tracker == "mlflow":
            import mlflow
            mlflow.set_tracking_uri(mlflow_uri(folder))
        from sweep_task import task
        shown, sys.stdout = sys.stdout, open(os.devnull, "w")  # what the task prints
        task(-1)
        task(-2)

        def cpu() -> float:
            me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
            return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
        cpu0, start = cpu(), time.perf_counter()
        for x in range(calls):
            task(x)
        wall, spent = time.perf_counter() - start, cpu() - cpu0
        sys.stdout.close()
        sys.stdout = shown
        os.chdir(ROOT)
    return {"tracker": tracker, "calls": calls, "cpu_ms": round(1000 * spent / calls, 2),
            "wall_ms": round(1000 * wall / calls, 2)}


# --- the benchmark ----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--calls", type=int, nargs="+", default=[16, 32], help="calls for each pool size")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--trackers", nargs="+", default=list(TRACKERS), choices=TRACKERS)
    parser.add_argument("--label", default="now")
    parser.add_argument("--pool", nargs=3, help=argparse.SUPPRESS)  # tracker workers calls: one timed pool
    parser.add_argument("--profile", type=int, metavar="CALLS", help="profile CALLS @smt_logged calls")
    parser.add_argument("--per-call", type=int, metavar="CALLS", help="CPU per call, CALLS in one process")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # --per-call of one tracker, in this process
    parser.add_argument("--lock-stats", action="store_true",
                        help="@smt_logged's wait for the project's lock and its hold, ms per call (SMTLOCK_STATS)")
    args = parser.parse_args()
    if args.lock_stats:
        os.environ["SMTLOCK_STATS"] = "1"  # the pools' workers import smtlock after they fork
    if args.profile:
        print(profile(args.profile))
        return
    if args.per_call and args.one:
        print(json.dumps(per_call(args.one, args.per_call)))
        return
    if args.per_call:  # each tracker in a process of its own (this one imports neither MLflow nor Django)
        for tracker in args.trackers:
            done = subprocess.run([sys.executable, __file__, "--per-call", str(args.per_call), "--one", tracker],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{tracker} failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
            print(done.stdout.strip().splitlines()[-1], flush=True)
        return
    if args.pool:
        print(json.dumps(pool(args.pool[0], int(args.pool[1]), int(args.pool[2]))))
        return
    if len(args.calls) == 1:
        args.calls = args.calls * len(args.workers)
    import mlflow
    import sacred
    sizes: List[dict] = []
    with tempfile.TemporaryDirectory(prefix="smtlock-sweep-") as tmp:
        folders = make_folders(Path(tmp), args.trackers)
        expected = {tracker: 0 for tracker in args.trackers}
        for workers, calls in zip(args.workers, args.calls):
            size: dict = {"workers": workers, "calls": calls}
            for repeat in range(args.repeats):
                for tracker in args.trackers:  # interleaved, so a busy minute hits each alike
                    run = one_run(tracker, folders[tracker], workers, calls)
                    size.setdefault(tracker, {"runs": []})["runs"].append(run)
                    expected[tracker] += calls + workers  # one warm-up call per worker
                    print(json.dumps({"workers": workers, "tracker": tracker, "repeat": repeat, **run}),
                          flush=True)
            for tracker in args.trackers:
                rates = [run["calls_per_s"] for run in size[tracker]["runs"]]
                size[tracker]["calls_per_s"] = round(statistics.median(rates), 2)
            for peer in ("sacred", "mlflow"):
                if peer in args.trackers:
                    for tracker in args.trackers:
                        size[tracker][f"vs_{peer}"] = round(size[tracker]["calls_per_s"] /
                                                            size[peer]["calls_per_s"], 3)
            sizes.append(size)
        kept = {tracker: count(tracker, folders[tracker]) for tracker in args.trackers if tracker != "untracked"}
        for tracker, found in kept.items():
            assert found["kept"] == found["distinct"] == expected[tracker], (tracker, found, expected)
    command = ["python benchmarks/sweep.py", "--workers", *map(str, args.workers), "--calls", *map(str, args.calls),
               "--repeats", str(args.repeats), *(["--lock-stats"] if args.lock_stats else []), "--label", args.label]
    result = {"command": " ".join(command),
              "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
              "mlflow": mlflow.__version__, "sacred": sacred.__version__, "all_kept": True, "kept": kept,
              "sizes": sizes}
    print(table(result))
    out = HERE / "sweep.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = result
    out.write_text(json.dumps(runs, indent=1) + "\n")


def table(result: dict) -> str:
    lines = ["workers  calls  tracker     calls/s  vs Sacred  vs MLflow"]
    for size in result["sizes"]:
        for tracker in TRACKERS:
            if tracker in size:
                lines.append(f"{size['workers']:7}  {size['calls']:5}  {tracker:10}  {size[tracker]['calls_per_s']:7}  "
                             f"{size[tracker].get('vs_sacred', '-'):>9}  {size[tracker].get('vs_mlflow', '-'):>9}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
