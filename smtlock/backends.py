"""Lock backends: each knows one way to exclude other processes, and only that.

:class:`smtlock.lock.SMTLock` owns the protocol (waiting, timeout, re-entrancy, statistics); a backend
only tries once and releases. Adding a backend (the PostgreSQL advisory lock, say) touches one class.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from abc import ABC, abstractmethod

import filelock

from .errors import LockFileError

__all__ = ["LockBackend", "FileBackend", "holder_description"]

_HOLDER_SIZE = 256  # fixed-size slot, rewritten in place with one pwrite: no truncation, no torn reads


def holder_description() -> str:
    """Who this process is, as a waiter will read it: pid, host and since when (UTC)."""
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"pid {os.getpid()} on {socket.gethostname()} since {since}"


class LockBackend(ABC):
    """One way of excluding other processes. It tries once and never waits: SMTLock does the waiting."""

    #: what the lock is, for messages (a file path, a database key)
    name: str

    @abstractmethod
    def try_acquire(self) -> bool:
        """Try once to take the lock; True when this process now holds it."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock back; only called by the holder."""

    def holder(self) -> str | None:
        """Who holds the lock, if the backend can tell."""
        return None

    def acquire_blocking(self) -> None:
        """Wait as long as it takes. By default SMTLock polls :meth:`try_acquire`; a backend that can
        sleep in the kernel instead overrides this."""
        raise NotImplementedError


class FileBackend(LockBackend):
    """An exclusive ``flock`` on a lock file, through filelock; the kernel drops it when the holder dies.

    The lock file is never deleted (deleting it would let two processes lock two inodes of "the same"
    file). Who holds it is written to a holder file beside it, because filelock versions before 3.16
    truncate the lock file whenever a waiter opens it.
    """

    def __init__(self, lock_file: str) -> None:
        self.name = lock_file
        self.holder_file = lock_file + ".holder"
        self._lock = filelock.FileLock(lock_file, thread_local=False)
        self._holder_fd: int | None = None
        self._fd: int | None = None  # for acquire_blocking
        self._blocking_hold = False

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        except OSError as err:
            raise self._unusable(err) from None
        self._write_holder(holder_description())
        return True

    def _unusable(self, err: OSError) -> LockFileError:
        folder = os.path.dirname(self.name)
        return LockFileError(f"cannot open lock file {self.name}: {err.strerror or err} (make {folder} writable)")

    def release(self) -> None:
        self._write_holder("")
        if self._blocking_hold:
            self._blocking_hold = False
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        else:
            self._lock.release()

    def acquire_blocking(self) -> None:
        """Sleep in the kernel until the lock is free: a blocking ``flock`` on the lock file through a
        descriptor of our own (filelock only polls). The kernel wakes one waiter per release; dozens
        of polling waiters instead wake thousands of times a second and preempt the holder (on 2
        cores that doubled its held time and the burst's wall time)."""
        if self._fd is None:
            try:
                self._fd = os.open(self.name, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise self._unusable(err) from None
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self._blocking_hold = True
        self._write_holder(holder_description())

    def holder(self) -> str | None:
        try:
            with open(self.holder_file, "rb") as f:
                text = f.read(_HOLDER_SIZE).decode("utf-8", "replace").strip()
        except OSError:
            return None
        return text or None

    def _write_holder(self, text: str) -> None:
        if self._holder_fd is None:
            self._holder_fd = os.open(self.holder_file, os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(self._holder_fd, text.encode()[:_HOLDER_SIZE].ljust(_HOLDER_SIZE), 0)
