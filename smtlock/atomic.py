"""Files under ``.smt`` written atomically: a reader sees the old content or the new, never a torn
file (Sumatra writes ``.smt/project`` and ``.smt/labels`` in place)."""

from __future__ import annotations

import builtins
import os
import shutil
import tempfile
from typing import Any

from .backends import replacement_mode
from .project import LAST_GOOD_SUFFIX, SMT_DIR

__all__ = ["AtomicFile", "atomic_open"]


class AtomicFile:
    """A text file written to a temporary name in the target's folder; it replaces the target on
    close (after fsync), so a reader sees the old content or the new, never a torn file. On an error
    the target is left as it was."""

    def __init__(self, path: str, mode: str, keep_copy: bool = False, **kwargs: Any) -> None:
        self.path = os.path.abspath(path)
        self.keep_copy = keep_copy
        fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                        dir=os.path.dirname(self.path))
        self.file = os.fdopen(fd, mode.replace("x", "w"), **kwargs)
        self.write = self.file.write  # json.dump writes in ~150 pieces: no __getattr__ for each

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.file.close()
            os.unlink(self.tmp)

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.flush()
        if self._unchanged():  # Project.save() after each record rewrites the same project file
            self.file.close()
            os.unlink(self.tmp)
            return
        os.fsync(self.file.fileno())
        os.chmod(self.tmp, replacement_mode(self.path))  # mkstemp made it 0o600
        self.file.close()
        if self.keep_copy:  # <path>.last-good: what `smtlock doctor --repair` restores
            copy = self.tmp + ".copy"
            shutil.copyfile(self.tmp, copy)
            os.replace(copy, self.path + LAST_GOOD_SUFFIX)
        os.replace(self.tmp, self.path)


    def _unchanged(self) -> bool:
        """Whether the target (and its last-good copy) already hold exactly what was written."""
        copies = [self.path] + ([self.path + LAST_GOOD_SUFFIX] if self.keep_copy else [])
        try:
            with open(self.tmp, "rb") as new:
                content = new.read()
            for path in copies:
                with open(path, "rb") as old:
                    if old.read() != content:
                        return False
        except OSError:
            return False
        return True


def atomic_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """Stands in for ``open`` inside ``sumatra.projects`` and ``sumatra.commands``.

    Upstream writes ``.smt/project`` (``Project.save``) and ``.smt/labels`` (``smt run``, ``tag``...)
    with ``open(path, 'w')`` in place, so a concurrent ``load_project()`` reads an empty or
    half-written file (JSONDecodeError). Writes to files in a ``.smt`` folder become atomic here.
    """
    if ("w" in mode and "b" not in mode and not args and isinstance(file, (str, os.PathLike))
            and os.path.basename(os.path.dirname(os.path.abspath(file))) == SMT_DIR):
        path = os.fspath(file)
        return AtomicFile(path, mode, keep_copy=os.path.basename(path) == "project", **kwargs)
    return builtins.open(file, mode, *args, **kwargs)
