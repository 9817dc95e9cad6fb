"""What loading the project costs (``@smt_logged`` loads it for every call): this checkout against another.

    python benchmarks/load_project.py --against DIR [--loads 200] [--rounds 5]   (writes load_project.json)

One project; in each round a fresh process of each checkout (``git worktree add``) loads it ``--loads``
times after a first load, alternating; the median milliseconds per load of each, and this/against.
"""
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
sys.path.insert(0, str(ROOT))

from smtlock._harness.burst import make_project  # noqa: E402

LOADS = r"""
import json, sys, time
import smtlock
from sumatra.projects import load_project
load_project()
start = time.perf_counter()
for _ in range(int(sys.argv[1])):
    load_project()
print(json.dumps(1000 * (time.perf_counter() - start) / int(sys.argv[1])))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True)
    parser.add_argument("--loads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict = {"this": [], "against": []}
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp) / "p")
        for _ in range(args.rounds):
            for who, tree in (("this", str(ROOT)), ("against", args.against)):
                done = subprocess.run([sys.executable, "-c", LOADS, str(args.loads)], cwd=project, check=True,
                                      capture_output=True, text=True, env={**os.environ, "PYTHONPATH": tree})
                figures[who].append(json.loads(done.stdout))
    ms = {who: round(statistics.median(values), 3) for who, values in figures.items()}
    out = {"command": f"python benchmarks/load_project.py --against {args.against} --loads {args.loads}"
                      f" --rounds {args.rounds}",
           "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}", "ms_per_load": ms,
           "this/against": round(ms["this"] / ms["against"], 3)}
    print(json.dumps(out, indent=1))
    (ROOT / "benchmarks" / "load_project.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
