"""Lock backends: each knows one way to exclude other processes, and only that.

:class:`smtlock._lock.lock.SMTLock` owns the protocol (waiting, timeout, re-entrancy, fork, statistics); a
backend only tries once, waits in the kernel if it can, and releases. Adding a backend (the
PostgreSQL advisory lock, say) touches one class.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import select
import socket
import threading
import time
from abc import ABC, abstractmethod
from typing import Any, NamedTuple, Optional

from .._postgres.client import (
    advisory_key,
    connect,
    connect_kwargs,
    local_settings,
    mask_uri,
    refuses_transactions,
    statement_pooling,
)
from ..errors import LockFileError, ServerUnreachable, SettingError, StoreError

__all__ = ["LockBackend", "FileBackend", "LeaseBackend", "Holder", "lease_setting", "FILE_MODE",
           "replacement_mode", "LEASE_VARIABLE", "CLOCK_SLOP_S", "PostgresBackend", "HOLDER_SUFFIX",
           "connection_trouble", "probe", "held_check"]

HOLDER_SUFFIX = ".holder"  # <lock file>.holder: who holds a file lock, for waiters and the doctor
_HOLDER_SIZE = 256  # fixed-size slot, rewritten in place with one pwrite: no truncation, no torn reads
#: mode for files smtlock creates; the umask applies, so a group-writable project stays usable by the group
FILE_MODE = 0o666
#: errors of a filesystem that has no working flock (NFS without a lock daemon, some FUSE mounts)
_NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class Holder(NamedTuple):
    """Who holds a lock, as the holder records it for waiters and for ``smtlock doctor``; written
    as ``pid N on HOST since T`` (T in UTC) and read back only through :meth:`parse`."""

    pid: int
    host: str
    since: str

    @classmethod
    def me(cls) -> Holder:
        """This process, from now."""
        return cls(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @classmethod
    def parse(cls, text: str) -> Optional[Holder]:
        """The holder a record names (None for an empty or foreign text)."""
        match = _HOLDER_RECORD.match(text.strip())
        return cls(int(match["pid"]), match["host"], match["since"]) if match else None

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since}"


_HOLDER_RECORD = re.compile(r"pid (?P<pid>\d+) on (?P<host>\S+) since (?P<since>\S+)")


class LockBackend(ABC):
    """One way of excluding other processes. It tries once and never waits: SMTLock does the waiting.

    A backend belongs to the process that made it: :class:`~smtlock._lock.lock.SMTLock` makes new ones in a
    forked child and calls :meth:`abandon` on the inherited ones, which must then give up their
    descriptors and connections without releasing anything the parent holds.
    """

    #: what the lock is, for messages (a file path, a database key)
    name: str

    @abstractmethod
    def try_acquire(self) -> bool:
        """Try once to take the lock; True when this process now holds it."""

    @abstractmethod
    def release(self) -> Optional[str]:
        """Give the lock back; only called by the holder. What it found on the way, if it can tell:
        why the hold had been lost (None: it was held to the end, or the backend cannot tell)."""

    def holder(self) -> str | None:
        """Who holds the lock, if the backend can tell."""
        return None

    def acquire_blocking(self) -> None:
        """Wait as long as it takes. By default SMTLock polls :meth:`try_acquire`; a backend that can
        sleep in the kernel instead overrides this."""
        raise NotImplementedError

    def abandon(self) -> None:  # noqa: B027 (not abstract: a backend that inherits nothing keeps this)
        """In a forked child: drop what was inherited from the parent without releasing it."""

    def lost(self) -> Optional[str]:
        """While held: why the hold is gone, if this process can tell at once without waiting (None
        when it is not known to be lost). Cheap: the watchdog and every store write ask it."""
        return None



class FileBackend(LockBackend):
    """An exclusive ``flock`` on a lock file; the kernel drops it when the holder dies.

    The descriptor is this process's own: a forked child opens another (a flock belongs to the open
    file description, so a child using its parent's descriptor would "hold" the parent's lock at once
    and its unlock would free it). The lock file is never deleted: deleting it lets two processes lock
    two inodes of "the same" file (filelock issues #27, #31, and its 3.20.4-3.29.4 releases). Who holds
    it is written to a holder file beside it.
    """

    def __init__(self, lock_file: str) -> None:
        self.name = lock_file
        self.holder_file = lock_file + HOLDER_SUFFIX
        self._fd: int | None = None
        self._holder_fd: int | None = None

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = _open(self.name, "lock file")
        return self._fd

    def try_acquire(self) -> bool:
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as err:
            raise self._no_flock(err) from None
        self._write_holder(Holder.me())
        return True

    def acquire_blocking(self) -> None:
        """Sleep in the kernel until the lock is free. The kernel wakes one waiter per release;
        dozens of polling waiters instead wake thousands of times a second and preempt the holder (on
        2 cores that doubled its held time and the burst's wall time)."""
        try:
            fcntl.flock(self._descriptor(), fcntl.LOCK_EX)
        except OSError as err:
            raise self._no_flock(err) from None
        self._write_holder(Holder.me())

    def release(self) -> Optional[str]:
        self._write_holder(None)
        fcntl.flock(self._descriptor(), fcntl.LOCK_UN)
        return None  # the kernel keeps a flock until it is let go

    def abandon(self) -> None:
        # Closing our copy of an inherited descriptor leaves the parent's flock alone (it is released
        # only by LOCK_UN or when the last descriptor of the open file description closes).
        for fd in (self._fd, self._holder_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._holder_fd = None

    def _no_flock(self, err: OSError) -> LockFileError:
        if err.errno in _NO_FLOCK:
            return LockFileError(
                f"file locks do not work on the filesystem of {self.name} ({err.strerror}): keep the "
                "records in PostgreSQL and the lock with them (`smtlock postgres URL`)")
        return LockFileError(f"cannot lock {self.name}: {err.strerror or err}")

    def holder(self) -> str | None:
        try:
            with open(self.holder_file, "rb") as f:
                text = f.read(_HOLDER_SIZE).decode("utf-8", "replace").strip()
        except OSError:
            return None
        return text or None

    def _write_holder(self, holder: Optional[Holder]) -> None:
        if self._holder_fd is None:
            self._holder_fd = _open(self.holder_file, "lock holder file")
        os.pwrite(self._holder_fd, str(holder or "").encode()[:_HOLDER_SIZE].ljust(_HOLDER_SIZE), 0)


LEASE_VARIABLE = "SMTLOCK_LEASE"
DEFAULT_LEASE_S = 30.0
#: how far the hosts' clocks may disagree: a lease is broken only this long after it expired
CLOCK_SLOP_S = 10.0


def lease_setting() -> float:
    """``$SMTLOCK_LEASE``: seconds a lease lasts unless renewed (a dead host blocks others that long,
    plus the clock slop); default 30."""
    value = os.environ.get(LEASE_VARIABLE, "").strip()
    try:
        seconds = float(value) if value else DEFAULT_LEASE_S
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise SettingError(f"{LEASE_VARIABLE}={value!r} is not a positive number of seconds (default "
                           f"{DEFAULT_LEASE_S:g})")
    return seconds


class LeaseBackend(LockBackend):
    """A lock that reaches the other hosts of a shared filesystem, where flock may not: ``link(2)`` of
    a claim file unique to this process onto the lock's name, which is atomic on NFS too (the manner of
    flufl.lock), with a lease.

    The lease is the lock file's mtime, set in the future and renewed by a thread while the lock is
    held. A holder that dies leaves a lease that other hosts break once it has expired, plus
    :data:`CLOCK_SLOP_S`: this assumes the hosts' clocks agree within that. A holder stopped for longer
    than its lease (suspended, cut off from the filesystem) can lose the lock while it believes it
    holds it; no lease-based lock can prevent that.
    """

    def __init__(self, lock_file: str, lease: float | None = None) -> None:
        self.name = lock_file
        self.lease = lease if lease is not None else lease_setting()
        self._claim = ""
        self._stop: threading.Event | None = None
        self._expires = 0.0  # when the lease runs out unless renewed (time.time())
        self._gone: Optional[str] = None  # why the hold was lost, once the renewer found it

    def try_acquire(self) -> bool:
        self._claim = f"{self.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = _open(self._claim, "lease claim file")
        os.write(fd, f"{Holder.me()}\n{self._claim}\n".encode())
        os.close(fd)
        self._renew()
        try:
            os.link(self._claim, self.name)
        except FileExistsError:
            # NFS may report a failure for a link it made: the claim's link count tells
            if os.stat(self._claim).st_nlink != 2:
                self._forget_claim()
                self.break_if_expired()
                return False
        except OSError as err:
            self._forget_claim()
            raise LockFileError(f"cannot take the lease {self.name}: {err.strerror or err}") from None
        self._gone = None
        self._stop = threading.Event()
        threading.Thread(target=self._keep, args=(self._stop,), daemon=True, name="smtlock-lease").start()
        return True

    def release(self) -> Optional[str]:
        why = self.lost()
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        try:
            if os.stat(self.name).st_ino == os.stat(self._claim).st_ino:
                os.unlink(self.name)
        except FileNotFoundError:
            pass  # broken by another host after our lease expired
        self._forget_claim()
        return why

    def abandon(self) -> None:
        # a forked child: the parent's claim, lease and renewing thread are the parent's
        self._claim, self._stop = "", None

    def holder(self) -> str | None:
        try:
            with open(self.name) as f:
                who = f.readline().strip()
            expires = os.stat(self.name).st_mtime
        except OSError:
            return None
        left = expires - time.time()
        return f"{who} (lease {'ends in' if left >= 0 else 'ended'} {abs(left):.0f} s{'' if left >= 0 else ' ago'})"

    def _renew(self) -> None:
        expiry = time.time() + self.lease
        os.utime(self._claim, (expiry, expiry))
        self._expires = expiry

    def _keep(self, stop: threading.Event) -> None:
        # a lease that ran out is never renewed back to life: another host may have broken and held
        # it meanwhile (this process was stopped, or its filesystem did not answer)
        while not stop.wait(self.lease / 4):
            self._gone = self._gone or self._taken_away()
            if self._gone:
                return
            try:
                self._renew()
            except OSError as err:
                self._gone = f"its lease could not be renewed: {err.strerror or err}"
                return

    def lost(self) -> Optional[str]:
        """Lost once the lease ran out before it was renewed (the holder was stopped or cut off for
        longer than the lease), or when the lock file is no longer this holder's claim."""
        if not self._claim:
            return None
        self._gone = self._gone or self._taken_away()
        return self._gone

    def _taken_away(self) -> Optional[str]:
        late = time.time() - self._expires
        if late >= 0:
            return f"its {self.lease:g} s lease ran out {late:.1f} s before it was renewed"
        try:
            if os.stat(self.name).st_ino == os.stat(self._claim).st_ino:
                return None
        except OSError:
            pass
        return "its lease was broken by another host"

    def _forget_claim(self) -> None:
        if self._claim:
            try:
                os.unlink(self._claim)
            except FileNotFoundError:
                pass
            self._claim = ""

    def break_if_expired(self) -> None:
        """Break a lease that expired (its holder died or was cut off): rename it away, which only one
        breaker can do, and put it back if it turns out to be fresh (another breaker won meanwhile)."""
        try:
            if os.stat(self.name).st_mtime + CLOCK_SLOP_S >= time.time():
                return
            broken = f"{self.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}.broken"
            os.rename(self.name, broken)
        except FileNotFoundError:
            return
        if os.stat(broken).st_mtime + CLOCK_SLOP_S >= time.time():  # not the expired lease: put it back
            try:
                os.link(broken, self.name)
            except FileExistsError:
                pass
        else:
            with open(broken) as f:
                lines = f.read().splitlines()
            if len(lines) > 1 and lines[1].startswith(self.name + "."):
                try:
                    os.unlink(lines[1])  # the dead holder's claim file
                except FileNotFoundError:
                    pass
        os.unlink(broken)


def _open(path: str, what: str) -> int:
    """Open (or create, mode 0o666 less the umask) a file smtlock writes, or say in one line why not."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except OSError as err:
        raise LockFileError(_cannot_open(path, what, err)) from None
    return fd


def _cannot_open(path: str, what: str, err: OSError) -> str:
    folder = os.path.dirname(path)
    try:
        st = os.stat(path)
    except OSError:  # the file does not exist and cannot be created here
        return f"cannot open {what} {path}: {err.strerror or err} (make {folder} writable)"
    owner = _user_name(st.st_uid)
    return (f"cannot open {what} {path}: {err.strerror or err}; it belongs to {owner} with mode "
            f"{st.st_mode & 0o777:o} (a project shared by a group needs `chmod -R g+w {folder}`, "
            "and `umask 002` for everyone who runs jobs in it)")


def replacement_mode(path: str) -> int:
    """The mode for a new file that replaces ``path``: the old file's mode, or 0o666 less the umask
    for a new one (what ``open(path, 'w')`` would give), so a group-writable project stays so."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return FILE_MODE & ~_umask()


def _umask() -> int:
    try:  # Linux >= 4.7 shows it without changing it (os.umask would, racing other threads)
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _user_name(uid: int) -> str:
    try:
        import pwd
        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


class PostgresBackend(LockBackend):
    """A transaction-scoped ``pg_try_advisory_xact_lock`` on the store's key, inside a transaction that
    stays open for the whole hold, on a connection of its own that is opened to wait and closed on
    release: a job holds no connection between writes.

    Nothing session-scoped: a transaction pooler (PgBouncer's transaction pooling) keeps one server
    connection for an open transaction, so the lock and the server-side keepalives (set for the
    transaction only) are where the transaction is, and end with it; the holder's name is the
    connection's startup application name, which a pooler keeps for the client. The lock dies with
    its holder: the server ends a transaction whose client went (keepalives bound that for a dead host),
    and a pooler closes the server connection of a client that vanished mid-transaction. Each try is a
    transaction of its own, rolled back when the lock is busy, so a waiter pins no pooled connection.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.key = advisory_key(uri)
        self.write_key = advisory_key(uri, "write")
        self.name = f"advisory lock {self.key} on {mask_uri(uri)}"
        self._conn: Any = None
        self.last_error: Optional[str] = None
        #: while held: a random key locked (shared) in the hold's transaction, which lives exactly as
        #: long as the hold: a write's transaction proves the hold is still this holder's by finding it
        self.token: Optional[int] = None
        self._using = threading.Lock()  # the connection, between the holder's thread and the watchdog
        self._same: dict = {}  # URI -> whether it names this lock's database

    def connect(self) -> bool:
        """Open the connection the lock is waited for on, if it is not open; False when the server
        has no free connection. A server that is not reachable raises :class:`ServerUnreachable`
        (SMTLock then waits for it holding nothing)."""
        if self._conn is None:
            # who waits (and then holds) is the connection's own application name, given at its start:
            # a pooler keeps it for the client, and nothing tracked changes inside the transaction
            self._conn = self._failing_over(lambda: _connect(self.uri, f"smtlock {Holder.me()}"[:63])) or None
        return self._conn is not None

    def try_acquire(self) -> bool:
        if not self.connect():
            return False

        def take() -> bool:
            import psycopg2
            with self._conn.cursor() as cur:
                try:
                    cur.execute("BEGIN; SELECT pg_try_advisory_xact_lock(%s)", (self.key,))
                except psycopg2.OperationalError:
                    if self._conn.closed and refuses_transactions(self.uri):  # else it is down
                        raise statement_pooling(self.uri) from None
                    raise
                if not cur.fetchone()[0]:
                    cur.execute("ROLLBACK")  # frees the pooled server connection for others
                    return False
                # for this transaction only: the server's keepalives, and no idle-in-transaction limit
                # of the server ending the hold while the block works between statements
                extra = {"idle_in_transaction_session_timeout": "0"}
                if self._conn.server_version >= 170000:
                    extra["transaction_timeout"] = "0"
                settings, params = local_settings(extra)
                # The fence, in the same round trip: the hold's token, and a barrier on the store's
                # write lock (taken and let go at once), so that a write a former holder began before
                # it lost the lock has ended before this hold begins; every write after it checks the
                # token of its own holder inside its transaction (held_check) and finds it gone.
                token = secrets.randbits(63)
                cur.execute(f"SELECT {settings}, pg_advisory_xact_lock_shared(%s); SELECT pg_advisory_lock(%s); "
                            "SELECT pg_advisory_unlock(%s)", [*params, token, self.write_key, self.write_key])
                self.token = token
            return True
        with self._using:
            return bool(self._failing_over(take))

    def _failing_over(self, step: Any) -> Any:
        """Run ``step``; a server with no free connection makes it False (wait on), one that is down
        or went away :class:`ServerUnreachable`, and any other refusal (a wrong password) a
        :class:`StoreError` at once: waiting would not help."""
        import psycopg2
        try:
            return step()
        except psycopg2.Error as err:
            self.last_error = str(err).splitlines()[0] if str(err) else type(err).__name__
            self._close()
            trouble = connection_trouble(err)
            if trouble == "busy":
                return False
            if trouble == "down":
                raise ServerUnreachable(mask_uri(self.uri), _reason(err)) from None
            connect(self.uri).close()  # refused: raises the one line that says what is wrong
            return False  # it connects now (the refusal has passed): wait on, as when busy

    def release(self) -> Optional[str]:
        """The ``ROLLBACK`` that ends the hold's transaction (it wrote nothing; its end frees the lock)
        also proves the hold lived to the end: it fails on a connection that died (directly, or a
        pooler that lost the server connection closes its client), and the server warns when there
        was no transaction left to end."""
        import psycopg2
        with self._using:
            held, self.token = self.token, None
            if self._conn is None:  # the connection broke and was closed
                return "its connection to the server was closed" if held is not None else None
            try:
                del self._conn.notices[:]
                with self._conn.cursor() as cur:
                    cur.execute("ROLLBACK")
                if any("no transaction in progress" in notice for notice in self._conn.notices):
                    return "the server had ended the transaction that held it"
                return None
            except psycopg2.Error as err:  # the server ended the transaction, and the lock
                return f"its connection to the server broke: {_reason(err)}"
            finally:
                self._close()

    def same_database(self, uri: str) -> bool:
        """Whether ``uri`` names this lock's database on the same server (as written: one server
        reached by two names counts as two, and a write there is not fenced by this hold)."""
        if uri not in self._same:  # asked at every write: parsed once per URI
            def where(text: str) -> tuple:
                kwargs = connect_kwargs(text)
                return kwargs["host"], kwargs["port"], kwargs["dbname"]
            try:
                self._same[uri] = where(uri) == where(self.uri)
            except (StoreError, SettingError):
                self._same[uri] = False
        return self._same[uri]

    def lost(self) -> Optional[str]:
        """Lost once the hold's connection has anything to read: nothing comes on it while a hold is
        idle but the server's or pooler's goodbye (a restart, a crash) or the kernel's report that the
        peer is gone (the client keepalives: about 5 s after a cut). Never blocks."""
        import psycopg2
        if not self._using.acquire(blocking=False):
            return None  # the holder's thread is using it
        try:
            if self.token is None or self._conn is None:
                return None
            try:
                readable, _, _ = select.select([self._conn.fileno()], [], [], 0)
                if readable:
                    self._conn.poll()  # reads what came: raises if it says the connection ended
                if self._conn.closed:
                    return "its connection to the server closed"
            except (psycopg2.Error, OSError, ValueError) as err:
                return f"its connection to the server broke: {_reason(err)}"
            return None
        finally:
            self._using.release()

    def abandon(self) -> None:
        # A forked child drops the inherited connection without closing it: psycopg2 closes a
        # connection only in the process that opened it, so the parent's session (and the lock it
        # holds) lives on; close() here would end that session on the server.
        self._conn, self.token = None, None
        self._using = threading.Lock()

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def holder(self) -> Optional[str]:
        """The holder's application name (``smtlock pid N on HOST since T``) from pg_locks."""
        query = ("SELECT a.application_name, a.client_addr FROM pg_locks l JOIN pg_stat_activity a "
                 "USING (pid) WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                 "AND l.classid = %s AND l.objid = %s")
        unsigned = self.key & 0xFFFFFFFFFFFFFFFF
        try:
            conn = connect(self.uri, application_name="smtlock holder query")
            try:
                with conn.cursor() as cur:
                    cur.execute(query, (unsigned >> 32, unsigned & 0xFFFFFFFF))
                    row = cur.fetchone()
            finally:
                conn.close()
        except Exception:
            return self.last_error and f"unknown ({self.last_error})"
        if row is None:
            return self.last_error and f"unknown ({self.last_error})"
        name, addr = row
        return f"{name.removeprefix('smtlock ')}" + (f" (client {addr})" if addr else "")


def held_check(token: int) -> str:
    """A query, run in another transaction than the hold's, whose one value is true while the hold
    that took ``token`` (its fence key, :attr:`PostgresBackend.token`, held shared) lives: an exclusive
    try on the key fails exactly then. When the hold is gone the try takes the key, until the asking
    transaction ends; nobody else ever asks for it. A function call: no catalog view to read, which a
    write's fresh connection would pay for."""
    return f"SELECT NOT pg_try_advisory_xact_lock({int(token)})"


#: what a server that cannot take one more client says; it is up: wait for a free connection
_BUSY = ("too many clients", "remaining connection slots are reserved")
#: what a server (or a pooler) says when waiting cannot help: a wrong or missing password, no such role
#: or database, a TLS check (sslmode=verify-*) that failed
_REFUSED = ("password", "authentication", "does not exist", "pg_hba.conf", "permission denied",
            "no such database", "unsupported startup parameter",  # these two: PgBouncer's
            "certificate", "does not support ssl")


def connection_trouble(error: BaseException) -> str:
    """What a failed PostgreSQL connection (or a query on a connection that broke) says of the
    server: "busy" (no free connection), "refused" (the login: waiting will not help) or "down" (not
    running, restarting, unreachable, or gone mid-query: wait for it)."""
    text = str(error.__cause__ if error.__cause__ is not None else error).lower()
    if any(marker in text for marker in _BUSY):
        return "busy"
    if any(marker in text for marker in _REFUSED):
        return "refused"
    return "down"


def _reason(error: BaseException) -> str:
    """The part of a connection error that says why, in one line ("Connection refused")."""
    text = str(error.__cause__ if error.__cause__ is not None else error).strip()
    line = text.splitlines()[0].split(" failed: ")[-1] if text else type(error).__name__
    return mask_uri(line.replace("FATAL:", "").strip())


def _connect(uri: str, application_name: str, timeout: Optional[int] = None) -> Any:
    """A psycopg2 connection (autocommit) with smtlock's settings; psycopg2's own error if not."""
    import psycopg2
    kwargs = connect_kwargs(uri)
    if timeout is not None:
        kwargs["connect_timeout"] = max(2, timeout)  # libpq waits at least 2 s
    conn = psycopg2.connect(application_name=application_name, **kwargs)
    conn.autocommit = True
    return conn


def probe(uri: str, timeout: int = 2) -> Optional[str]:
    """Whether the PostgreSQL server at ``uri`` accepts a connection now: None when it does, else why
    not ("Connection refused", "too many clients already"). A login it refuses raises StoreError."""
    import psycopg2
    try:
        _connect(uri, "smtlock probe", timeout).close()
    except psycopg2.Error as err:
        if connection_trouble(err) == "refused":
            connect(uri).close()  # raises the one line that says what is wrong with the login
        return _reason(err)
    return None
