"""PostgreSQL record stores: connections with keepalives and clear errors, the advisory-lock
backend that serializes writers on different hosts, and ``smtlock postgres`` (move a project).

A URI has Sumatra's form ``postgres://user:password@host:port/dbname``; its password never appears in
anything smtlock prints (:func:`mask_uri`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, List, Optional
from urllib.parse import unquote, urlsplit

from .backends import LockBackend, holder_description
from .errors import StoreError

__all__ = ["is_postgres", "mask_uri", "check_uri", "connect_kwargs", "connect", "check_server", "advisory_key",
           "PostgresBackend", "create_database", "drop_database", "move_project", "KEEPALIVES",
           "SERVER_KEEPALIVES"]

#: TCP keepalives for every connection (client side, and the server's side via SET): a host that
#: dies while holding the advisory lock is noticed in about idle + interval * count = 60 s.
#: TCP keepalives for every connection, on the client's side (a dead server is noticed) and, through
#: ``options``, on the server's (a client host that vanished, with no FIN or RST, is noticed, and the
#: locks its sessions held are released): idle 2 s, then 3 probes 1 s apart, and no data left
#: unacknowledged for more than 5 s (tcp_user_timeout, PostgreSQL >= 12).
SERVER_KEEPALIVES = {"tcp_keepalives_idle": 2, "tcp_keepalives_interval": 1, "tcp_keepalives_count": 3,
                     "tcp_user_timeout": 5000}
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3,
              "options": " ".join(f"-c {name}={value}" for name, value in SERVER_KEEPALIVES.items())}
CONNECT_TIMEOUT_S = 10


def is_postgres(uri: Any) -> bool:
    return isinstance(uri, str) and uri.startswith(("postgres://", "postgresql://"))


def mask_uri(text: str) -> str:
    """A URI, or any text with URIs in it, with every password replaced by ``***``; also where the
    scheme is missing (``user:password@host/db``), and up to the last ``@`` of a word."""
    return _PASSWORD.sub(r"\1***@", text)


_PASSWORD = re.compile(r"((?:[A-Za-z][A-Za-z0-9+.-]*://)?[^\s:/@'\"]+:)(?!//)\S*@")


def check_uri(uri: str) -> str:
    """The URI if it is a usable PostgreSQL URI; otherwise one line (password masked) saying what is
    wrong with it."""
    form = "postgres://user:password@host:port/dbname"
    if not is_postgres(uri):
        raise StoreError(f"not a PostgreSQL URI: {mask_uri(uri)} (use {form})")
    try:
        parts = urlsplit(uri)
    except ValueError as err:  # a malformed IPv6 host
        raise StoreError(f"malformed host in {mask_uri(uri)}: {err} (use {form})") from None
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise StoreError(f"bad port in {mask_uri(uri)}: a port is a number from 1 to 65535 (use {form})")
    if not parts.hostname:
        raise StoreError(f"no host in {mask_uri(uri)} (use {form})")
    if not parts.path.lstrip("/"):
        raise StoreError(f"no database name in {mask_uri(uri)} (use {form})")
    return uri


def connect_kwargs(uri: str, dbname: Optional[str] = None) -> Dict[str, Any]:
    """psycopg2 keyword arguments for a URI (optionally another database on the same server)."""
    parts = urlsplit(check_uri(uri))
    kwargs: Dict[str, Any] = {"dbname": dbname or parts.path.lstrip("/"), "host": parts.hostname,
                              "port": parts.port or 5432, "connect_timeout": CONNECT_TIMEOUT_S,
                              **KEEPALIVES}
    if parts.username:
        kwargs["user"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    return kwargs


def _explain(err: Exception, uri: str) -> StoreError:
    """One line that says what went wrong with the server at ``uri`` and what to check."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    where = mask_uri(uri)
    if "password authentication failed" in text or "no password supplied" in text:
        return StoreError(f"PostgreSQL at {where} refused the login: {text.split('FATAL:')[-1].strip()} "
                          "(check the user name and password)")
    if "does not exist" in text and "database" in text:
        return StoreError(f"database {urlsplit(uri).path.lstrip('/')!r} does not exist at {where} "
                          "(create it, or let `smtlock postgres URL` create it)")
    if "too many clients" in text:
        return StoreError(f"PostgreSQL at {where} has no free connection: {text.split('FATAL:')[-1].strip()} "
                          "(raise max_connections or run fewer jobs at once)")
    return StoreError(f"cannot reach PostgreSQL at {where}: {text.split('failed:')[-1].strip()} "
                      "(check the host, the port and that the server is running)")


def connect(uri: str, dbname: Optional[str] = None, application_name: str = "smtlock") -> Any:
    """A psycopg2 connection (autocommit) or a :class:`StoreError` with the masked URI."""
    import psycopg2
    try:
        conn = psycopg2.connect(application_name=application_name[:63], **connect_kwargs(uri, dbname))
    except psycopg2.Error as err:
        raise _explain(err, uri) from None
    conn.autocommit = True
    return conn


def check_server(uri: str, must_exist: bool = True) -> None:
    """Connect once to the store's database (or only the server); raise one clear line if it fails."""
    try:
        connect(uri).close()
    except StoreError as err:
        if must_exist or "does not exist" not in str(err):
            raise


def advisory_key(uri: str, purpose: str = "") -> int:
    """The 64-bit advisory lock key of a store: its database name (and ``purpose``: the write lock
    taken inside each write's transaction has a key of its own), hashed with SHA-256.

    Advisory locks belong to one server, so the key names the database only, not the address it is
    reached by: jobs on different hosts may name one server differently (an IP address, a host name).
    Every project in one database shares the key: Sumatra's tables of executables, repositories,
    parameter sets... are shared by the projects of a database, and their get_or_create races too.
    """
    ident = f"smtlock:{urlsplit(uri).path.lstrip('/')}"
    if purpose:
        ident += f":{purpose}"
    return int.from_bytes(hashlib.sha256(ident.encode()).digest()[:8], "big", signed=True)


class PostgresBackend(LockBackend):
    """A session-level ``pg_advisory_lock`` on the store's key, on a connection of its own that is
    opened to wait and closed on release: a job holds no connection between writes, and the server
    frees the lock when a holder's connection dies (keepalives bound that for a dead host)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.key = advisory_key(uri)
        self.name = f"advisory lock {self.key} on {mask_uri(uri)}"
        self._conn: Any = None
        self.last_error: Optional[str] = None

    def try_acquire(self) -> bool:
        import psycopg2
        try:
            if self._conn is None:
                self._conn = connect(self.uri, application_name="smtlock waiting")
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (self.key,))
                if not cur.fetchone()[0]:
                    return False
                cur.execute("SELECT set_config('application_name', %s, false)",
                            ("smtlock " + holder_description(),))
            return True
        except (StoreError, psycopg2.Error) as err:  # no free connection, server restarting: wait on
            self.last_error = str(err).splitlines()[0]
            self._close()
            return False

    def release(self) -> None:
        import psycopg2
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (self.key,))
        except psycopg2.Error:
            pass  # the connection died (a server restart): the server released the lock with it
        finally:
            self._close()

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


def create_database(uri: str) -> bool:
    """Create the URI's database if it does not exist; True when it was created."""
    import psycopg2
    from psycopg2 import sql
    dbname = urlsplit(uri).path.lstrip("/")
    conn = connect(uri, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone():
                return False
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg2.errors.InsufficientPrivilege:
                user = urlsplit(uri).username
                raise StoreError(f"role {user!r} may not create database {dbname!r} at {mask_uri(uri)} "
                                 f"(ask an administrator: CREATE DATABASE {dbname} OWNER {user})") from None
            return True
    finally:
        conn.close()


def drop_database(uri: str) -> None:
    """Drop the URI's database (used for the harness's throwaway databases)."""
    from psycopg2 import sql
    conn = connect(uri, dbname="postgres")
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(
                sql.Identifier(urlsplit(uri).path.lstrip("/"))))
    finally:
        conn.close()


def move_project(path: str, uri: str, dry_run: bool = False) -> List[str]:
    """Switch a project's record store to PostgreSQL, copying and verifying its records; the old store
    is left as it was (a backup). Returns what was done (or would be), a line each."""
    from sumatra.recordstore.django_store import DjangoRecordStore
    from .lock import SMTLock
    from .project import load
    check_uri(uri)
    project = load(path)
    old = project.record_store
    where = mask_uri(uri)
    if getattr(old, "_db_file", None) == uri:
        return [f"{project.name} already uses {where} (nothing to do)"]
    check_server(uri, must_exist=False)
    if dry_run:
        labels = old.labels(project.name) if old.has_project(project.name) else []
        return [f"would create database {urlsplit(uri).path.lstrip('/')!r} at {where} if missing",
                f"would copy {len(labels)} records of project {project.name} from {describe_store(old)}",
                f"would switch the project to {where}, keeping {describe_store(old)} as a backup"]
    lines = []
    if create_database(uri):
        lines.append(f"created database {urlsplit(uri).path.lstrip('/')!r} at {where}")
    new = DjangoRecordStore(uri)  # before the old store is used: Django is configured only once
    with SMTLock(project):
        labels = old.labels(project.name) if old.has_project(project.name) else []
        present = set(new.labels(project.name)) if new.has_project(project.name) else set()
        for label in labels:
            if label not in present:
                new.save(project.name, old.get(project.name, label))
        copied = set(new.labels(project.name))
        missing = set(labels) - copied
        if missing:
            raise StoreError(f"{len(missing)} records did not arrive in {where} "
                             "(the project still uses its old store)")
        lines.append(f"copied {len(labels) - len(present & set(labels))} records of project "
                     f"{project.name}; verified: {len(labels)} in the old store, all {len(labels)} in {where}")
        project.record_store = new
        project.save()
    lines.append(f"project {project.name} now uses {where}; {describe_store(old)} is kept untouched "
                 "as a backup")
    return lines


def describe_store(store: Any) -> str:
    """A store in words, with any password masked."""
    db_file = getattr(store, "_db_file", None) or getattr(store, "_shelf_name", None)
    kind = "Django" if hasattr(store, "_db_file") else type(store).__name__
    return f"{kind} store {mask_uri(str(db_file))}" if db_file else kind


