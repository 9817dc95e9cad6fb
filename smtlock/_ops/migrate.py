"""``smtlock postgres``: move a project's records to a PostgreSQL store, copied and verified."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Dict, List
from urllib.parse import unquote, urlsplit

from .._lock.lock import SMTLock
from .._postgres.client import (
    check_transactions,
    check_uri,
    create_database,
    database_exists,
    keep_password_apart,
    mask_uri,
    without_password,
)
from .._sumatra.project import describe_store, load
from ..errors import StoreError

__all__ = ["move_project"]


def _copy(uri: str, project_name: str, records: List[Any]) -> Dict[str, List[str]]:
    """Save ``records`` in the store at ``uri`` from a process where it is Django's only database;
    return the labels it then holds, with their tags. The caller holds the project's lock, and has
    set the store up (migrations, label index) while taking it."""
    with tempfile.TemporaryDirectory() as elsewhere:  # not the project: its lock is held by the caller
        done = subprocess.run([sys.executable, "-m", "smtlock._sumatra.copying", project_name], cwd=elsewhere,
                              input=pickle.dumps(records), capture_output=True,
                              env={**os.environ, "SMTLOCK_COPY_URI": uri})  # not argv: ps shows it
    if done.returncode:
        last = mask_uri((done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1])
        password = unquote(urlsplit(uri).password or "")
        last = last.replace(password, "***") if password else last  # even outside a URI
        raise StoreError(f"copying to {mask_uri(uri)} failed: {last} (the project still uses its old store)")
    return json.loads(done.stdout)


def move_project(path: str, uri: str, dry_run: bool = False) -> List[str]:
    """Switch a project's record store to PostgreSQL, copying and verifying its records; the old store
    is left as it was (a backup). Returns what was done (or would be), a line each."""
    from sumatra.recordstore.django_store import DjangoRecordStore
    check_uri(uri)
    project = load(path)
    old = project.record_store
    where = mask_uri(uri)
    if getattr(old, "_db_file", None) in (uri, without_password(uri)):
        return [f"{project.name} already uses {where} (nothing to do)"]
    # the database itself first: a role given one database (no CREATEDB, behind a pooler that exposes
    # no `postgres` database) uses it as it is; only a missing one is created
    exists = database_exists(uri)
    if exists:
        check_transactions(uri)  # a statement pooler: refused before anything is written
    if dry_run:
        labels = old.labels(project.name) if old.has_project(project.name) else []
        dbname = urlsplit(uri).path.lstrip('/')
        return [f"would use database {dbname!r} at {where}, which exists" if exists else
                f"would create database {dbname!r} at {where}",
                f"would copy {len(labels)} records of project {project.name} from {describe_store(old)}",
                f"would switch the project to {where}, keeping {describe_store(old)} as a backup"]
    lines = []
    if not exists and create_database(uri):
        check_transactions(uri)
        lines.append(f"created database {urlsplit(uri).path.lstrip('/')!r} at {where}")
    uri, kept = keep_password_apart(uri)  # the project's files get the URI without it
    lines += [kept] if kept else []
    new = DjangoRecordStore(uri)  # before the old store is used: Django is configured only once
    with SMTLock(project):
        records = [old.get(project.name, label) for label in old.labels(project.name)] \
            if old.has_project(project.name) else []
        copied = _copy(uri, project.name, records)  # in a process of its own (see smtlock._sumatra.copying)
        wrong = [r.label for r in records if copied.get(r.label) != sorted(r.tags)]
        if wrong:
            raise StoreError(f"{len(wrong)} records did not arrive in {where} with their tags, "
                             f"e.g. {wrong[0]} (the project still uses its old store)")
        lines.append(f"copied {len(records)} records of project {project.name} with their tags; verified: "
                     f"{len(records)} in the old store, all {len(records)} in {where}")
        project.record_store = new
        project.save()
    lines.append(f"project {project.name} now uses {where}; {describe_store(old)} is kept untouched "
                 "as a backup")
    return lines
