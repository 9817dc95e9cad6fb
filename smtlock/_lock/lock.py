"""SMTLock: one cross-process, re-entrant lock per Sumatra project.

The lock file is ``.smt/smtlock.lock``. Within a process the lock is re-entrant (a Sumatra call that
locks inside a user's ``with SMTLock(project):`` does not deadlock) and threads take turns. Across
processes a :class:`~smtlock._lock.backends.FileBackend` excludes; a PostgreSQL store adds a backend that
reaches across machines. A forked child (multiprocessing's default on Linux) starts holding nothing,
with backends of its own, whatever its parent held at the fork.
"""

from __future__ import annotations

import math
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, List, Optional, Tuple, Union

from .._postgres.client import mask_uri
from ..errors import LockLost, LockTimeout, NoProjectError, ServerUnreachable, SettingError
from .backends import FileBackend, LeaseBackend, LockBackend, PostgresBackend, probe
from .filesystem import is_shared
from .paths import LEASE_SUFFIX, LOCK_FILE_NAME, SMT_DIR, postgres_uri, project_root

__all__ = ["SMTLock", "store_lock", "TIMEOUT_VARIABLE", "timeout_setting", "enable_stats", "collected_stats",
           "SERVER_WAIT_S", "server_wait", "wait_for_server", "current_hold", "in_before_store", "WATCH_S"]

_MIN_POLL = 0.0005  # seconds; the wait between tries doubles up to poll_interval, with jitter
_FOREVER = -1.0
TIMEOUT_VARIABLE = "SMTLOCK_TIMEOUT"
#: how long a job waits for its store's PostgreSQL server when it is down ($SMTLOCK_TIMEOUT overrides)
SERVER_WAIT_S = 300.0
#: how often the watchdog asks each held backend whether its hold is gone (a loss is noticed within
#: this of the backend telling: at once for a closed connection, ~5 s after a cut, at a lease's end)
WATCH_S = 0.5


@dataclass
class _Shared:
    """What every SMTLock of one lock file shares inside this process."""

    backends: List[LockBackend]
    mutex: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    wait_s: float = 0.0
    held_since: float = 0.0
    purpose: str = ""
    taken: List[LockBackend] = field(default_factory=list)  # the backends held now
    owner: Optional["SMTLock"] = None  # the SMTLock whose acquire took the backends
    thread: int = 0  # the thread that holds it
    server_waits: List[float] = field(default_factory=list)  # each acquisition's wait for the server
    lost: Optional[LockLost] = None  # the hold was lost (the watchdog or a check found it): never held again
    holds: int = 0  # how many holds began: an answer about an earlier one is not this one's


_shared: dict = {}
_shared_guard = threading.Lock()
# $SMTLOCK_STATS=1 lets the stress harness collect figures from processes it does not control
_stats: Optional[List[Tuple[str, float, float]]] = [] if os.environ.get("SMTLOCK_STATS") else None


def _forget_after_fork() -> None:
    # A forked child holds no lock of ours, whatever its parent held: it gives up the inherited
    # descriptors and connections without releasing them, and makes its own on first use.
    global _shared_guard, _watchdog_guard
    for shared in _shared.values():
        for backend in shared.backends:
            backend.abandon()
    _shared.clear()
    _shared_guard = threading.Lock()
    _watchdog.clear()  # threads do not survive a fork
    _watchdog_guard = threading.Lock()


#: the watchdog thread and the event that stops it (empty until the first hold, and while a fork is made)
_watchdog: List[Tuple[threading.Thread, threading.Event]] = []
_watchdog_guard = threading.Lock()
#: how long a fork waits for the watchdog to stop (it may be in a stat of a filesystem that hangs)
_FORK_WAIT_S = 2.0


def _watch(stop: threading.Event) -> None:
    """The watchdog: every :data:`WATCH_S`, each hold of this process that is not known lost asks its
    backends :meth:`~smtlock._lock.backends.LockBackend.lost`; one process-wide thread, started with the
    first hold."""
    while not stop.wait(WATCH_S):
        with _shared_guard:
            held = [shared for shared in _shared.values() if shared.depth > 0 and shared.lost is None]
        for shared in held:
            _notice(shared)


def _start_watchdog() -> None:
    with _watchdog_guard:
        if not _watchdog:
            stop = threading.Event()
            thread = threading.Thread(target=_watch, args=(stop,), daemon=True, name="smtlock-watchdog")
            _watchdog.append((thread, stop))
            thread.start()


def _stop_watchdog_for_fork() -> None:
    """Before a fork: stop the watchdog, so that the process forks with the threads it had before it used
    the lock (Python 3.12+ warns that a fork of a multi-threaded process may deadlock the child, and a
    pool forking its workers would say so for each one). It starts again at the lock's next use in the
    parent (an acquire, ``lost``, ``check()``, a store write), not in the fork's parent hook: Python 3.13
    counts the threads after that hook."""
    with _watchdog_guard:
        if _watchdog:
            thread, stop = _watchdog.pop()
            stop.set()
            thread.join(_FORK_WAIT_S)
            # join returns as the thread's Python state ends; the warning counts the threads the kernel
            # still has (/proc/self/stat), so wait, briefly, until this one has gone there too
            deadline = time.monotonic() + _FORK_WAIT_S
            while os.path.exists(f"/proc/self/task/{thread.native_id}") and time.monotonic() < deadline:
                time.sleep(0.0002)


os.register_at_fork(before=_stop_watchdog_for_fork, after_in_child=_forget_after_fork)


def _notice(shared: _Shared) -> Optional[LockLost]:
    """Whether a backend of the hold says it is gone (remembered: a hold once lost stays lost)."""
    hold = shared.holds
    if shared.lost is None:
        for backend in list(shared.taken):
            why = backend.lost()
            if why and hold == shared.holds:
                shared.lost = _lost(backend, why)
                break
    return shared.lost


def _lost(backend: LockBackend, why: str) -> LockLost:
    return LockLost(backend.name, why, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _again(lost: LockLost) -> LockLost:
    """A fresh copy to raise (each raise its own traceback and chain)."""
    return LockLost(lost.lock, lost.why, lost.when)


def enable_stats() -> None:
    """Record (purpose, wait seconds, held seconds) for each outermost acquisition in this process."""
    global _stats
    _stats = []


def collected_stats() -> List[Tuple[str, float, float]]:
    """The statistics recorded since :func:`enable_stats` (empty when not enabled)."""
    return list(_stats or [])


def server_wait() -> float:
    """How long a job waits for a PostgreSQL server that is down: ``$SMTLOCK_TIMEOUT``, else
    :data:`SERVER_WAIT_S`; ``math.inf`` for as long as it takes."""
    return timeout_setting(SERVER_WAIT_S)


def timeout_setting(default: float = math.inf) -> float:
    """``$SMTLOCK_TIMEOUT``: the longest smtlock waits for the lock or for a database connection, in
    seconds; unset gives ``default``, a negative value waits forever (``math.inf``)."""
    value = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise SettingError(f"{TIMEOUT_VARIABLE}={value!r} is not a number of seconds (use e.g. "
                           f"{TIMEOUT_VARIABLE}=300, 0.5, or -1 to wait forever)") from None
    if math.isnan(seconds):
        raise SettingError(f"{TIMEOUT_VARIABLE}={value!r} is not a number of seconds")
    return math.inf if seconds < 0 else seconds


class SMTLock:
    """Cross-process exclusive lock on a Sumatra project; use it as a context manager.

    ``project`` is a Sumatra ``Project`` or a path inside a project. ``timeout`` is in seconds; None
    takes ``$SMTLOCK_TIMEOUT`` or waits as long as it takes, a negative value waits forever, 0 tries
    once. On timeout :class:`~smtlock.errors.LockTimeout` names the lock file and the holder. Without a
    deadline a waiter sleeps in the kernel; with one it polls, backing off up to ``poll_interval``.
    """

    def __init__(
        self,
        project: Union[Any, str, "os.PathLike[str]"],
        timeout: Optional[float] = None,
        poll_interval: float = 0.05,
        purpose: str = "user",
    ) -> None:
        self.root: Optional[Path] = project_root(project)
        self._setup(str(self.root / SMT_DIR / LOCK_FILE_NAME), postgres_uri(project, self.root), timeout,
                    poll_interval, purpose)

    @classmethod
    def on_file(cls, lock_file: str, purpose: str = "user") -> "SMTLock":
        """The same lock on any file, for a record store that lives outside a project."""
        lock = cls.__new__(cls)
        lock.root = None
        lock._setup(lock_file, None, None, 0.05, purpose)
        return lock

    def _setup(self, lock_file: str, store_uri: Optional[str], timeout: Optional[float],
               poll_interval: float, purpose: str) -> None:
        self.lock_file = lock_file
        self._store_uri = store_uri
        wait = timeout_setting() if timeout is None else float(timeout)
        self.timeout = _FOREVER if wait < 0 or math.isinf(wait) else wait
        #: how long to wait for the store's server when it is down, holding no lock meanwhile
        self.server_wait_s = server_wait() if timeout is None else (math.inf if wait < 0 else wait)
        self.poll_interval = poll_interval
        self.purpose = purpose

    @property
    def _shared(self) -> _Shared:
        """This process's state of the lock file, made on first use in each process (so a forked
        child never uses its parent's descriptors or connections)."""
        with _shared_guard:
            shared = _shared.get(self.lock_file)
            if shared is None:
                shared = _shared[self.lock_file] = _Shared(self._make_backends())
        return shared

    def _make_backends(self) -> List[LockBackend]:
        """In the order they are taken: the file lock (flock excludes the processes of this host, so
        at most one per host waits for what follows); on a shared filesystem, a lease that reaches
        the other hosts; for a PostgreSQL store, the store's advisory lock."""
        backends: List[LockBackend] = [FileBackend(self.lock_file)]
        if is_shared(os.path.dirname(self.lock_file)):
            backends.append(LeaseBackend(os.path.splitext(self.lock_file)[0] + LEASE_SUFFIX))
        if self._store_uri:
            backends.append(PostgresBackend(self._store_uri))
        return backends

    @property
    def is_locked(self) -> bool:
        """Whether this process holds the lock (in any thread)."""
        return self._shared.depth > 0

    def acquire(self, timeout: Optional[float] = None,
                before_store: Optional[Callable[[], None]] = None) -> "_Acquired":
        """Take the lock, waiting up to ``timeout`` seconds (default: the lock's own timeout).

        ``before_store`` runs once this host's locks are held and before a PostgreSQL store's advisory
        lock is waited for (at the end when there is none), and only when this call takes the lock: the
        write path opens its connection there, so no process that waits for the file lock holds one
        and no other host waits while it is made.
        """
        wait = self.timeout if timeout is None else float(timeout)
        start = time.perf_counter()
        deadline = None if wait < 0 else time.monotonic() + wait
        shared = self._shared
        if not shared.mutex.acquire(timeout=-1 if deadline is None else max(wait, 0.0)):
            raise LockTimeout(self.lock_file, wait, f"another thread of this process (pid {os.getpid()})")
        if shared.depth == 0:
            try:
                self._acquire_backends(shared, deadline, wait, before_store)
            except BaseException:
                shared.mutex.release()
                raise
            shared.held_since = time.perf_counter()
            shared.wait_s = shared.held_since - start
            shared.purpose = self.purpose
            shared.owner, shared.thread = self, threading.get_ident()
            shared.lost = None
            shared.holds += 1
            _start_watchdog()
        shared.depth += 1
        shared.server_waits.append(self.server_wait_s)
        return _Acquired(self)

    def _acquire_backends(self, shared: _Shared, deadline: Optional[float], wait: float,
                          before_store: Optional[Callable[[], None]]) -> None:
        """Take every backend in order. When the store's server is down, let go of the host's locks
        and wait for it holding nothing (up to :attr:`server_wait_s`), then start again: a job never
        keeps the others of its host waiting while it waits for the server."""
        while True:
            try:
                shared.taken = self._take(shared.backends, deadline, wait, before_store)
                return
            except ServerUnreachable as down:
                wait_for_server(self._store_uri or "", down.reason, self.server_wait_s)

    def _take(self, backends: List[LockBackend], deadline: Optional[float], wait: float,
              before_store: Optional[Callable[[], None]]) -> List[LockBackend]:
        taken: List[LockBackend] = []
        try:
            for backend in backends:
                if isinstance(backend, PostgresBackend):
                    backend.connect()  # the server is down: ServerUnreachable before anything else
                    if before_store is not None:
                        _before_store(before_store)
                        before_store = None
                if deadline is None:
                    try:
                        backend.acquire_blocking()
                        taken.append(backend)
                        continue
                    except NotImplementedError:
                        pass
                delay = _MIN_POLL
                while not backend.try_acquire():
                    if deadline is not None and time.monotonic() >= deadline:
                        raise LockTimeout(backend.name, wait, backend.holder())
                    time.sleep(delay * random.uniform(0.5, 1.0))
                    delay = min(delay * 2, self.poll_interval)
                taken.append(backend)
            if before_store is not None:
                _before_store(before_store)
        except BaseException:
            for backend in reversed(taken):
                backend.release()
            raise
        return taken

    def let_go_until_reachable(self, reason: str) -> None:
        """Called by this lock's holder, which holds it once (the write path's own hold, whose write
        is redone whole after; its server went down or its hold was lost): let go of every backend, wait
        for the store's server holding nothing (up to :attr:`server_wait_s`), and take them again as
        :meth:`acquire` did."""
        shared = self._shared
        for backend in reversed(shared.taken):
            backend.release()  # lost or not: the write is redone under the hold taken next
        shared.taken = []
        if self._store_uri:
            wait_for_server(self._store_uri, reason, self.server_wait_s)
        deadline = None if self.timeout < 0 else time.monotonic() + self.timeout
        self._acquire_backends(shared, deadline, self.timeout, None)
        shared.lost = None  # a hold of its own again, whatever became of the one before
        shared.holds += 1

    @property
    def lost(self) -> Optional[LockLost]:
        """While this process holds the lock: the :class:`~smtlock.errors.LockLost` that says it was lost
        since it was taken (the block is no longer exclusive), else None. Asks the backends, without
        waiting; the watchdog asks them every :data:`WATCH_S` too."""
        shared = self._shared
        if shared.depth <= 0:
            return None
        _start_watchdog()  # again, if a fork stopped it while this process held the lock
        return _notice(shared)

    def check(self) -> None:
        """Raise :class:`~smtlock.errors.LockLost` if the lock held was lost (for long blocks: call it
        before anything that must not happen without the lock; every store write checks by itself)."""
        lost = self.lost
        if lost is not None:
            raise _again(lost)

    def fence_token(self, uri: str) -> Optional[int]:
        """While held: the token that a write to the PostgreSQL database at ``uri`` checks inside its
        transaction (see :func:`~smtlock._lock.backends.held_check`); None when the hold has none
        there (no PostgreSQL backend, or a write to another database: ``smt sync``, a move)."""
        for backend in self._shared.taken:
            if isinstance(backend, PostgresBackend) and backend.same_database(uri):
                return backend.token
        return None

    def release(self) -> None:
        """Undo one :meth:`acquire`; the last one lets other processes in. The last release of a user's
        hold (``purpose="user"``) raises :class:`~smtlock.errors.LockLost`, once it has let go, when the
        hold was lost while held (the ``ROLLBACK`` that ends a PostgreSQL hold proves it lived to the end)."""
        shared = self._shared
        if shared.depth <= 0:
            raise RuntimeError(f"release of {self.lock_file}, which this process does not hold")
        shared.depth -= 1
        shared.server_waits.pop()
        lost = None
        try:
            if shared.depth == 0:
                held = time.perf_counter() - shared.held_since
                lost = _notice(shared)
                taken, shared.taken, shared.owner = shared.taken, [], None
                for backend in reversed(taken):
                    why = backend.release()  # a user's block: was it exclusive to its end?
                    lost = lost or (_lost(backend, why) if why else None)
                if _stats is not None:
                    _stats.append((shared.purpose, shared.wait_s, held))
        finally:
            shared.mutex.release()
        if lost is not None and shared.purpose == "user":  # smtlock's own holds' writes were fenced
            raise _again(lost)

    def holder(self) -> Optional[str]:
        """Who holds the lock now, as recorded by the holder (None when free or unknown)."""
        for backend in self._shared.backends:
            who = backend.holder()
            if who:
                return who
        return None

    def __enter__(self) -> "SMTLock":
        self.acquire()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Optional[TracebackType]) -> None:
        _release_at_exit(self, exc)

    def __repr__(self) -> str:
        return f"SMTLock(lock_file={self.lock_file!r}, locked={self.is_locked})"


class _Acquired:
    """What :meth:`SMTLock.acquire` returns, so ``with lock.acquire(timeout=5):`` releases once."""

    def __init__(self, lock: SMTLock) -> None:
        self.lock = lock

    def __enter__(self) -> SMTLock:
        return self.lock

    def __exit__(self, exc_type: Any, exc: Any, tb: Optional[TracebackType]) -> None:
        _release_at_exit(self.lock, exc)


def _release_at_exit(lock: SMTLock, exc: Optional[BaseException]) -> None:
    """The end of a ``with`` block: release; a hold that was lost raises LockLost (chained to the
    exception that ends the block, unless that is the LockLost of a write inside it already)."""
    try:
        lock.release()
    except LockLost:
        if not isinstance(exc, LockLost):
            raise


_acquiring = threading.local()  # .before_store: this thread runs a before_store, holding a host's lock


def _before_store(call: Callable[[], None]) -> None:
    _acquiring.before_store = True
    try:
        call()
    finally:
        _acquiring.before_store = False


def in_before_store() -> bool:
    """Whether this thread runs an :meth:`SMTLock.acquire` ``before_store``, holding the host's lock:
    code there must not wait for a server (SMTLock does that, holding nothing)."""
    return bool(getattr(_acquiring, "before_store", False))


def current_hold() -> Optional[Tuple[SMTLock, int, float]]:
    """The lock this thread holds, if any: the SMTLock that took it, how many times it is held, and
    the longest wait for the store's server any of its holders asked for."""
    with _shared_guard:
        held = list(_shared.values())
    for shared in held:
        if shared.depth > 0 and shared.owner is not None and shared.thread == threading.get_ident():
            return shared.owner, shared.depth, max(shared.server_waits, default=server_wait())
    return None


def wait_for_server(uri: str, reason: str, seconds: float, quiet: bool = False) -> None:
    """Wait until the PostgreSQL server at ``uri`` accepts a connection, trying with backoff (up to
    2 s apart) for ``seconds`` (``math.inf``: as long as it takes). Unless ``quiet``, say once on
    stderr what is waited for. Call it holding no lock. At the end: :class:`ServerUnreachable`."""
    start = time.monotonic()
    delay, told = 0.05, quiet
    while True:
        why = probe(uri, timeout=2 if math.isinf(seconds) else int(min(10, max(2, seconds))))
        if why is None:
            return
        reason = why
        waited = time.monotonic() - start
        if waited >= seconds:
            raise ServerUnreachable(mask_uri(uri), reason, seconds)
        if not told:
            told = True
            how_long = "as long as it takes (a finished run is kept)" if math.isinf(seconds) else \
                f"up to {seconds:g} s ({TIMEOUT_VARIABLE})"
            print(f"smtlock: PostgreSQL at {mask_uri(uri)} is not reachable ({reason}); waiting {how_long}; "
                  "if it is your own server: smtlock server start", file=sys.stderr, flush=True)
        time.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, seconds - waited)))
        delay = min(delay * 2, 2.0)


def store_lock(path: str, purpose: str) -> SMTLock:
    """The lock for a store file: its project's SMTLock, or a lock file beside a store that lives
    outside any project."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        return SMTLock(path, purpose=purpose)
    except NoProjectError:
        return SMTLock.on_file(path + ".lock", purpose=purpose)
