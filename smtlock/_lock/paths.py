"""A Sumatra project on disk, as the lock needs it: its root, the files smtlock keeps under ``.smt``,
and whether its record store is PostgreSQL (read from ``.smt/project``, without Sumatra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from .._postgres.client import is_postgres
from ..errors import NoProjectError

__all__ = ["project_root", "postgres_uri", "SMT_DIR", "LOCK_FILE_NAME",
           "LEASE_SUFFIX", "LAST_GOOD_SUFFIX", "RUNNING_DIR", "HOST_CLAIM_SUFFIX", "MOST_RECENT"]

SMT_DIR = ".smt"  # Sumatra's folder in a project's root
LOCK_FILE_NAME = "smtlock.lock"  # .smt/smtlock.lock (and .smt/smtlock.lock.holder: who holds it)
LEASE_SUFFIX = ".lease"  # .smt/smtlock.lease: the lock across hosts on a shared filesystem
LAST_GOOD_SUFFIX = ".last-good"  # .smt/project.last-good: the last project file smtlock wrote
RUNNING_DIR = "smtlock-running"  # .smt/smtlock-running/<label>: "pid host" of a running record
HOST_CLAIM_SUFFIX = ".smtlock-host"  # <store>.smtlock-host: the one host that writes a store on a shared fs
#: the setting of .smt/project that Project.save changes after every record: the most recent record's label
MOST_RECENT = "_most_recent"


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
