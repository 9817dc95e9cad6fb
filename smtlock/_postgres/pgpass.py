"""libpq's password file (``$PGPASSFILE``, else ``~/.pgpass``): where a PostgreSQL password lives
instead of a project's files, readable by its owner only, as PostgreSQL users expect.

Each line is ``host:port:database:user:password``; a field that is a bare ``*`` matches anything,
``\\`` escapes ``:`` and ``\\``; libpq uses the first line that matches and ignores the whole file
when group or others may read it.
"""

from __future__ import annotations

import fcntl
import os
import stat
import tempfile
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = ["password_file", "lookup", "remember"]


def password_file() -> Path:
    """The file libpq reads: ``$PGPASSFILE``, else ``~/.pgpass`` (a link: the file it points to)."""
    path = os.environ.get("PGPASSFILE") or os.path.join(os.path.expanduser("~"), ".pgpass")
    return Path(os.path.realpath(path))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _parse(line: str) -> Optional[Tuple[List[Tuple[str, bool]], str]]:
    """libpq's reading of a line: four (value, is a bare ``*``) fields and the password (up to an
    unescaped ``:``, as libpq reads it), or None for a comment or a line with fewer fields."""
    if line.startswith("#"):
        return None
    fields: List[Tuple[str, bool]] = []
    value, raw, escaped = "", "", False
    for char in line:
        if escaped:
            value, raw, escaped = value + char, raw + "\\" + char, False
        elif char == "\\":
            escaped = True
        elif char == ":":
            if len(fields) == 4:
                break  # libpq ends the password here
            fields.append((value, raw == "*"))
            value = raw = ""
        else:
            value, raw = value + char, raw + char
    if len(fields) < 4:
        return None
    return fields, value


def _secure(path: Path) -> bool:
    """Whether libpq would read the file: a regular file that group and others may not access."""
    mode = path.stat().st_mode
    return stat.S_ISREG(mode) and not mode & 0o077


def _lines(path: Path) -> List[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def lookup(host: str, port: int, database: str, user: str) -> Optional[str]:
    """The password libpq would take from the file for this connection, or None."""
    path = password_file()
    if not path.exists() or not _secure(path):
        return None
    key = [host, str(port), database, user]
    for line in _lines(path):
        parsed = _parse(line)
        if parsed and all(wild or value == k for (value, wild), k in zip(parsed[0], key)):
            return parsed[1]
    return None


def remember(host: str, port: int, database: str, user: str, password: str) -> bool:
    """Make ``password`` the one libpq takes for this connection: its line first, replacing a line
    for exactly this host, port, database and user; the file written atomically, mode 0600, under a
    lock of its own (two writers at once lose no line). True when the file changed."""
    path = password_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if lookup(host, port, database, user) == password:
            return False
        key = [host, str(port), database, user]
        kept = [line for line in _lines(path)
                if not ((parsed := _parse(line)) and [value for value, _ in parsed[0]] == key)]
        entry = ":".join(_escape(v) for v in [*key, password])
        tmp_fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)  # 0600
        try:
            with os.fdopen(tmp_fd, "w") as out:
                out.write("\n".join([entry, *kept]) + "\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return True
    finally:
        os.close(fd)
