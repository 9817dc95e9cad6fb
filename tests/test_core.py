"""The core install (no Django: Sumatra's shelve store is then its default) imports and protects."""

import json
from pathlib import Path

from conftest import run_python

NO_DJANGO = "import sys; sys.modules['django'] = None  # as in an install without the web extra\n"


def test_without_django_a_shelve_project_is_protected(new_project) -> None:
    project = new_project("shelve")
    done = run_python(NO_DJANGO + """
import json, smtlock
from sumatra.parameters import SimpleParameterSet
from sumatra.projects import load_project
assert not smtlock._sumatra.patches.DjangoRecordStore
project = load_project()
labels = []
for x in range(3):
    record = project.new_record(parameters=SimpleParameterSet({"x": x}), main_file="main.py", label="same")
    with smtlock.SMTLock(project):
        project.add_record(record)
        project.save()
    labels.append(record.label)
print(json.dumps([labels, sorted(project.get_labels()), type(project.record_store).__name__]))
""", project)
    labels, stored, kind = json.loads(done.stdout)
    assert labels == ["same", "same_1", "same_2"] and stored == sorted(labels)
    assert kind == "ShelveRecordStore"
    assert (Path(project) / ".smt" / "smtlock.lock").exists()
