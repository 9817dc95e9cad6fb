"""40 unmodified `smt run` jobs from a shell loop, without and with `smtlock enable`.

    python benchmarks/smt_run_loop.py [JOBS]      (writes benchmarks/smt_run_loop.json)
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from smtlock.burst import make_project  # noqa: E402

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
print(json.dumps([[r.label, r.parameters.as_dict().get("job"), sorted(r.tags)] for r in rs]))
"""


def run(jobs: int, plugin: bool, base: Path) -> dict:
    project = make_project(base / ("plugin" if plugin else "plain"), plugin=plugin)
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "JOBS": str(jobs)}
    start = time.perf_counter()
    done = subprocess.run(["bash", "-c", LOOP], cwd=project, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    rows = json.loads(subprocess.run([sys.executable, "-c", COUNT], cwd=project, capture_output=True,
                                     text=True).stdout)
    finished = {job for _, job, tags in rows if "_finished_" in tags}
    return {"plugin": plugin, "jobs": jobs, "failed_jobs": int(done.stdout.strip()), "records": len(rows),
            "distinct_labels": len({label for label, _, _ in rows}), "jobs_finished_once": len(finished),
            "wall_s": round(wall, 2)}


if __name__ == "__main__":
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 40
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(jobs, plugin, Path(tmp)) for plugin in (False, True)]
    for r in results:
        print(json.dumps(r))
    out = Path(__file__).with_name("smt_run_loop.json")
    out.write_text(json.dumps({"command": "python benchmarks/smt_run_loop.py " + str(jobs),
                               "results": results}, indent=2) + "\n")
