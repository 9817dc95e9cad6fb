"""Files under ``.smt`` written atomically: a reader sees the old content or the new, never a torn
file (Sumatra writes ``.smt/project`` and ``.smt/labels`` in place), and a writer that is interrupted
leaves no temporary file behind."""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import locale
import os
import re
import signal
import socket
import tempfile
from typing import Any, Callable, Iterator, Optional

from .backends import replacement_mode
from .paths import LAST_GOOD_SUFFIX, MOST_RECENT, SMT_DIR

__all__ = ["AtomicFile", "atomic_open", "temporary_prefix", "TEMP_SUFFIX"]

TEMP_SUFFIX = ".tmp"  # <name>.<host>.<pid>.<random>.tmp: a write in progress, by that process
#: signals that wait while a temporary file exists, so that they cannot leave it behind
_HELD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
#: errors of a user who may read a folder but not write it
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


class AtomicFile:
    """A text file kept in memory until it is closed. Then, if its content is new, it is written to a
    temporary name in the target's folder, fsynced and renamed over the target, so a reader sees the
    old content or the new, never a torn file; on an error the target is left as it was.

    ``keep_copy``: ``<path>.last-good`` gets the same content when what ``copy_key`` takes from it
    differs from what it takes from the copy (by default the whole content). ``cache``: the file is a
    cache, left as it is (no error) when its folder is not the user's to write.
    """

    def __init__(self, path: str, mode: str = "w", keep_copy: bool = False, cache: bool = False,
                 encoding: Optional[str] = None, copy_key: Callable[[bytes], Any] = bytes) -> None:
        if "b" in mode or "a" in mode or "r" in mode:
            raise ValueError(f"AtomicFile writes text from scratch, not mode {mode!r}")
        self.path = os.path.abspath(path)
        self.keep_copy = keep_copy
        self.copy_key = copy_key
        self.cache = cache
        self.encoding = encoding or locale.getpreferredencoding(False)
        self.buffer = io.StringIO()
        self.closed = False
        self.write = self.buffer.write  # json.dump writes in ~150 pieces: no __getattr__ for each

    def __getattr__(self, name: str) -> Any:
        return getattr(self.buffer, name)

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # nothing has touched the disk yet
            self.closed = True
            self.buffer.close()

    def close(self) -> None:
        """Write the content to the target (and its last-good copy) unless they hold it already."""
        if self.closed:
            return
        self.closed = True
        data = self.buffer.getvalue().encode(self.encoding)
        self.buffer.close()
        copy = self.path + LAST_GOOD_SUFFIX
        targets = ([copy] if self.keep_copy and not _holds(copy, data, self.copy_key) else []) + \
            ([] if _holds(self.path, data) else [self.path])
        if not targets:  # smt list, and a Project.save() of what the file holds
            return
        try:
            for target in targets:  # the last-good copy (what `smtlock doctor --repair` restores) first
                _replace(target, data)
        except OSError as err:
            if self.cache and err.errno in _NOT_WRITABLE:
                return
            raise
        _remove_left_behind(os.path.dirname(self.path))


def _holds(path: str, data: bytes, key: Callable[[bytes], Any] = bytes) -> bool:
    """Whether the file at ``path`` holds ``data`` (exactly, or what ``key`` takes from it)."""
    try:
        with open(path, "rb") as file:
            held = file.read()
    except OSError:
        return False
    return held == data or key(held) == key(data)


def _settings(data: bytes) -> Any:
    """What ``.smt/project`` holds but the label of the most recent record (``_most_recent``), which
    ``Project.save`` changes after every record: the last-good copy keeps the settings, and is written
    again only when they change (``smtlock doctor --repair`` restores it without a most recent
    label, so that Sumatra asks the store for it)."""
    try:
        settings = json.loads(data)
    except ValueError:
        return data
    if isinstance(settings, dict):
        settings.pop(MOST_RECENT, None)
    return settings


def _replace(path: str, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``; SIGINT, SIGTERM
    and SIGHUP wait until the temporary file is renamed or removed."""
    folder, name = os.path.split(path)
    with _signals_held():
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(name), suffix=TEMP_SUFFIX, dir=folder)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.chmod(tmp, replacement_mode(path))  # mkstemp made it 0o600
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def temporary_prefix(name: str) -> str:
    """How this process's temporary files for ``name`` begin (``<name>.<host>.<pid>.``; a random part
    and :data:`TEMP_SUFFIX` follow): once the process has ended, the next atomic write in their folder
    removes them (:func:`_remove_left_behind`)."""
    return f"{name}.{socket.gethostname()}.{os.getpid()}."


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Signals in ``_HELD_SIGNALS`` that come meanwhile are delivered when the block ends (the
    calling thread blocks them: the process of an ``smt`` command has one thread)."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _remove_left_behind(folder: str) -> None:
    """Remove the temporary files in ``folder`` of writers on this host that have ended: a writer
    killed by SIGKILL, which no process can clean up after itself."""
    host, me = socket.gethostname(), os.getpid()
    pattern = re.compile(rf"\.{re.escape(host)}\.(\d+)\.\w+{re.escape(TEMP_SUFFIX)}$")
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            found = pattern.search(entry.name)
            if found and int(found.group(1)) != me and not _alive(int(found.group(1))):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (a pid used again keeps its file until it ends)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def atomic_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """Stands in for ``open`` inside ``sumatra.projects`` and ``sumatra.commands``.

    Upstream writes ``.smt/project`` (``Project.save``) and ``.smt/labels`` (``smt run``, ``tag``...)
    with ``open(path, 'w')`` in place, so a concurrent ``load_project()`` reads an empty or
    half-written file (JSONDecodeError). Writes to files in a ``.smt`` folder become atomic here.

    ``.smt/labels`` is only a cache, of the labels Sumatra's shell completion offers, and upstream
    rewrites it on every ``smt list`` too: an ``smt list`` killed while it read the store left a
    temporary file, and a user who may read the project but not write ``.smt`` could not list it.
    Here the file is written only when it changes, and left as it is when the user may not write it.
    """
    if ("w" in mode and "b" not in mode and not args and set(kwargs) <= {"encoding"}
            and isinstance(file, (str, os.PathLike))
            and os.path.basename(os.path.dirname(os.path.abspath(file))) == SMT_DIR):
        path = os.fspath(file)
        name = os.path.basename(path)
        return AtomicFile(path, mode, keep_copy=name == "project", cache=name == "labels",
                          copy_key=_settings, **kwargs)
    return builtins.open(file, mode, *args, **kwargs)
