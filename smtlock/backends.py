"""Lock backends: each knows one way to exclude other processes, and only that.

:class:`smtlock.lock.SMTLock` owns the protocol (waiting, timeout, re-entrancy, statistics); a backend
only tries once and releases. Adding a backend (the PostgreSQL advisory lock, say) touches one class.
"""

from __future__ import annotations

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

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        except OSError as err:
            folder = os.path.dirname(self.name)
            raise LockFileError(
                f"cannot open lock file {self.name}: {err.strerror or err} (make {folder} writable)"
            ) from None
        self._write_holder(holder_description())
        return True

    def release(self) -> None:
        self._write_holder("")
        self._lock.release()

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
