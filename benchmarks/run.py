"""The benchmark matrix: jobs 8..256 x sqlite, shelve x raw, locked, plus the no-contention floor.

    python benchmarks/run.py [--jobs 8 32 64 128 256] [--records 3]

Writes benchmarks/results.json and benchmarks/results.png. The floor runs the same locked jobs each
on a private copy of the project (no contention); "cost of safety" = locked wall / floor wall.
What one record costs outside the lock is measured by sweep.py (against MLflow), smt_run_loop.py --cpu
and scan.py; ``make bench`` runs them and this matrix.
"""
import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smtlock import SMTLock  # noqa: E402
from smtlock._harness.burst import JOB_SCRIPT, make_project, start_together  # noqa: E402
from smtlock._harness.stress import run_mode  # noqa: E402

HERE = Path(__file__).resolve().parent


def floor(store: str, jobs: int, records: int, base: Path) -> float:
    """Wall time of the same locked jobs, each on its own copy of the project."""
    template = make_project(base / "floor-template", store)
    commands, logs = [], []
    for job in range(jobs):
        copy = base / f"floor-{job}"
        shutil.copytree(template, copy, symlinks=True)
        # the copy's project file must point at its own store, not the template's
        text = (copy / ".smt" / "project").read_text().replace(str(template), str(copy))
        (copy / ".smt" / "project").write_text(text)
        commands.append([sys.executable, JOB_SCRIPT, "locked", str(copy), str(job), str(records),
                         "{ready}", "{go}", str(base / f"floor-{job}.json")])
        logs.append(base / f"floor-{job}.log")
    burst = start_together(commands, logs)
    failed = [logs[job].read_text()[-800:] for job, code in burst["codes"].items() if code]
    assert not failed, failed[0]
    return burst["wall_s"]


def uncontended_us(base: Path, n: int = 5000) -> float:
    (base / "bare" / ".smt").mkdir(parents=True)
    lock = SMTLock(base / "bare")
    with lock:
        pass
    start = time.perf_counter()
    for _ in range(n):
        with lock:
            pass
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[8, 32, 64, 128, 256])
    parser.add_argument("--records", type=int, default=3)
    parser.add_argument("--stores", nargs="+", default=["sqlite", "shelve"])
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="smtlock-bench-") as tmp:
        base = Path(tmp)
        acquire_us = uncontended_us(base)
        for store in args.stores:
            for jobs in args.jobs:
                for mode in ("raw", "locked"):
                    run = run_mode(mode, store, jobs, args.records, base / f"{store}-{jobs}")
                    run.pop("_rows"), run.pop("_labels_reported"), run.pop("project_dir")
                    if mode == "locked":
                        run["floor_wall_s"] = round(floor(store, jobs, args.records, base / f"floor-{store}-{jobs}"), 3)
                        run["cost_of_safety"] = round(run["wall_s"] / run["floor_wall_s"], 2)
                    runs.append(run)
                    print(json.dumps({k: run[k] for k in ("store", "jobs", "mode", "expected", "found", "lost",
                                                          "wall_s", "lock_held_ms")}), flush=True)
                shutil.rmtree(base / f"{store}-{jobs}", ignore_errors=True)
                shutil.rmtree(base / f"floor-{store}-{jobs}", ignore_errors=True)
    result = {"command": " ".join(["python benchmarks/run.py", *sys.argv[1:]]), "records_per_job": args.records,
              "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
              "uncontended_acquire_release_us": round(acquire_us, 1), "runs": runs}
    (HERE / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    plot(result, HERE / "results.png")


def table(result: dict) -> str:
    lines = ["store   jobs  mode    expected  found  lost  wall s  rec/s  held p50/p99 ms  floor s  cost"]
    for r in result["runs"]:
        held = r["lock_held_ms"]
        held = "-" if held["p50"] is None else f"{held['p50']:.1f}/{held['p99']:.1f}"
        lines.append(f"{r['store']:7} {r['jobs']:4}  {r['mode']:7} {r['expected']:8} {r['found']:6} {r['lost']:5} "
                     f"{r['wall_s']:7.1f} {r['records_per_s']:6} {held:>15} "
                     f"{r.get('floor_wall_s', '-'):>8} {r.get('cost_of_safety', '-'):>5}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (lost_ax, wall_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for store in sorted({r["store"] for r in result["runs"]}):
        for mode, style in (("raw", "--"), ("locked", "-")):
            runs = [r for r in result["runs"] if r["store"] == store and r["mode"] == mode]
            jobs = [r["jobs"] for r in runs]
            lost_ax.plot(jobs, [100 * r["lost"] / r["expected"] for r in runs], style, marker="o",
                         label=f"{store} {mode}")
            wall_ax.plot(jobs, [r["wall_s"] for r in runs], style, marker="o", label=f"{store} {mode}")
            if mode == "locked":
                wall_ax.plot(jobs, [r["floor_wall_s"] for r in runs], ":", marker=".",
                             label=f"{store} floor (private copies)")
    lost_ax.set(xlabel="simultaneous jobs", ylabel="records lost (%)", xscale="log", title="Records lost")
    wall_ax.set(xlabel="simultaneous jobs", ylabel="wall time (s)", xscale="log", title="Wall time")
    for ax in (lost_ax, wall_ax):
        ax.legend(fontsize=7)
    fig.suptitle(result["machine"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    main()
