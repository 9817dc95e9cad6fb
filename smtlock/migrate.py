"""``smtlock postgres``: move a project's records to a PostgreSQL store, copied and verified."""

from __future__ import annotations

from typing import List
from urllib.parse import urlsplit

from .errors import StoreError
from .lock import SMTLock
from .postgres import check_server, check_uri, create_database, mask_uri
from .project import describe_store, load

__all__ = ["move_project"]


def move_project(path: str, uri: str, dry_run: bool = False) -> List[str]:
    """Switch a project's record store to PostgreSQL, copying and verifying its records; the old store
    is left as it was (a backup). Returns what was done (or would be), a line each."""
    from sumatra.recordstore.django_store import DjangoRecordStore
    check_uri(uri)
    project = load(path)
    old = project.record_store
    where = mask_uri(uri)
    if getattr(old, "_db_file", None) == uri:
        return [f"{project.name} already uses {where} (nothing to do)"]
    check_server(uri, must_exist=False)
    if dry_run:
        labels = old.labels(project.name) if old.has_project(project.name) else []
        return [f"would create database {urlsplit(uri).path.lstrip('/')!r} at {where} if missing",
                f"would copy {len(labels)} records of project {project.name} from {describe_store(old)}",
                f"would switch the project to {where}, keeping {describe_store(old)} as a backup"]
    lines = []
    if create_database(uri):
        lines.append(f"created database {urlsplit(uri).path.lstrip('/')!r} at {where}")
    new = DjangoRecordStore(uri)  # before the old store is used: Django is configured only once
    with SMTLock(project):
        labels = old.labels(project.name) if old.has_project(project.name) else []
        present = set(new.labels(project.name)) if new.has_project(project.name) else set()
        for label in labels:
            if label not in present:
                new.save(project.name, old.get(project.name, label))
        copied = set(new.labels(project.name))
        missing = set(labels) - copied
        if missing:
            raise StoreError(f"{len(missing)} records did not arrive in {where} "
                             "(the project still uses its old store)")
        lines.append(f"copied {len(labels) - len(present & set(labels))} records of project "
                     f"{project.name}; verified: {len(labels)} in the old store, all {len(labels)} in {where}")
        project.record_store = new
        project.save()
    lines.append(f"project {project.name} now uses {where}; {describe_store(old)} is kept untouched "
                 "as a backup")
    return lines
