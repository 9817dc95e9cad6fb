"""Changes to the files a memo depends on, told by the kernel (Linux's inotify) instead of a ``stat`` of
each file before every record.

The provenance memo is valid while the files its scan read are as they were: some 250 in a small
project's environment (the modules found, their folders, the ``sys.path`` folders), compared by a
``stat`` each before every record, about a quarter of a warm ``@smt_logged`` call. A process that
makes many records (a pool's worker, a notebook) asks the kernel once to watch them; before each later
record it reads what happened since (a ``read`` and a ``poll`` when nothing did) and compares again
only the files an event named. Used only where the kernel sees every change: on Linux, on local
filesystems (on NFS or Lustre another host changes a file without an event here), while the mount
table is as it was, within 1 % of the user's inotify watches. Elsewhere the memo compares stats as
before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import sys
import threading
import weakref
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from .._lock.filesystem import mount_of

__all__ = ["Guard", "guard", "LOCAL_TYPES"]

#: filesystems whose every change, whoever makes it, reaches this host's inotify (not network, cluster
#: or FUSE filesystems; not overlayfs, whose lower folders can be changed beneath it)
LOCAL_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "jfs",
                         "bcachefs"})

# <sys/inotify.h>
_MODIFY, _ATTRIB, _CLOSE_WRITE = 0x2, 0x4, 0x8
_MOVED_FROM, _MOVED_TO, _CREATE, _DELETE = 0x40, 0x80, 0x100, 0x200
_DELETE_SELF, _MOVE_SELF, _UNMOUNT, _OVERFLOW, _IGNORED = 0x400, 0x800, 0x2000, 0x4000, 0x8000
_ONLYDIR, _DONT_FOLLOW, _MASK_ADD, _ISDIR = 0x1000000, 0x2000000, 0x20000000, 0x40000000
#: a file: its content and its times, through any of its names (a hard link elsewhere included)
_FILE = _MODIFY | _ATTRIB | _CLOSE_WRITE | _DELETE_SELF | _MOVE_SELF
#: a folder: the names in it, and the folder itself
_FOLDER = _ATTRIB | _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE | _DELETE_SELF | _MOVE_SELF
_NAMED = _MOVED_FROM | _MOVED_TO | _CREATE | _DELETE
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
_MAX_LINKS = 40  # as the kernel's path resolution


class Guard:
    """What a set of watched paths may have undergone since: nothing; a change to the content or the
    times of some (compare their stats again: :meth:`holds`); or a change to what a path names, a
    lost event or a moved mount (broken: watch them again)."""

    def __init__(self, watch: "_Watch") -> None:
        self._watch = watch
        self._suspects: Set[str] = set()
        self._checking = threading.Lock()
        self.broken = False

    def holds(self, same: Callable[[str], bool]) -> Optional[bool]:
        """Whether ``same(path)`` for each path an event named since the last check (True when none
        did); None when the guard is broken. Checks run one at a time: a thread never takes the word
        of one that has not finished comparing. A path found changed breaks the guard."""
        if self._watch.pid != os.getpid():  # (before a lock another thread may have held at the fork)
            return None
        with self._checking:
            with self._watch.lock:
                if not self._watch.read():
                    self.broken = True
                if self.broken:
                    return None
                suspects, self._suspects = self._suspects, set()
            try:
                if all(same(path) for path in suspects):
                    return True
            except BaseException:  # (an interrupt) the suspects taken were not all compared
                self.broken = True
                raise
            self.broken = True
            return False


def guard(files: Iterable[str], folders: Iterable[str], importable: Callable[[str, bool], bool]) -> Optional[Guard]:
    """Watch ``files`` (each file's content and times, and the names that lead to it) and ``folders``
    (also the names in them for which ``importable(name, is_folder)``). Take the guard's suspects
    only after comparing the paths' stats once more: an event of a change made before the watch
    began may never come. None where the kernel would not see every change (see the module's doc)."""
    watch = _current()
    if watch is None:
        return None
    with watch.lock:
        return watch.guard(files, folders, importable)


class _Watch:
    """This process's inotify instance: what each watch descriptor stands for, in which guards."""

    def __init__(self, libc: ctypes.CDLL, fd: int, budget: int) -> None:
        self.lock = threading.Lock()
        self._libc = libc
        self.pid = os.getpid()
        self._fd, self._budget = fd, budget
        self._guards: "weakref.WeakSet[Guard]" = weakref.WeakSet()
        self._contents: Dict[int, List[Tuple["weakref.ref[Guard]", str]]] = {}  # a file's wd -> (guard, path)
        self._names: Dict[int, Dict[str, "weakref.WeakSet[Guard]"]] = {}  # a folder's wd -> name -> guards
        #: a folder's wd -> (guard, its path as stamped, which names matter, the folder resolved)
        self._listings: Dict[int, List[Tuple["weakref.ref[Guard]", str, Callable[[str, bool], bool], str]]] = {}
        self._selves: Dict[int, "weakref.WeakSet[Guard]"] = {}  # a folder's wd -> guards broken by its own change
        self._watched: Set[int] = set()
        self._local: Dict[int, bool] = {}  # st_dev -> on a local filesystem
        #: paths no guard can watch (another filesystem, not allowed, too deep) while the mounts stand,
        #: and whether this process has used its share of watches: each record would try again
        self._unwatchable: Set[str] = set()
        self._full = False
        self._mounts = open("/proc/self/mounts", "rb")  # noqa: SIM115 -- polled for the table's changes
        self._poll = select.poll()
        self._poll.register(self._mounts, select.POLLPRI | select.POLLERR)
        self._poll.poll(0)

    def guard(self, files: Iterable[str], folders: Iterable[str],
              importable: Callable[[str, bool], bool]) -> Optional[Guard]:
        if not self.read():
            return None
        todo = [(f, "file", f) for f in files] + [(f, "listed", f) for f in folders]  # (path, kind, asked)
        if self._full or any(path in self._unwatchable for path, _, _ in todo):
            return None  # as the last time: the caller compares stats, at no cost of a watch
        made = Guard(self)
        resolved: Dict[str, Optional[str]] = {}
        asked = ""
        try:
            while todo:
                path, kind, asked = todo.pop()
                # not os.path.abspath: it takes "link/.." as the folder holding the link, where the
                # kernel (and so a stat) takes the parent of the link's target
                real = self._resolve(os.path.join(os.getcwd(), path.rstrip("/") or "/"), made, resolved)
                if real is None or kind == "link":
                    continue  # absent: the folder it would be in names it when it comes
                if kind == "listed":
                    wd = self._add(real, _FOLDER | _ONLYDIR)
                    self._listings[wd] = _live(self._listings.get(wd, [])) + [
                        (weakref.ref(made), path, importable, real)]
                    self._selves.setdefault(wd, weakref.WeakSet()).add(made)
                    # a link in it is importable by where it leads (a folder: a package), which can
                    # change with no event here (a dangling link's target made, a link's target
                    # replaced): the way each link leads is watched (a link made later breaks the
                    # guard: see _event)
                    with os.scandir(real) as entries:
                        todo += [(entry.path, "link", asked) for entry in entries if entry.is_symlink()]
                else:
                    wd = self._add(real, _FILE | _DONT_FOLLOW)
                    self._contents[wd] = _live(self._contents.get(wd, [])) + [(weakref.ref(made), path)]
        except FileNotFoundError:
            return None  # gone meanwhile: its stat says so
        except (OSError, ValueError, RecursionError) as error:  # not local, not allowed, too deep, a NUL
            if isinstance(error, OSError) and error.errno == errno.ENOSPC:
                self._full = True  # this process's share of watches, or the user's, is used up
            else:
                self._unwatchable.add(asked)
            return None
        self._guards.add(made)
        return made

    def _resolve(self, path: str, made: Guard, resolved: Dict[str, Optional[str]], links: int = 0) -> Optional[str]:
        """``path`` resolved as the kernel does, each folder on the way watched (before it is read) for
        the name looked up in it; None when a component is absent."""
        parent, name = os.path.split(path)
        if not name:
            return path
        if parent not in resolved:
            resolved[parent] = self._resolve(parent, made, resolved, links)
        folder = resolved[parent]
        if folder is None or not self._name(folder, name, made):
            return None
        real = os.path.join(folder, name)
        try:
            target = os.readlink(real)
        except OSError as error:
            if error.errno == errno.EINVAL:  # not a link
                return real
            if error.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
        if links >= _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        # relative to the folder that holds the link; ".." after a link is its target's parent, as
        # the kernel takes it (no normpath)
        return self._resolve(os.path.join(folder, target.rstrip("/") or "/"), made, resolved, links + 1)

    def _name(self, folder: str, name: str, made: Guard) -> bool:
        """Watch ``folder`` for ``name`` (False: ``folder`` is a file, so no path goes on through it,
        until a change of its own name, which its folder is watched for)."""
        try:
            wd = self._add(folder, _FOLDER | _ONLYDIR)
        except NotADirectoryError:
            return False
        # by its case-folded name: in a case-insensitive folder (ext4's casefold) another case is
        # the same name
        self._names.setdefault(wd, {}).setdefault(name.casefold(), weakref.WeakSet()).add(made)
        self._selves.setdefault(wd, weakref.WeakSet()).add(made)
        return True

    def _add(self, path: str, mask: int) -> int:
        device = os.stat(path, follow_symlinks=False).st_dev
        if device not in self._local:
            self._local[device] = mount_of(path).fstype in LOCAL_TYPES
        if not self._local[device]:
            raise OSError(errno.EXDEV, "not a local filesystem", path)
        # MASK_ADD: a folder watched for its names and also as a path of its own keeps both masks
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(path), mask | _MASK_ADD)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
        self._watched.add(wd)
        if len(self._watched) > self._budget:
            raise OSError(errno.ENOSPC, "beyond this process's share of inotify watches", path)
        return wd

    def read(self) -> bool:
        """Hand every event since the last read to its guards; False once this watch is of no use
        (inherited from the parent of a fork: its events are the parent's to read)."""
        if self.pid != os.getpid():
            return False
        if self._poll.poll(0):  # the mount table changed: a path may now lead into another filesystem
            self._break_all()
            self._local.clear()  # (a device's number may now be another filesystem's)
            self._unwatchable.clear()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return True
            except OSError:
                self._break_all()
                return False
            offset = 0
            try:
                while offset < len(data):
                    wd, mask, _, size = _EVENT.unpack_from(data, offset)
                    name = data[offset + _EVENT.size:offset + _EVENT.size + size].rstrip(b"\0")
                    offset += _EVENT.size + size
                    self._event(wd, mask, os.fsdecode(name))
            except BaseException:  # (an interrupt) events read and not handed out: no guard holds
                self._break_all()
                raise

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & _OVERFLOW:  # events were lost
            self._break_all()
            return
        if not name:  # the watched file or folder itself
            gone = bool(mask & (_DELETE_SELF | _MOVE_SELF | _UNMOUNT | _IGNORED))
            for made, path in self._contents.get(wd, ()):
                guarded = made()
                if guarded is not None:
                    guarded._suspects.add(path)
                    if gone:  # no later change of it would be seen
                        guarded.broken = True
            if gone or mask & _ATTRIB:
                for guarded in self._selves.get(wd, ()):
                    guarded.broken = True
            if mask & _IGNORED:  # its watch is gone (deleted, unmounted); the number may be reused
                self._contents.pop(wd, None)
                self._names.pop(wd, None)
                self._listings.pop(wd, None)
                self._selves.pop(wd, None)
                self._watched.discard(wd)
            return
        for guarded in self._names.get(wd, {}).get(name.casefold(), ()):
            guarded.broken = True  # what a path leads to may be another file now: watch it again
        if mask & _NAMED:
            link: Optional[bool] = None
            for made, path, importable, real in self._listings.get(wd, ()):
                guarded = made()
                if guarded is None:
                    continue
                if mask & (_CREATE | _MOVED_TO) and not mask & _ISDIR:
                    if link is None:
                        link = os.path.islink(os.path.join(real, name))
                    if link:  # importable by where it leads, which this watch does not follow yet
                        guarded.broken = True
                        continue
                if importable(name, bool(mask & _ISDIR)):
                    guarded._suspects.add(path)

    def _break_all(self) -> None:
        for guarded in self._guards:
            guarded.broken = True


def _live(registered: List[Any]) -> List[Any]:
    """The registrations whose guard is still in use (a process whose files change at every record
    makes a guard for each: the old ones' go)."""
    return [entry for entry in registered if entry[0]() is not None]


def _open() -> Optional[_Watch]:
    libc = _load_libc() if sys.platform.startswith("linux") else None
    if libc is None:
        return None
    try:
        with open("/proc/sys/fs/inotify/max_user_watches") as limit:
            budget = int(limit.read()) // 100
    except (OSError, ValueError):
        return None
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:  # out of inotify instances (128 per user by default)
        return None
    try:
        return _Watch(libc, fd, budget)
    except OSError:
        os.close(fd)
        return None


def _current() -> Optional[_Watch]:
    """This process's watch, opened at its first use (a process that makes one record opens none)."""
    global _watch, _opened
    with _opening:
        if not _opened:
            _watch, _opened = _open(), True
        return _watch


def _forget_after_fork() -> None:
    """A forked child reads no events of its parent's instance (they would be lost to the parent)."""
    global _watch, _opened, _opening
    if _watch is not None:  # this process's copies of the parent's descriptors
        with contextlib.suppress(OSError):
            os.close(_watch._fd)
        with contextlib.suppress(OSError):
            _watch._mounts.close()
    _watch, _opened, _opening = None, False, threading.Lock()


def _load_libc() -> Optional[ctypes.CDLL]:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc


_watch: Optional[_Watch] = None
_opened = False
_opening = threading.Lock()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
