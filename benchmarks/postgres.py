"""PostgreSQL figures on a throwaway local server: raw vs locked bursts, two project folders sharing
only the database, and many jobs against a small max_connections.

    python benchmarks/postgres.py        (writes benchmarks/postgres.json)
"""
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from pgserver import Cluster  # noqa: E402

from smtlock._harness.burst import JOB_SCRIPT, make_project, start_together  # noqa: E402
from smtlock._harness.census import recount, verify  # noqa: E402
from smtlock._harness.stress import run_mode  # noqa: E402


def keep(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("_rows", "_labels_reported", "project_dir")}


def two_folders(uri: str, base: Path, jobs: int, records: int) -> dict:
    """Two projects with the same name and database but no common lock file, as on two hosts."""
    folders = [make_project(base / name, uri) for name in ("host-a", "host-b")]
    commands = [[sys.executable, JOB_SCRIPT, "locked", str(folder), str(offset + j), str(records),
                 "{ready}", "{go}", str(base / f"{offset + j}.json")]
                for folder, offset in zip(folders, (0, jobs)) for j in range(jobs)]
    burst = start_together(commands, [base / f"{i}.log" for i in range(len(commands))])
    counted = recount(uri, folders[0])
    result = verify(counted["records"], 2 * jobs, records)
    result.update({"mode": "locked, 2 folders", "jobs": 2 * jobs, "records_per_job": records,
                   "failed_jobs": sum(1 for c in burst["codes"].values() if c), "wall_s": round(burst["wall_s"], 2),
                   "duplicate_rows": counted["duplicate_rows"]})
    return result


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        server = Cluster()
        try:
            server.sql("CREATE ROLE smt LOGIN PASSWORD 'bench' CREATEDB")
            for mode in ("raw", "locked"):
                results.append(keep(run_mode(mode, server.uri("smt", "bench", "burst"), 64, 5, base / "burst")))
            server.sql("CREATE DATABASE shared OWNER smt")
            results.append(two_folders(server.uri("smt", "bench", "shared"), base / "two", 32, 5))
        finally:
            server.stop()
        small = Cluster(max_connections=30)
        try:
            small.sql("CREATE ROLE smt LOGIN PASSWORD 'bench' CREATEDB")
            run = keep(run_mode("locked", small.uri("smt", "bench", "small"), 96, 3, base / "small"))
            run["max_connections"] = 30
            results.append(run)
        finally:
            small.stop()
    for r in results:
        print(json.dumps({k: r.get(k) for k in ("mode", "jobs", "records_per_job", "expected", "found", "lost",
                                                "failed_jobs", "errors", "distinct_labels", "duplicate_rows",
                                                "wall_s", "max_connections")}))
    (Path(__file__).with_name("postgres.json")).write_text(
        json.dumps({"command": "python benchmarks/postgres.py", "runs": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
