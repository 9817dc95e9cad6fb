"""Whether any of a set of paths may have changed since a point, for one read instead of a stat each:
Linux's inotify, on the files and on every folder they are found through.

The provenance memo checks about 400 stamps (a stat each, about 2 ms) before each record. A process
that makes many records (a pool worker, a notebook, a thread pool) arms a :class:`Watch` before it
checks an entry's stamps; while the watch has seen no event that concerns the paths, they are as that
check found them and none is stat'ed again.

A watch is armed folder by folder, each folder watched before a name is looked up in it, so every
change made on this host after that is an event: a write, a truncation, a change of attributes (of
the file itself, through whichever link), a name made, removed or renamed (also in a folder above, or
a symbolic link along the way pointed elsewhere), and a mount or unmount anywhere (the mount table is
polled). Writes through a memory map make no event. Changes made by other hosts make none either, so
there is no watch where a path is on a filesystem not known to be local (NFS, Lustre, FUSE, a virtual
machine's shared folder...); nor without inotify, in a forked child (it would read its parent's
events), with ``SMTLOCK_WATCH=0`` or ``SMTLOCK_FILESYSTEM=shared``, or where it could crowd the user's
own tools out of their inotify limits (:func:`_room`). Then the caller stats every path, as before.
"""

from __future__ import annotations

import os
import select
import stat
import struct
import sys
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, Optional, Set

from .._lock.filesystem import FILESYSTEM_VARIABLE, mount_of

__all__ = ["Watch", "WATCH_SWITCH", "QUIET", "LOOK", "REARM", "LOCAL_TYPES", "WATCHES_KEPT"]

#: the environment variable that turns watches off when set to 0 (or "off", "no", "false")
WATCH_SWITCH = "SMTLOCK_WATCH"
#: filesystems only this host writes, whose every change the kernel reports
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "tmpfs", "f2fs", "overlay", "jfs",
                         "reiserfs", "bcachefs", "nilfs2", "ramfs"})
#: what :meth:`Watch.quiet` answers: nothing happened; a watched file or name changed (check the
#: stamps, the watch still holds); or the paths may now lead elsewhere (arm a new watch)
QUIET, LOOK, REARM = "quiet", "look", "rearm"
_LIMITS = "/proc/sys/fs/inotify/max_user_"
#: the watches a process keeps at once (provenance closes the oldest)
WATCHES_KEPT = 2

# <sys/inotify.h>
_MODIFY, _ATTRIB, _CLOSE_WRITE = 0x2, 0x4, 0x8
_MOVED_FROM, _MOVED_TO, _CREATE, _DELETE = 0x40, 0x80, 0x100, 0x200
_DELETE_SELF, _MOVE_SELF, _UNMOUNT, _OVERFLOW, _IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
_ONLYDIR, _DONT_FOLLOW, _ISDIR = 0x01000000, 0x02000000, 0x40000000
_NAMES = _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE  # a name made, removed or renamed
_GONE = _DELETE_SELF | _MOVE_SELF | _UNMOUNT | _IGNORED  # the watched file or folder is no longer there
_FOLDER_MASK = _MODIFY | _ATTRIB | _CLOSE_WRITE | _NAMES | _DELETE_SELF | _MOVE_SELF
_FILE_MASK = _MODIFY | _ATTRIB | _CLOSE_WRITE | _DELETE_SELF | _MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name, NUL-padded

_libc: Any = None
_live: "weakref.WeakSet[Watch]" = weakref.WeakSet()


def enabled() -> bool:
    return os.environ.get(WATCH_SWITCH, "1").strip().lower() not in {"0", "off", "no", "false"}


class _Concern:
    """What of one watch concerns the paths: in a folder, the names looked up in it (a change of one
    may lead a path elsewhere) and, for a stamped folder, the names ``importable`` accepts."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.names: Set[str] = set()
        self.importable: Optional[Callable[[str, bool], bool]] = None


class Watch:
    """One inotify instance over a set of paths; :meth:`quiet` says what happened since it was armed."""

    def __init__(self, fd: int, mounts: int) -> None:
        self._fd = fd
        self._mounts = mounts  # /proc/self/mountinfo, polled: a mount or unmount anywhere
        self._poll = select.poll()
        self._poll.register(mounts, select.POLLPRI | select.POLLERR)
        self._concerns: Dict[int, _Concern] = {}
        self._folders: Dict[str, _Concern] = {}
        self._pid = os.getpid()
        self._guard = threading.Lock()
        _live.add(self)

    @classmethod
    def arm(cls, files: Iterable[str], folders: Iterable[str], importable: Callable[[str, bool], bool]) \
            -> Optional["Watch"]:
        """A watch over ``files`` and ``folders`` (absolute paths; a folder also for the names in it that
        ``importable(name, is_folder)`` accepts), or None where a watch could miss a change. Arm it
        before the check whose result it then keeps."""
        if not enabled() or not sys.platform.startswith("linux") or \
                os.environ.get(FILESYSTEM_VARIABLE, "").strip().lower() == "shared":
            return None
        most = _room()
        libc = _load_libc()
        if libc is None or not most:
            return None
        try:
            mounts = os.open("/proc/self/mountinfo", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:  # the user's instances are all in use: the stamps will do
            os.close(mounts)
            return None
        watch = cls(fd, mounts)
        try:
            if watch._watch_all(libc, list(files), list(folders), importable, most):
                return watch
        except OSError:
            pass
        watch.close()
        return None

    def _watch_all(self, libc: Any, files: list, folders: list, importable: Callable[[str, bool], bool],
                   most: int) -> bool:
        def add(path: str, mask: int) -> _Concern:
            if len(self._concerns) >= most:
                raise OSError(f"more than {most} paths to watch")
            wd = libc.inotify_add_watch(self._fd, os.fsencode(path), mask | _DONT_FOLLOW)
            if wd < 0:  # gone meanwhile, not readable, or the user's limit reached
                raise OSError(f"cannot watch {path}")
            return self._concerns.setdefault(wd, _Concern(path))  # one folder by two paths: one watch

        def folder(path: str) -> _Concern:  # watched before any name is looked up in it
            if path not in self._folders:
                self._folders[path] = add(path, _FOLDER_MASK | _ONLYDIR)
            return self._folders[path]
        real_of: Dict[str, Optional[str]] = {}  # a folder's path -> its real path
        for path in folders + [os.path.dirname(f) for f in files]:
            if path not in real_of:
                real_of[path] = _resolve(path, folder)
        for path in folders:
            real = real_of[path]
            if real is not None and os.path.isdir(real):
                folder(real).importable = importable
        for path in files:
            parent = real_of[os.path.dirname(path)]
            real = None if parent is None else _resolve(os.path.basename(path), folder, parent)
            if real is not None and not os.path.isdir(real):
                add(real, _FILE_MASK)  # written through another link, it is an event of its own
        return not _any_unknown(self._folders)

    def quiet(self) -> str:
        """:data:`QUIET` if nothing that concerns the paths happened since the watch was armed or last
        asked; :data:`LOOK` if a watched file or name changed (check them; the watch holds); :data:`REARM`
        if the paths may now lead elsewhere, or the watch cannot tell (it is closed: arm another)."""
        with self._guard:
            if self._fd < 0 or self._pid != os.getpid():
                return REARM
            found = QUIET
            try:
                if self._poll.poll(0):  # a mount or unmount: a path may now lead to another filesystem
                    found = REARM
                while found != REARM:
                    try:
                        data = os.read(self._fd, 65536)
                    except BlockingIOError:
                        break
                    found = max(found, self._concerned(data), key=_ORDER.index)
            except OSError:
                found = REARM
            if found == REARM:
                self._close()
            return found

    def close(self) -> None:
        with self._guard:
            self._close()

    def _close(self) -> None:
        for fd in (self._fd, self._mounts):
            if fd >= 0 and self._pid == os.getpid():
                os.close(fd)
        self._fd = self._mounts = -1

    def _concerned(self, data: bytes) -> str:
        found = QUIET
        offset = 0
        while offset < len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            concern = self._concerns.get(wd)
            if concern is None or mask & (_GONE | _OVERFLOW):
                return REARM  # events lost, or a watched file or folder itself moved or removed
            if not raw:  # a watched file written, or a watched folder's own attributes
                found = LOOK
                continue
            name = os.fsdecode(raw)
            if name in concern.names:
                if mask & _NAMES:  # a name on the way to a path made, removed, renamed: it may lead elsewhere
                    return REARM
                found = LOOK
            elif concern.importable is not None and mask & _NAMES and \
                    _counts(concern, name, bool(mask & _ISDIR), bool(mask & (_DELETE | _MOVED_FROM))):
                found = LOOK
        return found

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:
            pass


_ORDER = [QUIET, LOOK, REARM]


def _counts(concern: _Concern, name: str, folder: bool, removed: bool) -> bool:
    """Whether a name made or removed in a stamped folder counts for its stamp: an importable name, a
    folder, or a link (to a folder, which inotify does not flag as one; a removed name is no longer
    there to ask, so it counts)."""
    assert concern.importable is not None
    if concern.importable(name, folder):
        return True
    if removed:
        return True
    try:
        return stat.S_ISLNK(os.lstat(os.path.join(concern.path, name)).st_mode)
    except OSError:
        return True


def _resolve(path: str, folder: Callable[[str], _Concern], start: str = "/") -> Optional[str]:
    """``path`` (absolute, or relative to the real folder ``start``) with every symbolic link resolved
    as the kernel resolves it (None where a name is missing), each name looked up in a folder watched
    first (``folder``): a change to any of them (a folder above renamed, a link pointed elsewhere, the
    name made) may lead the path elsewhere."""
    current, links = start, 0
    names = [name for name in path.split("/") if name not in ("", ".")]
    while names:
        name = names.pop(0)
        if name == "..":
            current = os.path.dirname(current)
            continue
        folder(current).names.add(name)
        candidate = os.path.join(current, name)
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
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


def _room() -> int:
    """How many paths one watch may watch: as many processes as this host has CPUs, each with its
    most watches kept, would use at most half of the user's inotify instances and watches, leaving
    the rest to their own tools (an editor, a notebook server). 0: no watch."""
    cpus = os.cpu_count() or 1
    try:
        with open(_LIMITS + "instances") as instances, open(_LIMITS + "watches") as watches:
            if cpus * WATCHES_KEPT > int(instances.read()) // 2:
                return 0
            return int(watches.read()) // (2 * cpus * WATCHES_KEPT)
    except (OSError, ValueError):
        return 0


def _any_unknown(folders: Dict[str, _Concern]) -> bool:
    """Whether a folder is on a filesystem not known to be local (another host's changes make no event)."""
    devices: Dict[int, str] = {}
    for path in folders:
        devices.setdefault(os.stat(path).st_dev, path)
    return any(mount_of(path).fstype.lower() not in LOCAL_TYPES for path in devices.values())


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


def _forget_in_child() -> None:
    """A forked child closes its copies of its parent's watches at once (they are still the parent's
    queues: reading one would take the parent's events); its guard may have been held by another thread."""
    for watch in list(_live):
        watch._guard = threading.Lock()
        for fd in (watch._fd, watch._mounts):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        watch._fd = watch._mounts = -1


os.register_at_fork(after_in_child=_forget_in_child)
