"""A per-process memory of the rows a Django store's write looks up, so a write under the lock runs
few queries.

Upstream's ``DjangoRecordStore.save`` runs a get_or_create (a SELECT, and an INSERT for a value not
stored yet) for each of about ten values of every record (executable, repository, launch mode,
datastores, parameter set, platform information, dependencies) and looks up the project's row,
all while the lock is held: about 250 µs of Python each on SQLite, a network round trip each on
PostgreSQL. Sumatra never changes these rows once made, so a process remembers which row each value
maps to and asks again only for a value it has not seen.

Two rules keep a remembered row true:

* a row is remembered only once the transaction that found or made it has committed
  (``transaction.on_commit``): a rolled-back INSERT is never remembered;
* a remembered row can disappear only when ``smtlock doctor --repair`` merges duplicate rows. The
  write that then refers to it fails at commit on its foreign key, having written nothing; the write
  path calls :func:`forget` and runs the write again, asking the store for every value (see
  :func:`smtlock.djangostore.transaction`).
"""

from __future__ import annotations

import pickle
import threading
from typing import Any, Callable, Dict, Tuple

__all__ = ["REMEMBERED_MODELS", "get_db_obj", "get_db_project", "forget"]

#: the models whose rows never change once made (DataKey is left out: a write updates its row)
REMEMBERED_MODELS = frozenset({"Executable", "Repository", "LaunchMode", "Datastore", "ParameterSet",
                               "PlatformInformation", "Dependency"})

_rows: Dict[Tuple[str, str, bytes], Any] = {}  # (database label, model, the value pickled) -> row
_guard = threading.Lock()


def _key(store: Any, model: str, value: Any) -> Tuple[str, str, bytes] | None:
    try:
        return (store._db_label, model, pickle.dumps(value, protocol=4))
    except Exception:  # a value that does not pickle is simply not remembered
        return None


def _remembered(store: Any, model: str, value: Any, find: Callable[[], Any]) -> Any:
    key = _key(store, model, value)
    if key is None:
        return find()
    with _guard:
        row = _rows.get(key)
    if row is not None:
        return row
    row = find()
    from django.db import transaction

    def remember() -> None:
        with _guard:
            _rows[key] = row
    transaction.on_commit(remember, using=store._db_label)
    return row


def get_db_obj(original: Callable[..., Any]) -> Callable[..., Any]:
    """``DjangoRecordStore._get_db_obj`` that asks the store only for a value this process has not
    seen stored."""
    def _get_db_obj(self: Any, db_class: str, obj: Any) -> Any:
        if db_class not in REMEMBERED_MODELS or obj is None:
            return original(self, db_class, obj)
        return _remembered(self, db_class, obj, lambda: original(self, db_class, obj))
    return _get_db_obj


def get_db_project(original: Callable[..., Any]) -> Callable[..., Any]:
    """``DjangoRecordStore._get_db_project`` that looks the project's row up once per process."""
    def _get_db_project(self: Any, project_name: str) -> Any:
        return _remembered(self, "Project", project_name, lambda: original(self, project_name))
    return _get_db_project


def forget(store: Any) -> bool:
    """Forget every row remembered for ``store``; True when there were any (a write that failed on a
    foreign key may have used one that no longer exists)."""
    with _guard:
        keys = [key for key in _rows if key[0] == store._db_label]
        for key in keys:
            del _rows[key]
    return bool(keys)
