"""Sumatra's shelve record store made safe: opened fresh and under the lock for every call, and never
taken for another kind of file."""

from __future__ import annotations

import functools
import shelve
import sqlite3
from typing import Any, Callable

from .._lock.hostclaim import one_host
from .._lock.lock import store_lock
from .upstream import original

__all__ = ["accepts_uri", "locked_init", "fresh"]


def accepts_uri(cls: Any, uri: str) -> bool:
    """``ShelveRecordStore.accepts_uri`` that does not take a Django SQLite store for a shelf.

    Upstream accepts any existing path and relies on ``shelve.open`` failing on other files. Since
    Python 3.13 shelve opens SQLite files (``dbm.sqlite3``), so ``get_record_store('.smt/records')``
    (``smt init --store``, ``smt configure --store``, ``smt sync``) saw the Django store as an empty
    shelf, and added a ``Dict`` table to it.
    """
    if any(_is_other_sqlite(path) for path in (uri, uri + ".db")):
        return False
    return bool(original("ShelveRecordStore.accepts_uri")(uri))


def _is_other_sqlite(path: str) -> bool:
    """Whether ``path`` is an SQLite database that is not a ``dbm.sqlite3`` shelf (table ``Dict``)."""
    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except (OSError, sqlite3.Error):
        return False
    return "Dict" not in tables


def locked_init(self: Any, shelf_name: str = ".smt/records") -> None:
    """Open the shelf under the lock, so that it never reads a half-written index."""
    one_host(shelf_name)
    with store_lock(shelf_name, "shelve"):
        original("ShelveRecordStore.__init__")(self, shelf_name)


def fresh(method: Callable) -> Callable:
    """Run a ShelveRecordStore method on a freshly opened shelf, under the lock, and close it after.

    Upstream opens the shelf in ``__init__`` and keeps it: the handle serves a stale view of the
    ``{label: record}`` dict it rewrites whole, so concurrent writers overwrite each other's records
    and readers see truncated pickles. A fresh, unmodified handle is left in ``self.shelf`` for code
    that uses it directly, as upstream allows; closing it later writes nothing.
    """
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_smtlock_open", False):  # called from another wrapped method: shelf is open
            return method(self, *args, **kwargs)
        one_host(self._shelf_name)
        with store_lock(self._shelf_name, "shelve"):
            self.shelf.close()
            self.shelf = shelve.open(self._shelf_name)
            self._smtlock_open = True
            try:
                return method(self, *args, **kwargs)
            finally:
                self._smtlock_open = False
                self.shelf.close()
                self.shelf = shelve.open(self._shelf_name)
    return wrapper
