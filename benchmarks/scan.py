"""Per-record CPU of Sumatra's dependency scan, with smtlock's memo and without (``SMTLOCK_MEMO=0``).

    python benchmarks/scan.py [--processes 3] [--scans 2] [--label now]    (adds to benchmarks/scan.json)

The main file is benchmarks/smt_run_loop.py's science.py (numpy, scipy, matplotlib; ``pip install -e
'.[bench]'``) in a project made as a user makes one (git repository, ``smt init``). Each of PROCESSES
fresh processes, one after another (as a loop of ``smt run`` jobs), loads the project and makes the scan
a record makes, SCANS times: ``sumatra.dependency_finder.find_dependencies`` for the main file, with
smtlock imported, as ``Project.new_record`` runs it. A scan's CPU is the process's own and its
subprocesses' (getrusage) around the call. Each run checks that the dependencies found (name, path,
version, diff, source, module) are the same with and without the memo.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from smt_run_loop import GIT, SCIENCE  # noqa: E402

from smtlock._harness.burst import make_project  # noqa: E402

SCAN = """
import contextlib, json, resource, sys
import smtlock
from smtlock._lock.paths import load
from sumatra.dependency_finder import find_dependencies
from sumatra.programs import PythonExecutable
try:  # the project whose .smt holds the memo shared by processes, as new_record says it
    from smtlock._sumatra.provenance import in_project
except ImportError:
    in_project = lambda path: contextlib.nullcontext()

def cpu():
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

project = load(".")
out = []
for _ in range(int(sys.argv[1])):
    executable = PythonExecutable(path=sys.executable)
    before = cpu()
    with in_project(project.path):
        found = find_dependencies("science.py", executable)
    out.append({"cpu_s": round(cpu() - before, 3), "dependencies": sorted(
        [d.name, d.path, str(d.version), d.diff, d.source, d.module] for d in found)})
print(json.dumps(out))
"""


def scans(project: Path, processes: int, per_process: int, memo: bool) -> list:
    """PROCESSES fresh processes, one after another, each making SCANS scans."""
    # matplotlib's cache outside the project: a new folder beside the main file (on sys.path) could be a
    # package that shadows a dependency, so the memo rightly scans again after one appears there
    env = {**os.environ, "SMTLOCK_MEMO": "1" if memo else "0", "MPLCONFIGDIR": str(project.parent / "mpl")}
    runs = []
    for _ in range(processes):
        done = subprocess.run([sys.executable, "-c", SCAN, str(per_process)], cwd=project, env=env,
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"a scan failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


def summary(runs: list) -> dict:
    first, later = runs[0][0]["cpu_s"], [p[0]["cpu_s"] for p in runs[1:]]
    again = [scan["cpu_s"] for p in runs for scan in p[1:]]
    return {"first_scan_cpu_s": first,
            "first_scan_of_a_later_process_cpu_s": round(statistics.mean(later), 3) if later else None,
            "later_scan_in_a_process_cpu_s": round(statistics.mean(again), 3) if again else None,
            "dependencies": len(runs[0][0]["dependencies"]),
            "per_process": [[scan["cpu_s"] for scan in p] for p in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--scans", type=int, default=2, help="scans in each process")
    parser.add_argument("--label", default="now")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smtlock-scan-") as tmp:
        result: dict = {}
        found = {}
        for memo in (False, True):  # each in a project of its own: the memo starts empty
            project = make_project(Path(tmp) / f"memo-{memo}")
            (project / "science.py").write_text(SCIENCE)
            subprocess.run(GIT + ["add", "science.py"], cwd=project, check=True)
            subprocess.run(GIT + ["commit", "-qm", "science"], cwd=project, check=True)
            runs = scans(project, args.processes, args.scans, memo)
            # the projects differ only in their folder's name
            found[memo] = [[str(field).replace(str(project), "PROJECT") for field in dependency]
                           for p in runs for scan in p for dependency in scan["dependencies"]]
            result["memo" if memo else "no_memo"] = summary(runs)
            print(json.dumps({"memo": memo, **result["memo" if memo else "no_memo"]}), flush=True)
    first = len(found[False]) // (args.processes * args.scans)
    assert found[True] == found[False] and found[False] == found[False][:first] * (args.processes * args.scans), \
        "the memo changed what the scan found"
    result.update(same_dependencies=True,
                  command=f"python benchmarks/scan.py --processes {args.processes} --scans {args.scans} "
                          f"--label {args.label}",
                  machine=f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}")
    out = HERE / "scan.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved[args.label] = result
    out.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    main()
