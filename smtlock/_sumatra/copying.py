"""The copying half of ``smtlock postgres`` and of moves between stores (:mod:`smtlock._sumatra.moves`), run as
a process of its own (never imported).

    SMTLOCK_COPY_URI=URI python -m smtlock._sumatra.copying PROJECT_NAME < pickled records
    SMTLOCK_COPY_URI=URI python -m smtlock._sumatra.copying --read PROJECT_NAME > pickled records

The URI comes in the environment, which only its user may read, not in the arguments, which every
local user may (``ps``): it can hold a password.

Sumatra's tagging keeps the tag links of every store's records in Django's default database, the
first store a process opens. Copied in the process that reads the old store, the records arrived
without their tags. Here the store is the only one: each record is saved with its tags, then the
labels and tags it holds are written to stdout (JSON) for the parent to verify; or its records are
read with their own tags.
"""

import json
import os
import pickle
import sys


def main(uri: str, project_name: str) -> None:
    from sumatra.recordstore.django_store import DjangoRecordStore

    import smtlock  # noqa: F401  (the safe write path)
    store = DjangoRecordStore(uri)
    for record in pickle.load(sys.stdin.buffer):
        store.save(project_name, record)
    stored = store.list(project_name) if store.has_project(project_name) else []
    json.dump({record.label: sorted(record.tags) for record in stored}, sys.stdout)


def read(uri: str, project_name: str) -> None:
    from sumatra.recordstore.django_store import DjangoRecordStore

    import smtlock  # noqa: F401
    store = DjangoRecordStore(uri)
    records = store.list(project_name) if store.has_project(project_name) else []
    sys.stdout.buffer.write(pickle.dumps(records))


if __name__ == "__main__":
    if sys.argv[1] == "--read":
        read(os.environ["SMTLOCK_COPY_URI"], sys.argv[2])
    else:
        main(os.environ["SMTLOCK_COPY_URI"], sys.argv[1])
