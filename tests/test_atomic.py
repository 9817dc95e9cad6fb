"""Files under .smt written atomically leave no temporary file behind: not when the command is
interrupted (SIGTERM, SIGINT) while it waits for the lock, and not for long after a writer was killed
with SIGKILL, which no process can clean up after itself."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import interruptible, waits_for_a_lock

from smtlock._harness.burst import make_project

SMT = os.path.join(os.path.dirname(sys.executable), "smt")
HOLD = "import smtlock, sys; smtlock.SMTLock('.').acquire(); print('held', flush=True); sys.stdin.read()"
KILLED_WRITER = """
import os, signal
from smtlock._lock.atomic import AtomicFile
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed between the write and the rename
with AtomicFile(".smt/labels", "w") as f:
    f.write("killed")
"""


def temporary_files(project: Path) -> list:
    return sorted(p.name for p in (project / ".smt").iterdir() if ".tmp" in p.name)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_smt_list_interrupted_while_it_waits_leaves_no_temporary_file(tmp_path: Path, signum: int) -> None:
    project = make_project(tmp_path / "project", "shelve", plugin=True)  # a shelve store's reads take the lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD], cwd=project, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    listing = None
    try:
        assert holder.stdout.readline().strip() == "held"
        listing = subprocess.Popen(interruptible([SMT, "list"]), cwd=project, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        while listing.poll() is None and not waits_for_a_lock(listing.pid):
            time.sleep(0.01)
        assert listing.poll() is None, listing.communicate()
        listing.send_signal(signum)
        listing.communicate(timeout=60)
        assert listing.returncode != 0
        assert temporary_files(project) == []
    finally:
        for proc in (listing, holder):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_the_next_writer_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", plugin=True)
    killed = subprocess.run([sys.executable, "-c", KILLED_WRITER], cwd=project, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(temporary_files(project)) == 1  # what SIGKILL leaves: nothing can remove it at once
    done = subprocess.run([SMT, "list"], cwd=project, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert temporary_files(project) == []
    assert (project / ".smt" / "labels").read_text() == ""  # the killed write never took effect
