"""Throughput of many short ``@smt_logged`` calls from a process pool: one shared project against the
same calls on private projects (the floor, where no lock is ever contended).

    python benchmarks/pool.py [--workers 8] [--calls 100] [--label now]    (adds to benchmarks/pool.json)

shared:  one project, a multiprocessing pool of W workers making W x C calls;
private: W projects, each with a pool of 1 worker making C calls, all W started together.
The function returns at once, so each call's cost is Sumatra's record keeping (VCS checks, the record
write, dependencies) and the lock: the worst case for contention.
"""
import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from smtlock._harness.burst import make_project  # noqa: E402

SWEEP = ROOT / "tests" / "programs" / "pool_sweep.py"
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]


def sweep_project(folder: Path) -> Path:
    make_project(folder)
    shutil.copy(SWEEP, folder)
    subprocess.run(GIT + ["add", "pool_sweep.py"], cwd=folder, check=True)
    subprocess.run(GIT + ["commit", "-qm", "sweep"], cwd=folder, check=True)
    return folder


def records(folder: Path) -> int:
    code = "from sumatra.projects import load_project; print(len(load_project().get_labels()))"
    return int(subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True, text=True,
                              check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--calls", type=int, default=100, help="calls per worker")
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    w, c = args.workers, args.calls
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        shared = sweep_project(base / "shared")
        start = time.perf_counter()
        subprocess.run([sys.executable, "pool_sweep.py", "mp-pool", str(w * c), str(w)], cwd=shared, check=True,
                       stdout=subprocess.DEVNULL)
        shared_s = time.perf_counter() - start
        shared_found = records(shared)
        privates = [sweep_project(base / f"private-{i}") for i in range(w)]
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "pool_sweep.py", "mp-pool", str(c), "1"], cwd=p,
                                  stdout=subprocess.DEVNULL) for p in privates]
        codes = [p.wait() for p in procs]
        private_s = time.perf_counter() - start
        private_found = sum(records(p) for p in privates)
    result = {
        "command": f"python benchmarks/pool.py --workers {w} --calls {c} --label {args.label}",
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "calls": w * c,
        "shared": {"wall_s": round(shared_s, 2), "records": shared_found, "calls_per_s": round(w * c / shared_s, 1)},
        "private": {"wall_s": round(private_s, 2), "records": private_found, "failed": sum(1 for x in codes if x),
                    "calls_per_s": round(w * c / private_s, 1)},
    }
    result["shared_vs_private"] = round(private_s / shared_s, 2)  # throughput ratio: the same calls each way
    print(json.dumps(result, indent=1))
    out = HERE / "pool.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    runs[args.label] = result
    out.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
