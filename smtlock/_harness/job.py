"""One job of a stress burst, run as a script (never imported: a raw job must not load smtlock).

    python job.py MODE PROJECT_DIR JOB RECORDS READY_FD GO_FD RESULT_FILE

It imports everything, reports ready on READY_FD, blocks until GO_FD closes (the start barrier), then
writes RECORDS records with parameters {"job": JOB, "rec": r} the way MODE says, and leaves what it
saw in RESULT_FILE (JSON). The harness checks the store itself; this report only adds lock figures
and error kinds.
"""

import json
import os
import sys
import traceback
from typing import Any, Dict, List


def main(argv: List[str]) -> int:
    mode, project_dir, result_file = argv[0], argv[1], argv[6]
    job, records, ready_fd, go_fd = (int(arg) for arg in argv[2:6])
    os.chdir(project_dir)
    sys.path.insert(0, project_dir)  # the project's main.py, for the decorator mode

    import sumatra.commands  # noqa: F401  (imported before the barrier, like everything else)
    from sumatra.parameters import SimpleParameterSet
    from sumatra.projects import load_project
    if mode in ("locked", "decorator"):
        import smtlock  # smt-run modes get it (or not) from the project's plugin list, as users do
    if mode == "decorator":
        import main as simulation
        simulate = smtlock.smt_logged(simulation.simulate)

    os.write(ready_fd, b"r")
    os.close(ready_fd)
    os.read(go_fd, 1)  # returns when the harness closes the other end: everyone starts together
    os.close(go_fd)

    result: Dict[str, Any] = {"job": job, "done": 0, "error": None, "labels": []}
    try:
        for rec in range(records):
            if mode == "decorator":
                simulate(job, rec)
            elif mode.startswith("smt-run"):
                from sumatra.cli import smt
                sys.argv = ["smt", "run", "params.txt", f"job={job}", f"rec={rec}"]
                code = smt()
                if code:
                    raise RuntimeError(f"smt run exited {code}")
            else:
                project = load_project()
                record = project.new_record(parameters=SimpleParameterSet({"job": job, "rec": rec}),
                                            main_file="main.py")
                if mode == "raw":
                    project.add_record(record)
                    project.save()
                else:
                    while True:  # as the README says to: a block whose lock was lost is run again
                        try:
                            with smtlock.SMTLock(project):
                                project.add_record(record)
                                project.save()
                            break
                        except smtlock.LockLost:
                            result["lock_lost"] = result.get("lock_lost", 0) + 1
                result["labels"].append(record.label)
            result["done"] += 1
    except BaseException as err:  # the harness counts error kinds; the job still fails
        result["error"] = type(err).__name__
        result["where"] = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}"
                           for f in traceback.extract_tb(err.__traceback__)]
        result["message"] = str(err)[:2000]
    if "smtlock._lock.lock" in sys.modules:
        result["lock"] = sys.modules["smtlock._lock.lock"].collected_stats()
    with open(result_file, "w") as f:
        json.dump(result, f)
    return 1 if result["error"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
