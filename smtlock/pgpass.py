"""libpq's password file (``$PGPASSFILE``, else ``~/.pgpass``): where a PostgreSQL password lives
instead of a project's files, readable by its owner only, as PostgreSQL users expect.

Each line is ``host:port:database:user:password``; ``*`` matches anything, ``\\`` escapes ``:`` and
``\\``; libpq uses the first line that matches and ignores a file others may read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import List, Optional

__all__ = ["password_file", "lookup", "remember"]


def password_file() -> Path:
    """The file libpq reads: ``$PGPASSFILE``, else ``~/.pgpass``."""
    return Path(os.environ.get("PGPASSFILE") or os.path.join(os.path.expanduser("~"), ".pgpass"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _fields(line: str) -> List[str]:
    fields: List[str] = []
    current, escaped = "", False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append(current)
            current = ""
        else:
            current += char
    return [*fields, current]


def _matches(fields: List[str], key: List[str]) -> bool:
    return len(fields) == 5 and all(f in ("*", k) for f, k in zip(fields[:4], key))


def _lines() -> List[str]:
    try:
        return password_file().read_text().splitlines()
    except FileNotFoundError:
        return []


def lookup(host: str, port: int, database: str, user: str) -> Optional[str]:
    """The password libpq would use for this connection, or None."""
    key = [host, str(port), database, user]
    for line in _lines():
        fields = _fields(line)
        if not line.startswith("#") and _matches(fields, key):
            return fields[4]
    return None


def remember(host: str, port: int, database: str, user: str, password: str, replace: bool = True) -> bool:
    """Put the password first for this connection (``replace``), or add it only where no line matches
    yet; the file is written atomically with mode 0600. True when the file changed."""
    key = [host, str(port), database, user]
    found = lookup(host, port, database, user)
    if found == password or (not replace and found is not None):
        return False
    kept = [line for line in _lines() if _fields(line)[:4] != key]
    entry = ":".join(_escape(v) for v in [*key, password])
    path = password_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write("\n".join([entry, *kept]) + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True
