"""Moves between two Django stores in a project where smtlock is active: ``smt configure --store`` and
``smt sync`` copy each record with exactly its tags, and leave the other store's tags as they were
(upstream links them all in the first store's database: records arrive with others' tags)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_python

SMT = os.path.join(os.path.dirname(sys.executable), "smt")
SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")
TAGS = {f"r{i}": sorted({f"tag{i}", "common"} if i % 2 else {f"tag{i}"}) for i in range(4)}
WRITE = """
import json, sys
import smtlock
from sumatra.projects import load_project
from sumatra.parameters import SimpleParameterSet
project = load_project()
for label, tags in json.loads(sys.argv[1]).items():
    project.add_record(project.new_record(parameters=SimpleParameterSet({"label": label}), main_file="main.py",
                                          label=label))
    for tag in tags:
        project.add_tag(label, tag)
"""
READ = """
import json, sys
from sumatra.recordstore.django_store import DjangoRecordStore
store = DjangoRecordStore(sys.argv[1])  # the only store of this process: its own tag links
print(json.dumps({r.label: sorted(r.tags) for r in store.list("stress")}))
"""


def tags_in(store: str, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", READ, store], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write(project: Path, tags: dict) -> None:
    done = subprocess.run([sys.executable, "-c", WRITE, json.dumps(tags)], cwd=project, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr


#: Sumatra's smt, each command line it starts logged to $STARTED by an audit hook
SMT_LOGGED = ("import os, sys; sys.addaudithook(lambda event, args: event == 'subprocess.Popen' and "
              "open(os.environ['STARTED'], 'a').write(repr(args[1]) + '\\n')); "
              "sys.argv[0] = 'smt'; from sumatra.cli import smt; sys.exit(smt())")


def smt(project: Path, *args: str) -> None:
    started = project.parent / "smt-started"
    done = subprocess.run([sys.executable, "-c", SMT_LOGGED, *args], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "STARTED": str(started)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "s3cret" not in (started.read_text() if started.exists() else "")  # ps shows command lines


@pytest.mark.parametrize("target", ["sqlite", "postgres"])
def test_configure_store_and_sync_keep_every_tag(new_project, tmp_path: Path, target: str, request) -> None:
    project = new_project()
    assert subprocess.run([SMTLOCK, "enable"], cwd=project, capture_output=True).returncode == 0
    old = str(project / ".smt" / "records")
    write(project, TAGS)
    before = tags_in(old, project)  # each record's tags, with Sumatra's status tag
    assert {label: sorted(set(tags) - {"_initialized_"}) for label, tags in before.items()} == TAGS
    new = str(tmp_path / "moved.db") if target == "sqlite" else request.getfixturevalue("pg_uri")
    assert tags_in(new, project) == {}  # made (Sumatra takes a path that does not exist for a shelf)
    smt(project, "configure", "--store", new)
    assert "smtlock._sumatra.copying" in (project.parent / "smt-started").read_text()  # the audit hook saw the copy
    assert tags_in(new, project) == before  # upstream: no tags at all in the new store
    assert tags_in(old, project) == before  # upstream: the old store's records got the copies' links too

    write(project, {"r9": ["late"]})  # in the project's new store
    after = tags_in(new, project)
    assert set(after) - set(before) == {"r9"} and "late" in after["r9"]
    smt(project, "sync", old)  # the old store gets r9 from the project's store
    assert tags_in(old, project) == after  # upstream: r9 read with old's links for its row id
    assert tags_in(new, project) == after
    run_python("import smtlock; from sumatra.projects import load_project; load_project()", project)
