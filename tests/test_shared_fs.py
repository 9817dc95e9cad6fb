"""A project folder on a shared filesystem, as on a cluster: hosts made of mount and UTS namespaces,
each with its own FUSE mount of the folder (smtlock._harness.hosts), where file locks do not reach across."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROGRAMS, overlaps

from smtlock._harness.burst import start_together
from smtlock._harness.hosts import SharedFolderHosts
from smtlock._harness.stress import run_mode

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="hosts need root (namespaces and FUSE)")


@pytest.mark.burst
def test_sqlite_store_written_from_two_hosts_loses_nothing_silently(tmp_path: Path) -> None:
    """Plain Sumatra (and smtlock before this) corrupted the database and lost records whose write had
    returned. Now the first host to write keeps the store; the other host's jobs stop before touching
    it, each with a line that says what to do."""
    result = run_mode("locked", "sqlite", 32, 4, tmp_path, hosts=2)
    assert result["lost_silently"] == 0 and result["duplicates"] == 0
    assert result["integrity"] == "ok"
    hosts = sorted(result["hosts"].values(), key=lambda h: h["found"])
    assert hosts[0] == {"jobs": 16, "failed_jobs": 16, "killed_jobs": 0, "expected": 64, "found": 0}  # loudly
    assert hosts[1] == {"jobs": 16, "failed_jobs": 0, "killed_jobs": 0, "expected": 64, "found": 64}  # all kept
    assert sorted(r["label"] for r in result["_rows"]) == result["_labels_reported"]
    (message,) = result["messages"]
    assert "a file on a shared filesystem (fuse" in message and "`smtlock postgres URL`" in message
    assert result["journal_mode"] == "delete"  # never WAL on a shared filesystem


@pytest.mark.burst
def test_postgres_store_from_two_hosts_keeps_every_record(pg, tmp_path: Path) -> None:
    result = run_mode("locked", pg.uri("smt", "s3cret", "sharedfs"), 32, 4, tmp_path, hosts=2)
    assert result["found"] == 128 and result["lost"] == 0 and result["failed_jobs"] == 0, \
        (result["errors"], result["messages"])
    assert sorted(r["label"] for r in result["_rows"]) == result["_labels_reported"]
    assert result["duplicate_rows"] == {}


@pytest.mark.burst
def test_one_host_on_a_shared_filesystem_keeps_working(tmp_path: Path) -> None:
    """A user whose home is on NFS, with every job on one machine."""
    result = run_mode("locked", "sqlite", 32, 2, tmp_path, hosts=1)
    assert result["found"] == 64 and result["lost"] == 0 and result["failed_jobs"] == 0
    assert sorted(r["label"] for r in result["_rows"]) == result["_labels_reported"]


def test_the_lease_excludes_across_hosts(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / ".smt").mkdir(parents=True)
    log = shared / "sections.log"
    with SharedFolderHosts(shared, 2) as hosts:
        commands = [hosts.command(i % 2, [sys.executable, str(PROGRAMS / "sections.py"), str(shared), str(log),
                                          "25", "{ready}", "{go}"]) for i in range(4)]
        burst = start_together(commands, [tmp_path / f"{i}.out" for i in range(4)])
    assert burst["codes"] == {i: 0 for i in range(4)}, [(tmp_path / f"{i}.out").read_text() for i in range(4)]
    assert len(log.read_text().splitlines()) == 4 * 25 * 2
    assert overlaps(log) == 0


HOLD = "import smtlock, sys; smtlock.SMTLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()"


def test_a_dead_hosts_lease_expires_and_the_doctor_reports_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    (shared / ".smt").mkdir(parents=True)
    env = {**os.environ, "SMTLOCK_LEASE": "2"}
    with SharedFolderHosts(shared, 2) as hosts:
        holder = subprocess.Popen(hosts.command(0, [sys.executable, "-c", HOLD, str(shared)]), env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "held"
        os.kill(holder.pid, signal.SIGKILL)  # as a host that loses power: its lease stays
        holder.wait()
        doctor = subprocess.run(hosts.command(1, [SMTLOCK, "doctor", "--json", str(shared)]), env=env,
                                capture_output=True, text=True)
        (lease,) = [f for f in json.loads(doctor.stdout)["findings"] if f["check"] == "lease"]
        assert lease["status"] in ("ok", "warning") and f"pid {holder.pid} on host-1" in lease["detail"]
        waiter = subprocess.run(hosts.command(1, [sys.executable, "-c", (
            "import smtlock, sys\nlock = smtlock.SMTLock(sys.argv[1])\n"
            "try:\n    lock.acquire(timeout=0)\nexcept smtlock.LockTimeout as err:\n    print('busy:', err)\n"
            "lock.acquire(timeout=60)\nprint('taken')\n"), str(shared)]), env=env, capture_output=True, text=True)
    assert waiter.returncode == 0, waiter.stderr
    busy, taken = waiter.stdout.strip().splitlines()
    assert busy.startswith("busy:") and "on host-1 since" in busy and "lease" in busy
    assert taken == "taken"
