"""The copying half of ``smtlock postgres`` and of moves between stores (:mod:`smtlock.moves`), run as
a process of its own (never imported).

    python -m smtlock._copy URI PROJECT_NAME < pickled records
    python -m smtlock._copy --read URI PROJECT_NAME > pickled records

Sumatra's tagging keeps the tag links of every store's records in Django's default database, the
first store a process opens. Copied in the process that reads the old store, the records arrived
without their tags. Here the store is the only one: each record is saved with its tags, then the
labels and tags it holds are written to stdout (JSON) for the parent to verify; or its records are
read with their own tags.
"""

import json
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
        read(*sys.argv[2:4])
    else:
        main(*sys.argv[1:3])
