"""Whether any of a set of paths may have changed since a point, for one read instead of a stat each:
Linux's inotify, watching the folders that hold them and every folder their names are looked up in.

The provenance memo checks about 400 stamps (a stat each, about 2 ms) before each record. A process
that makes many records (a pool worker, a notebook, a thread pool) arms a :class:`Watch` once an
entry's stamps have all been checked; while the watch has seen no event that concerns the paths, they
are as the stamps say and none is stat'ed. What follows an event is the stamps' check again.

A watch sees what the kernel reports of the files themselves and of the folders they are found
through: every change made on this host (a write, a truncation, a change of attributes, through any
link; a name made, removed or renamed, also in a folder above, or a symbolic link along the way
pointed elsewhere). Writes through a memory map make no event. It does not see changes made by other
hosts, so there is no watch when a path is on a filesystem other hosts may write (NFS, Lustre,
FUSE...); nor without inotify, in a forked child (the watch belongs to the process that armed it), with
``SMTLOCK_WATCH=0``, or where it could crowd the user's own tools out of their inotify limits (see
:func:`_room`). Then the caller stats every path, as before.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
from typing import Any, Callable, Dict, Iterable, Optional, Set

from .._lock.filesystem import mount_of

__all__ = ["Watch", "WATCH_SWITCH"]

#: the environment variable that turns watches off when set to 0 (or "off", "no", "false")
WATCH_SWITCH = "SMTLOCK_WATCH"
_LIMITS = "/proc/sys/fs/inotify/max_user_"

# <sys/inotify.h>
_MODIFY, _ATTRIB, _CLOSE_WRITE = 0x2, 0x4, 0x8
_MOVED_FROM, _MOVED_TO, _CREATE, _DELETE = 0x40, 0x80, 0x100, 0x200
_DELETE_SELF, _MOVE_SELF, _UNMOUNT, _OVERFLOW, _IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
_ONLYDIR, _DONT_FOLLOW, _ISDIR = 0x01000000, 0x02000000, 0x40000000
_NAMES = _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE  # a name made, removed or renamed
_MASK = _MODIFY | _ATTRIB | _CLOSE_WRITE | _NAMES | _DELETE_SELF | _MOVE_SELF
_FILE_MASK = _MODIFY | _ATTRIB | _CLOSE_WRITE | _DELETE_SELF | _MOVE_SELF
_ALWAYS = _DELETE_SELF | _MOVE_SELF | _UNMOUNT | _OVERFLOW | _IGNORED  # the folder itself, or events lost
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc: Any = None


def enabled() -> bool:
    return os.environ.get(WATCH_SWITCH, "1").strip().lower() not in {"0", "off", "no", "false"}


class _Folder:
    """What of one watched folder concerns the paths: the names in it that are looked up, and for a
    folder whose importable names are stamped, a name made, removed or renamed that passes ``importable``."""

    def __init__(self) -> None:
        self.names: Set[str] = set()
        self.importable: Optional[Callable[[str, bool], bool]] = None


class Watch:
    """One inotify instance over the folders that hold (and lead to) a set of paths."""

    def __init__(self, fd: int, folders: Dict[int, _Folder]) -> None:
        self._fd = fd
        self._folders = folders
        self._pid = os.getpid()
        self._guard = threading.Lock()

    @classmethod
    def arm(cls, files: Iterable[str], folders: Iterable[str],
            importable: Callable[[str, bool], bool]) -> Optional["Watch"]:
        """A watch over ``files`` and ``folders`` (absolute paths; a folder also for the names in it that
        ``importable(name, is_folder)`` accepts), or None where a watch cannot see every change. Arm
        it before the check whose result it then keeps: a change after that check is an event."""
        if not enabled() or not os.uname().sysname == "Linux":
            return None
        lookups: Dict[str, _Folder] = {}
        folders_of: Dict[str, Optional[str]] = {}  # a folder's path -> its real path
        real_files: Set[str] = set()
        try:
            for path in files:
                parent, name = os.path.split(path)
                if parent not in folders_of:
                    folders_of[parent] = _resolve(parent, lookups)
                real_parent = folders_of[parent]
                real = None if real_parent is None else _resolve(name, lookups, real_parent)
                if real is not None and not os.path.isdir(real):
                    real_files.add(real)  # written through another link, it is an event of its own
            for path in folders:
                if path not in folders_of:
                    folders_of[path] = _resolve(path, lookups)
                real = folders_of[path]
                if real is not None and os.path.isdir(real):
                    lookups.setdefault(real, _Folder()).importable = importable
            if not _room(len(lookups) + len(real_files)) or _any_shared(lookups):
                return None
        except OSError:
            return None
        return cls._watching(lookups, real_files)

    @classmethod
    def _watching(cls, lookups: Dict[str, _Folder], files: Set[str]) -> Optional["Watch"]:
        libc = _load_libc()
        if libc is None:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:  # the user's instances are all in use: the stamps will do
            return None
        by_wd: Dict[int, _Folder] = {}
        watches = [(folder, concern, _MASK | _ONLYDIR) for folder, concern in lookups.items()]
        watches += [(file, _Folder(), _FILE_MASK) for file in files]  # no name: its every event concerns
        for path, concern, mask in watches:
            wd = libc.inotify_add_watch(fd, os.fsencode(path), mask | _DONT_FOLLOW)
            if wd < 0:  # gone meanwhile, not readable, or past the user's limit
                os.close(fd)
                return None
            known = by_wd.setdefault(wd, concern)  # one folder reached by two paths: one watch
            if known is not concern:
                known.names |= concern.names
                known.importable = known.importable or concern.importable
        return cls(fd, by_wd)

    def quiet(self) -> bool:
        """Whether nothing that concerns the paths happened since the watch was armed (False once
        anything did, and from then on: arm another)."""
        with self._guard:
            if self._fd < 0 or self._pid != os.getpid():  # a forked child shares the parent's events
                self._close()
                return False
            try:
                while True:
                    try:
                        data = os.read(self._fd, 65536)
                    except BlockingIOError:
                        return True
                    if self._concerned(data):
                        self._close()
                        return False
            except OSError:
                self._close()
                return False

    def close(self) -> None:
        with self._guard:
            self._close()

    def _close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def _concerned(self, data: bytes) -> bool:
        offset = 0
        while offset < len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            folder = self._folders.get(wd)
            if folder is None or mask & _ALWAYS or not name:
                return True  # the queue overflowed, or a watched folder itself changed (moved, removed...)
            text = os.fsdecode(name)
            if text in folder.names:
                return True
            if folder.importable is not None and mask & _NAMES and folder.importable(text, bool(mask & _ISDIR)):
                return True
        return False

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:
            pass


def _resolve(path: str, lookups: Dict[str, _Folder], start: str = "/") -> Optional[str]:
    """``path`` (absolute, or relative to the real folder ``start``) with every symbolic link resolved
    as the kernel resolves it (None where a name is missing), noting in ``lookups`` each name looked up
    in each folder: a change to any of them (a folder above renamed, a link pointed elsewhere, the name
    made) may change what the path is."""
    current, links = start, 0
    names = [name for name in path.split("/") if name not in ("", ".")]
    while names:
        name = names.pop(0)
        if name == "..":
            current = os.path.dirname(current)
            continue
        lookups.setdefault(current, _Folder()).names.add(name)
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return None
        if not stat.S_ISLNK(st.st_mode):
            current = candidate
            continue
        links += 1
        if links > 40:
            raise OSError(f"too many symbolic links in {path}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            current = "/"
        names = [n for n in target.split("/") if n not in ("", ".")] + names
    return current


def _room(needed: int) -> bool:
    """Whether a watch of ``needed`` paths leaves the user's own tools (an editor, a notebook server)
    their inotify instances and watches: as many processes as this host has CPUs, each with one such
    watch, would use at most half of the user's limits."""
    cpus = os.cpu_count() or 1
    try:
        with open(_LIMITS + "instances") as instances, open(_LIMITS + "watches") as watches:
            return cpus <= int(instances.read()) // 2 and needed * cpus <= int(watches.read()) // 2
    except (OSError, ValueError):
        return False


def _any_shared(lookups: Dict[str, _Folder]) -> bool:
    """Whether a folder is on a filesystem other hosts may write (whose changes no event reports)."""
    devices: Dict[int, str] = {}
    for folder in lookups:
        devices.setdefault(os.stat(folder).st_dev, folder)
    return any(mount_of(folder).shared for folder in devices.values())


def _load_libc() -> Any:
    global _libc
    if _libc is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            _libc = libc
        except (ImportError, OSError, AttributeError):
            _libc = False
    return _libc or None
