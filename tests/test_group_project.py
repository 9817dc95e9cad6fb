"""A project shared by a group: what one member's jobs create under .smt, another member can use.

Two users of one group (uids 2001 and 2002, gid 3000, umask 002) write records in turn. The child
processes keep only CAP_DAC_READ_SEARCH, so they can read this test environment's Python under /root
while every write is checked against their own uid and group.
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from smtlock.burst import make_project

GROUP = 3000
WRITE = """
import os, sys, smtlock
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
os.umask(0o002)
project = load_project()
record = project.new_record(parameters=SimpleParameterSet({"who": sys.argv[1]}), main_file="main.py")
with smtlock.SMTLock(project):
    project.add_record(record)
    project.save()
print("wrote", record.label)
"""


def as_member(uid: int, project: Path) -> subprocess.CompletedProcess:
    member = ["setpriv", f"--reuid={uid}", f"--regid={GROUP}", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "--"]
    env = {**os.environ, "HOME": str(project.parent), "GIT_CONFIG_COUNT": "1",  # a lab's git setting
           "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
    return subprocess.run([*member, sys.executable, "-c", WRITE, str(uid)], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching between two users needs root")
def test_two_members_of_a_group_take_turns() -> None:
    base = Path(tempfile.mkdtemp(prefix="smtlock-group-"))  # not under pytest's 0700 tmp folder
    try:
        os.chmod(base, 0o755)
        project = make_project(base / "project")
        for folder, dirs, files in os.walk(base / "project"):  # what an admin does for a lab project
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                os.chown(name, 2001, GROUP)
                os.chmod(name, os.stat(name).st_mode | stat.S_IWGRP | (stat.S_ISGID if os.path.isdir(name) else 0))
        first = as_member(2001, project)
        assert first.returncode == 0, first.stderr[-2000:]
        second = as_member(2002, project)
        assert second.returncode == 0, second.stderr[-2000:]
        for name in ("smtlock.lock", "smtlock.lock.holder", "project"):
            assert stat.S_IMODE((project / ".smt" / name).stat().st_mode) & 0o060 == 0o060, name
    finally:
        shutil.rmtree(base)
