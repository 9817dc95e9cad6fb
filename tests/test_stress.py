"""The harness's own verification: it must catch a lost, a duplicated and a stray record."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from smtlock._harness.census import recount, verify
from smtlock._harness.stress import exit_status, run_mode

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")


def rows(pairs):
    return [{"label": f"l{i}", "job": j, "rec": r} for i, (j, r) in enumerate(pairs)]


def test_verify_counts_lost_duplicated_and_unexpected() -> None:
    complete = [(j, r) for j in range(3) for r in range(2)]
    assert verify(rows(complete), 3, 2)["lost"] == 0
    lost = verify(rows(complete[1:]), 3, 2)
    assert (lost["expected"], lost["found"], lost["lost"]) == (6, 5, 1)
    doubled = verify(rows(complete + [(1, 1)]), 3, 2)
    assert doubled["duplicates"] == 1 and doubled["lost"] == 0
    assert verify(rows(complete + [(7, 0)]), 3, 2)["unexpected"] == 1
    killed = verify(rows([p for p in complete if p[0] != 2] + [(2, 0)]), 3, 2, killed=[2])
    assert (killed["expected"], killed["lost"], killed["records_of_killed_jobs"]) == (4, 0, 1)
    assert killed["distinct_labels"] == killed["found"] == 4  # counted over the same records


def test_exit_status_judges_safe_modes_only() -> None:
    run = {"lost": 0, "duplicates": 0, "failed_jobs": 0}
    assert exit_status([{**run, "mode": "raw", "lost": 9}, {**run, "mode": "locked"}]) == 0
    assert exit_status([{**run, "mode": "locked", "lost": 1}]) == 1
    assert exit_status([{**run, "mode": "smt-run", "duplicates": 1}]) == 1


@pytest.mark.burst
def test_recount_reads_the_store_not_the_jobs(tmp_path: Path) -> None:
    """Tamper with a kept project's store: the recount sees what is really there."""
    result = run_mode("locked", "sqlite", 4, 2, tmp_path)
    project = Path(result["project_dir"])
    assert verify(result["_rows"], 4, 2)["lost"] == 0
    db = sqlite3.connect(project / ".smt" / "records")
    victim = db.execute("SELECT db_id FROM django_store_record LIMIT 1").fetchone()[0]
    db.execute("DELETE FROM django_store_record_platforms WHERE record_id = ?", (victim,))
    db.execute("DELETE FROM django_store_record_dependencies WHERE record_id = ?", (victim,))
    db.execute("DELETE FROM django_store_record WHERE db_id = ?", (victim,))
    columns = [c[1] for c in db.execute("PRAGMA table_info(django_store_record)") if c[1] != "db_id"]
    listed = ", ".join(f'"{c}"' for c in columns)
    db.execute("DROP INDEX smtlock_unique_django_store_record")  # a store that has none (plain Sumatra's)
    db.execute(f"INSERT INTO django_store_record ({listed}) SELECT {listed} FROM django_store_record LIMIT 1")
    db.commit()
    found = verify(recount("sqlite", project)["records"], 4, 2)
    assert found["lost"] == 1 and found["duplicates"] == 1 and found["found"] == 8


@pytest.mark.burst
def test_command_line_json_and_exit(tmp_path: Path) -> None:
    out = tmp_path / "runs.json"
    done = subprocess.run([SMTLOCK, "stress", "--jobs", "6", "--records", "2", "--mode", "raw", "--mode",
                           "locked", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["mode"] for r in runs] == ["raw", "locked"]
    keys = {"mode", "store", "jobs", "records_per_job", "expected", "found", "lost", "duplicates",
            "distinct_labels", "failed_jobs", "errors", "wall_s", "records_per_s", "lock_held_ms",
            "lock_wait_ms"}
    assert keys <= set(runs[1]) and set(runs[1]["lock_held_ms"]) == {"p50", "p99"}
    assert runs[1]["lost"] == 0 and runs[1]["found"] == 12
    lines = done.stdout.splitlines()
    assert lines[0].startswith("smtlock stress: 6 jobs x 2 records, all started at once")  # at once
    assert lines[1].split() == ["plain", "Sumatra", "smtlock"]  # the side-by-side table, modes in words
    assert lines[-2].endswith("; smtlock lost 0") and lines[-2].startswith("plain Sumatra lost ")
    assert lines[-1] == f"figures written to {out}"
