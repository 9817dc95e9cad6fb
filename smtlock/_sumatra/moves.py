"""Records moved between two Django stores (``smt configure --store``, ``smt sync``) with exactly
their tags, each store read and written from a process where it is Django's only database.

Sumatra's tagging keeps the tag links of every store's records in Django's default database (the
first store a process opens), keyed by the record's row id. Upstream's ``RecordStore.sync`` reads and
saves both stores in one process, so a record read from the second store gets the tags of whichever
record of the first has its row id, and a record saved to it links its tags there too: records
arrive with another record's tags. ``smtlock postgres`` copies the same way (:mod:`smtlock._sumatra.copying`).
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List
from urllib.parse import unquote, urlsplit

from .._postgres.client import is_postgres, mask_uri
from ..errors import StoreError
from .djangostore import is_django

__all__ = ["store_uri", "read_records", "write_records", "sync"]


def store_uri(store: Any) -> str:
    """The URI another process opens ``store`` by: a PostgreSQL URI as given (its password, if any,
    in the password file), an SQLite file by the absolute path Sumatra made of it when the store was
    opened (a relative path named the folder it was opened in, not the one we are in now)."""
    uri = store._db_file
    if is_postgres(uri):
        return uri
    from django.conf import settings
    from sumatra.recordstore.django_store import db_config
    for databases in (settings.DATABASES if settings.configured else {}, db_config._settings["DATABASES"]):
        if databases.get(store._db_label, {}).get("NAME"):
            return str(databases[store._db_label]["NAME"])
    return os.path.abspath(uri)


def _run(store: Any, flags: List[str], project_name: str, data: bytes = b"") -> bytes:
    """``python -m smtlock._sumatra.copying [FLAGS] PROJECT`` on ``store`` in a folder of its own; its stdout."""
    uri = store_uri(store)
    with tempfile.TemporaryDirectory() as elsewhere:  # not a project: no project file, no lock of it
        done = subprocess.run([sys.executable, "-m", "smtlock._sumatra.copying", *flags, project_name], cwd=elsewhere,
                              input=data, capture_output=True,
                              env={**os.environ, "SMTLOCK_COPY_URI": uri})  # not argv: ps shows it
    if done.returncode:
        last = mask_uri((done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1])
        password = unquote(urlsplit(uri).password or "") if is_postgres(uri) else ""
        raise StoreError(f"{mask_uri(uri)}: {last.replace(password, '***') if password else last}")
    return done.stdout


def read_records(store: Any, project_name: str) -> Dict[str, Any]:
    """Every record of the project in ``store``, by label, tags as stored."""
    return {record.label: record for record in pickle.loads(_run(store, ["--read"], project_name))}


def write_records(store: Any, project_name: str, records: List[Any]) -> None:
    """Save ``records`` in ``store``, then check that each is there with exactly its tags."""
    if not records:
        return
    held = json.loads(_run(store, [], project_name, pickle.dumps(records)))
    wrong = [r.label for r in records if held.get(r.label) != sorted(r.tags)]
    if wrong:
        raise StoreError(f"{len(wrong)} records did not arrive in {mask_uri(store_uri(store))} with their tags, "
                         f"e.g. {wrong[0]}")


def sync(original: Callable[..., Any]) -> Callable[..., Any]:
    """``RecordStore.sync`` between two Django stores in different databases: both read, compared and
    written as upstream does (records only in one are copied to the other; a label both hold for
    different records is returned, not copied), each store from a process of its own."""
    def sync(self: Any, other: Any, project_name: str) -> List[str]:
        if not (is_django(self) and is_django(other)) or self._db_label == other._db_label:
            return original(self, other, project_name)
        try:
            mine, theirs = read_records(self, project_name), read_records(other, project_name)
        except StoreError as err:  # nothing written yet: records another process cannot rebuild (a
            # type only this one has, as Sumatra's own tests' mocks) are synced here, as upstream does
            print(f"smtlock: {err}; synced in this process as Sumatra does, tags unchecked", file=sys.stderr)
            return original(self, other, project_name)
        collisions = [label for label in set(mine) & set(theirs) if mine[label] != theirs[label]]
        write_records(other, project_name, [mine[label] for label in sorted(set(mine) - set(theirs))])
        write_records(self, project_name, [theirs[label] for label in sorted(set(theirs) - set(mine))])
        return collisions
    return sync
