"""A Sumatra project as smtlock loads it: with errors that say what to do, and its record store in
words."""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Union

from .._lock.paths import SMT_DIR, project_root
from .._postgres.client import mask_uri
from ..errors import ProjectFileError

__all__ = ["load", "store_path", "describe_store"]


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



def store_path(store: Any) -> Optional[str]:
    """The file of an SQLite or shelve store (None for a database server)."""
    shelf = getattr(store, "_shelf_name", None)
    if shelf is not None:
        return str(shelf)
    db_file = getattr(store, "_db_file", None)
    return None if db_file is None or "://" in str(db_file) else str(db_file)



def describe_store(store: Any) -> str:
    """A store in words, with any password masked."""
    db_file = getattr(store, "_db_file", None) or getattr(store, "_shelf_name", None)
    kind = "Django" if hasattr(store, "_db_file") else type(store).__name__
    return f"{kind} store {mask_uri(str(db_file))}" if db_file else kind
