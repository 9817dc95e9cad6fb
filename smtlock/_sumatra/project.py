"""A Sumatra project as smtlock loads it: with errors that say what to do, and its record store in
words."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any, List, Optional, Union

from .._lock.paths import MOST_RECENT, SMT_DIR, project_root
from .._postgres.client import mask_uri
from ..errors import ProjectFileError
from . import provenance

__all__ = ["load", "load_reused", "store_path", "describe_store", "tracked_smt_files", "MimeTypesOnce"]


def load(path: Union[str, "os.PathLike[str]"] = ".") -> Any:
    """``sumatra.projects.load_project`` for the project at or above ``path``; a missing or corrupt
    project file raises :class:`ProjectFileError` naming it (``smtlock doctor`` can repair it)."""
    from sumatra.projects import load_project
    root = project_root(path)
    _settings(root / SMT_DIR / "project")
    return load_project(str(root))


#: per thread: (process id, project file, the settings it held, the Project loaded from them)
_kept = threading.local()
_ABSENT = object()


def load_reused(path: Union[str, "os.PathLike[str]"] = ".") -> Any:
    """:func:`load` for ``@smt_logged``, which loads the project for every call: the Project this
    thread loaded last is used again while the project file holds the same settings, with its most
    recent label set from the file and the mime types read as a load reads them. A load builds the
    record store, data stores and launch mode anew from the file (~1 ms of a warm call)."""
    import sumatra.projects
    root = project_root(path)
    file = root / SMT_DIR / "project"
    settings = _settings(file)
    most_recent = settings.pop(MOST_RECENT, _ABSENT) if isinstance(settings, dict) else _ABSENT
    kept = getattr(_kept, "project", None)
    if kept is None or kept[:3] != (os.getpid(), file, settings):
        with provenance.in_project(str(root)):  # its repository's parts, from what earlier processes asked
            project = sumatra.projects.load_project(str(root))  # the file read and checked above, as load()
        after = _settings(file)  # kept only if no one changed the file while it loaded
        if isinstance(after, dict) and after.pop(MOST_RECENT, _ABSENT) == most_recent and after == settings:
            _kept.project = (os.getpid(), file, settings, project)
        return project
    project = kept[3]
    mimetypes = sumatra.projects.mimetypes  # as load_project: the user's .smt/mime.types may be new
    mimetypes.init(mimetypes.knownfiles + [str(root / SMT_DIR / "mime.types")])
    if most_recent is _ABSENT:  # as a load of the file leaves it
        vars(project).pop(MOST_RECENT, None)
    else:
        project._most_recent = most_recent
    return project


def _settings(file: Path) -> Any:
    """What the project file holds, parsed."""
    try:
        return json.loads(file.read_text())
    except OSError as err:
        raise ProjectFileError(f"cannot read {file}: {err.strerror} (run `smt init` or restore it)") from None
    except ValueError as err:
        raise ProjectFileError(f"{file} is not valid JSON ({err}); run `smtlock doctor --repair`") from None



def store_path(store: Any) -> Optional[str]:
    """The file of an SQLite or shelve store (None for a database server)."""
    shelf = getattr(store, "_shelf_name", None)
    if shelf is not None:
        return str(shelf)
    db_file = getattr(store, "_db_file", None)
    return None if db_file is None or "://" in str(db_file) else str(db_file)



def tracked_smt_files(folder: Union[str, "os.PathLike[str]"], changed_only: bool = False) -> List[str]:
    """Files in a ``.smt`` folder under ``folder`` that its git repository tracks (with ``changed_only``:
    that differ from the index), relative to ``folder``; [] where there is no git repository."""
    try:
        done = subprocess.run(["git", "ls-files", "-z", *(["-m"] if changed_only else []), "--", f"*{SMT_DIR}/*"],
                              cwd=folder, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return []
    paths = [path for path in done.stdout.split("\0") if path] if done.returncode == 0 else []
    return [path for path in paths if SMT_DIR in path.split("/")[:-1]]


def describe_store(store: Any) -> str:
    """A store in words, with any password masked."""
    db_file = getattr(store, "_db_file", None) or getattr(store, "_shelf_name", None)
    kind = "Django" if hasattr(store, "_db_file") else type(store).__name__
    return f"{kind} store {mask_uri(str(db_file))}" if db_file else kind


class MimeTypesOnce:
    """Stands in for the ``mimetypes`` module inside ``sumatra.projects``: ``load_project`` calls
    ``mimetypes.init(knownfiles + [.smt/mime.types])`` every time, re-reading every system
    ``mime.types`` file (~7 ms of each ``@smt_logged`` call, which loads the project). Here it is done
    again only when it could give another answer: a file in the list changed (its stat), the list is
    another, or the table is not exactly what that ``init`` left (another ``init``, an ``add_type``)."""

    def __init__(self) -> None:
        import mimetypes
        self._module = mimetypes
        self._done: Optional[tuple] = None  # (files, their stats, the table init left)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def init(self, files: Optional[List[str]] = None) -> None:
        stamps = [_stat(path) for path in files or ()]
        if self._done is not None and files is not None and self._done[:2] == (list(files), stamps) \
                and self._done[2] == self._table():
            return
        self._module.init(files)
        self._done = (list(files), stamps, self._table()) if files is not None else None

    def _table(self) -> tuple:
        """The mimetypes table as it is now (copies, so that a later change shows)."""
        db = getattr(self._module, "_db", None)
        if db is None:
            return ()
        return (id(db), [dict(m) for m in db.types_map], [dict(m) for m in db.types_map_inv],
                dict(db.encodings_map), dict(db.suffix_map))


def _stat(path: str) -> Optional[tuple]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
