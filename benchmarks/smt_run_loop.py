"""Unmodified `smt run` jobs from a shell loop, without and with `smtlock enable`.

    python benchmarks/smt_run_loop.py [JOBS]        (JOBS, default 40, started together; writes "results")
    python benchmarks/smt_run_loop.py --cpu 40 [--modes plain smtlock untracked] [--label now]
                                                    [--before DIR]
                                                    (one job after another; adds to "cpu")

Both write benchmarks/smt_run_loop.json. Started together, plain Sumatra loses records and labels.
``--cpu``: the CPU a job costs. A script importing numpy, scipy and matplotlib (what a simulation
imports; ``pip install -e '.[bench]'``) is run JOBS times by ``smt run`` in a project with plain
Sumatra, JOBS times in one with ``smtlock enable``, and JOBS times untracked (``python science.py``),
the three interleaved, one job at a time. A job's CPU is its process tree's (RUSAGE_CHILDREN); a job's
overhead is its CPU less the untracked script's mean CPU. Plain Sumatra runs with ``SMTLOCK_LAZY_IMPORTS=0``,
as without smtlock installed (smtlock.pth makes Sumatra's imports of numpy and scipy.stats lazy in any project).
``--modes`` runs some of the three (their results join the label's others). ``--before DIR`` adds a
fourth mode, ``before``: ``smtlock enable`` as with ``smtlock``, but the jobs import smtlock from DIR (an
earlier tree, ``git archive REV | tar -x -C DIR``, put first on ``PYTHONPATH``; the start hook is the
installed one), interleaved with the others: a change's effect measured side by side.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smtlock._harness.burst import make_project  # noqa: E402

OUT = Path(__file__).with_name("smt_run_loop.json")
LOOP = """
pids=()
for i in $(seq 0 $((JOBS - 1))); do smt run params.txt job=$i rec=0 > run-$i.log 2>&1 & pids+=($!); done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
echo $failed
"""
COUNT = """
import json
from sumatra.recordstore import get_record_store
rs = get_record_store(".smt/records").list("stress")
print(json.dumps([[r.label, r.parameters.as_dict().get("job"), sorted(r.tags), len(r.dependencies)] for r in rs]))
"""
SCIENCE = '''"""A small simulation importing what simulations import: numpy, scipy and matplotlib."""
import os
import sys

import matplotlib
import numpy as np
import scipy.linalg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

values = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in open(sys.argv[1]) if "=" in line)}
job = int(values["job"])
rng = np.random.default_rng(job)
a = rng.standard_normal((60, 60))
eigenvalues = scipy.linalg.eigvalsh(a + a.T)
fig, ax = plt.subplots(figsize=(3, 2))
ax.hist(eigenvalues, bins=20)
os.makedirs("Data", exist_ok=True)
fig.savefig(f"Data/eigenvalues-{job}.png", dpi=50)
print(f"job {job}: largest eigenvalue {eigenvalues[-1]:.3f}")
'''
MODES = ("plain", "smtlock", "untracked")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def _env(**extra: str) -> Dict[str, str]:
    """The jobs' environment: this Python's bin first, and bytecode cached as on a user's machine (this
    machine sets PYTHONDONTWRITEBYTECODE: every job compiled Sumatra, Django and SciPy again, 2-3 CPU s)."""
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"], **extra}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


#: plain Sumatra is Sumatra without smtlock installed: smtlock.pth's lazy imports turned off
PLAIN = {"SMTLOCK_LAZY_IMPORTS": "0"}


def _rows(project: Path) -> list:
    return json.loads(subprocess.run([sys.executable, "-c", COUNT], cwd=project, capture_output=True,
                                     text=True, check=True).stdout)


def run(jobs: int, plugin: bool, base: Path) -> dict:
    """JOBS `smt run` started together; what the store kept."""
    project = make_project(base / ("plugin" if plugin else "plain"), plugin=plugin)
    start = time.perf_counter()
    env = _env(JOBS=str(jobs), **({} if plugin else PLAIN))
    done = subprocess.run(["bash", "-c", LOOP], cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rows = _rows(project)
    finished = {job for _, job, tags, _ in rows if "_finished_" in tags}
    return {"plugin": plugin, "jobs": jobs, "failed_jobs": int(done.stdout.strip()), "records": len(rows),
            "distinct_labels": len({label for label, _, _, _ in rows}), "jobs_finished_once": len(finished),
            "wall_s": round(wall, 2)}


# --- the CPU of a job --------------------------------------------------------------------------------

def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _job(command: List[str], cwd: Path, env: Dict[str, str]) -> Dict[str, float]:
    """One job, waited for: its wall time and its whole process tree's CPU."""
    cpu, start = _children_cpu(), time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed in {cwd}:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    return {"cpu_s": round(cpu, 3), "wall_s": round(wall, 3)}


def cpu_loop(jobs: int, modes: List[str], base: Path, before: str = "") -> Dict[str, dict]:
    """JOBS jobs of each mode, interleaved, one at a time (mode "before": smtlock from ``before``)."""
    env = _env(MPLCONFIGDIR=str(base / "matplotlib"))  # its font cache, built by the warm-up below
    folders: Dict[str, Path] = {}
    for mode in modes:
        folder = make_project(base / f"cpu-{mode}", plugin=mode in ("smtlock", "before"))
        (folder / "science.py").write_text(SCIENCE)
        subprocess.run(GIT + ["add", "science.py"], cwd=folder, check=True)
        subprocess.run(GIT + ["commit", "-qm", "science"], cwd=folder, check=True)
        folders[mode] = folder
    _job([sys.executable, "science.py", "params.txt"], folders[modes[0]], env)  # matplotlib's first-run cache
    per_job: Dict[str, list] = {mode: [] for mode in modes}
    for i in range(jobs):
        for mode in modes:
            if mode == "untracked":
                (folders[mode] / "params.txt").write_text(f"job = {i}\nrec = 0\n")
                command = [sys.executable, "science.py", "params.txt"]
            else:
                command = ["smt", "run", "-m", "science.py", "params.txt", f"job={i}", "rec=0"]
            extra = PLAIN if mode == "plain" else {"PYTHONPATH": before} if mode == "before" else {}
            per_job[mode].append(_job(command, folders[mode], {**env, **extra}))
        print(json.dumps({"job": i, **{mode: per_job[mode][-1] for mode in modes}}), flush=True)
    results: Dict[str, dict] = {}
    for mode in modes:
        cpu = [job["cpu_s"] for job in per_job[mode]]
        results[mode] = {"jobs": jobs, "first_cpu_s": cpu[0],
                         "cpu_s_after_first": {"mean": round(statistics.mean(cpu[1:] or cpu), 3),
                                               "median": round(statistics.median(cpu[1:] or cpu), 3),
                                               "max": max(cpu[1:] or cpu)},
                         "wall_s_total": round(sum(job["wall_s"] for job in per_job[mode]), 2),
                         "per_job": per_job[mode]}
        if mode != "untracked":
            rows = _rows(folders[mode])
            finished = {job for _, job, tags, _ in rows if "_finished_" in tags}
            results[mode].update(records=len(rows), jobs_finished=len(finished),
                                 dependencies_found=sorted({deps for _, _, _, deps in rows}))
            assert len(rows) == jobs and len(finished) == jobs, (mode, rows)
    return results


def summary(cpu: Dict[str, dict]) -> Dict[str, float]:
    """Overhead per job after the first (job CPU - untracked CPU), each mode, and smtlock's / plain's."""
    if "untracked" not in cpu:
        return {}
    bare = cpu["untracked"]["cpu_s_after_first"]["mean"]
    out = {f"{mode}_overhead_cpu_s": round(cpu[mode]["cpu_s_after_first"]["mean"] - bare, 3)
           for mode in ("plain", "smtlock", "before") if mode in cpu}
    if "plain" in cpu and "smtlock" in cpu:
        out["smtlock_over_plain"] = round(out["smtlock_overhead_cpu_s"] / out["plain_overhead_cpu_s"], 3)
    if "plain" in cpu and "before" in cpu:
        out["before_over_plain"] = round(out["before_overhead_cpu_s"] / out["plain_overhead_cpu_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", type=int, nargs="?", default=40, help="jobs started together")
    parser.add_argument("--cpu", type=int, metavar="JOBS", help="jobs one after another, CPU per job")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--label", default="now")
    parser.add_argument("--before", metavar="DIR", default="", help="also run smtlock from DIR (mode 'before')")
    args = parser.parse_args()
    saved = json.loads(OUT.read_text()) if OUT.exists() else {}
    with tempfile.TemporaryDirectory(prefix="smtlock-loop-") as tmp:
        if args.cpu is None:
            results = [run(args.jobs, plugin, Path(tmp)) for plugin in (False, True)]
            for r in results:
                print(json.dumps(r))
            saved.update(command=f"python benchmarks/smt_run_loop.py {args.jobs}", results=results)
        else:
            modes = [mode for mode in MODES if mode in args.modes] + (["before"] if args.before else [])
            entry = saved.setdefault("cpu", {}).setdefault(args.label, {"modes": {}})
            before = os.path.abspath(args.before) if args.before else ""
            entry["modes"].update(cpu_loop(args.cpu, modes, Path(tmp), before))
            named = " ".join(mode for mode in modes if mode != "before")
            entry.setdefault("commands", {})[" ".join(modes)] = (
                f"python benchmarks/smt_run_loop.py --cpu {args.cpu} --modes {named} --label {args.label}"
                + (f" --before {args.before}" if args.before else ""))
            entry["machine"] = f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}"
            entry["summary"] = summary(entry["modes"])
            for mode, r in entry["modes"].items():
                print(f"{mode:9}  first job {r['first_cpu_s']:6.2f} CPU s  after the first: mean "
                      f"{r['cpu_s_after_first']['mean']:6.2f}  median {r['cpu_s_after_first']['median']:6.2f}")
            print(json.dumps(entry["summary"]))
    OUT.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
