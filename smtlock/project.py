"""A Sumatra project on disk: its root, the files smtlock keeps under ``.smt``, what kind of record
store it has, and loading it with errors that say what to do."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from .errors import NoProjectError, ProjectFileError
from .postgres import is_postgres, mask_uri

__all__ = ["load", "project_root", "postgres_uri", "store_path", "describe_store", "SMT_DIR", "LOCK_FILE_NAME",
           "LEASE_SUFFIX", "LAST_GOOD_SUFFIX", "RUNNING_DIR", "HOST_CLAIM_SUFFIX"]

SMT_DIR = ".smt"  # Sumatra's folder in a project's root
LOCK_FILE_NAME = "smtlock.lock"  # .smt/smtlock.lock (and .smt/smtlock.lock.holder: who holds it)
LEASE_SUFFIX = ".lease"  # .smt/smtlock.lease: the lock across hosts on a shared filesystem
LAST_GOOD_SUFFIX = ".last-good"  # .smt/project.last-good: the last project file smtlock wrote
RUNNING_DIR = "smtlock-running"  # .smt/smtlock-running/<label>: "pid host" of a running record
HOST_CLAIM_SUFFIX = ".smtlock-host"  # <store>.smtlock-host: the one host that writes a store on a shared fs


def project_root(project: Any) -> Path:
    """The folder that holds ``.smt`` for a Sumatra ``Project`` or for any path inside a project."""
    start = Path(getattr(project, "path", project)).expanduser().absolute()
    for folder in (start, *start.parents):
        if (folder / SMT_DIR).is_dir():
            return folder
    raise NoProjectError(f"no Sumatra project at {start} (run `smt init`)")


def postgres_uri(project_or_store: Any, root: Optional[Path] = None) -> Optional[str]:
    """The URI of a project's (or a store's) record store when it is PostgreSQL, else None; for a
    path, read from ``.smt/project`` under ``root`` without loading the project."""
    store = getattr(project_or_store, "record_store", project_or_store)
    uri = getattr(store, "_db_file", None)
    if uri is None and root is not None and not hasattr(project_or_store, "record_store"):
        try:
            uri = json.loads((root / SMT_DIR / "project").read_text())["record_store"].get("db_file")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            uri = None
    return uri if is_postgres(uri) else None


def store_path(store: Any) -> Optional[str]:
    """The file of an SQLite or shelve store (None for a database server)."""
    shelf = getattr(store, "_shelf_name", None)
    if shelf is not None:
        return str(shelf)
    db_file = getattr(store, "_db_file", None)
    return None if db_file is None or "://" in str(db_file) else str(db_file)


def load(path: Union[str, "os.PathLike[str]"] = ".") -> Any:
    """``sumatra.projects.load_project`` for the project at or above ``path``; a missing or corrupt
    project file raises :class:`ProjectFileError` naming it (``smtlock doctor`` can repair it)."""
    from sumatra.projects import load_project
    root = project_root(path)
    file = root / SMT_DIR / "project"
    try:
        json.loads(file.read_text())
    except OSError as err:
        raise ProjectFileError(f"cannot read {file}: {err.strerror} (run `smt init` or restore it)") from None
    except ValueError as err:
        raise ProjectFileError(f"{file} is not valid JSON ({err}); run `smtlock doctor --repair`") from None
    return load_project(str(root))


def describe_store(store: Any) -> str:
    """A store in words, with any password masked."""
    db_file = getattr(store, "_db_file", None) or getattr(store, "_shelf_name", None)
    kind = "Django" if hasattr(store, "_db_file") else type(store).__name__
    return f"{kind} store {mask_uri(str(db_file))}" if db_file else kind
