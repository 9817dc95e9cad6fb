"""PostgreSQL record stores: URIs, connections with keepalives and clear errors, advisory-lock keys,
and creating or dropping a store's database.

A URI has Sumatra's form ``postgres://user:password@host:port/dbname``; its password never appears in
anything smtlock prints (:func:`mask_uri`).
"""

from __future__ import annotations

import getpass
import hashlib
import re
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import StoreError
from . import pgpass

__all__ = ["is_postgres", "mask_uri", "check_uri", "without_password", "keep_password_apart", "LIBPQ_PARAMETERS",
           "libpq_options", "connect_kwargs",
           "connect", "check_server", "advisory_key", "create_database", "drop_database", "KEEPALIVES",
           "SERVER_KEEPALIVES", "CONNECT_TIMEOUT_S", "local_settings", "database_exists", "check_transactions",
           "refuses_transactions", "statement_pooling"]

#: TCP keepalives: on the client's side for every connection (a dead server is noticed), and on the
#: server's side for each transaction that holds a lock (:func:`local_settings`, set inside it: a client
#: host that vanished with no FIN or RST is noticed and its locks released): idle 2 s, then 3 probes 1 s
#: apart, and no data left unacknowledged for more than 5 s (tcp_user_timeout, PostgreSQL >= 12). Not in
#: the startup packet (``options``): poolers refuse it (PgBouncer 1.18: "unsupported startup parameter").
SERVER_KEEPALIVES = {"tcp_keepalives_idle": 2, "tcp_keepalives_interval": 1, "tcp_keepalives_count": 3,
                     "tcp_user_timeout": 5000}
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 2, "keepalives_interval": 1, "keepalives_count": 3}
CONNECT_TIMEOUT_S = 10


def local_settings(extra: Optional[Dict[str, str]] = None) -> Tuple[str, List[str]]:
    """A SELECT list and its parameters that set :data:`SERVER_KEEPALIVES` (and ``extra``) for the current
    transaction only (``set_config(..., true)``): nothing outlives the transaction, so nothing is left on
    a server connection that a pooler hands to another client next."""
    settings = {**{name: str(value) for name, value in SERVER_KEEPALIVES.items()}, **(extra or {})}
    params = [item for pair in settings.items() for item in pair]
    return ", ".join(["set_config(%s, %s, true)"] * len(settings)), params


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


def without_password(uri: str) -> str:
    """The URI with no password in it (libpq then finds the password in its password file)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}").geturl()


def keep_password_apart(uri: str) -> Tuple[str, Optional[str]]:
    """The URI without its password, which goes to libpq's password file (0600) so that no project
    file holds it, as the one libpq takes for this server and user; also a line saying so, when the
    file changed."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    # The host as libpq is given it (Sumatra's Django settings and connect_kwargs: urlsplit's
    # hostname, lower case); any database: `smtlock postgres` also connects to the maintenance one.
    changed = pgpass.remember(parts.hostname or "localhost", parts.port or 5432, "*",
                              unquote(parts.username or getpass.getuser()), unquote(parts.password))
    where = pgpass.password_file()
    line = (f"the password of {mask_uri(uri)} is kept in {where} (readable by you only), not in the "
            "project's files") if changed else None
    return without_password(uri), line


#: what a URI's query may set for libpq (``?sslmode=verify-full&sslrootcert=/path/ca.crt``)
LIBPQ_PARAMETERS = frozenset({"sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir", "sslsni",
                              "sslpassword", "ssl_min_protocol_version", "ssl_max_protocol_version",
                              "requiressl", "gssencmode", "channel_binding", "target_session_attrs"})


def libpq_options(uri: str) -> Dict[str, str]:
    """The TLS (and other connection) settings in a URI's query, as libpq takes them. Sumatra drops
    the query when it makes Django's settings, so ``sslmode=verify-full`` was silently libpq's
    default ``prefer``: a server was never checked, and one without TLS was used in clear text."""
    return {name: value for name, value in parse_qsl(urlsplit(uri).query) if name in LIBPQ_PARAMETERS}


def connect_kwargs(uri: str, dbname: Optional[str] = None) -> Dict[str, Any]:
    """psycopg2 keyword arguments for a URI (optionally another database on the same server)."""
    parts = urlsplit(check_uri(uri))
    kwargs: Dict[str, Any] = {"dbname": dbname or parts.path.lstrip("/"), "host": parts.hostname,
                              "port": parts.port or 5432, "connect_timeout": CONNECT_TIMEOUT_S,
                              **KEEPALIVES, **libpq_options(uri)}
    if parts.username:
        kwargs["user"] = unquote(parts.username)
    if parts.password is not None:
        kwargs["password"] = unquote(parts.password)
    return kwargs


def _explain(err: Exception, uri: str) -> StoreError:
    """One line that says what went wrong with the server at ``uri`` and what to do next: the server (or
    the pooler in front of it) cannot be reached, has no such database, refused the login, or is full."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    said = text.split("FATAL:")[-1].strip()
    where, db, user = mask_uri(uri), urlsplit(uri).path.lstrip("/"), _user(uri)
    if "no password supplied" in text:
        return StoreError(f"PostgreSQL at {where} asks for a password and none was found: put it in "
                          f"{pgpass.password_file()} (mode 0600; `smtlock postgres postgres://USER:PASSWORD@...` "
                          "does it) or in the URL")
    if "authentication failed" in text or ("role" in text and "does not exist" in text):
        return StoreError(f"PostgreSQL at {where} refused the login of role {user}: {said} "
                          "(check the user name and password)")
    if ("does not exist" in text and "database" in text) or "no such database" in text:
        return StoreError(f"database {db!r} does not exist at {where} (create it, let `smtlock postgres URL` "
                          f"create it, or ask your administrator to create database {db} for role {user})")
    if "permission denied for database" in text or "CONNECT privilege" in text:
        return StoreError(f"role {user} may not connect to database {db!r} at {where}: {said} (ask your "
                          f"administrator: GRANT CONNECT ON DATABASE {db} TO {user})")
    if "too many clients" in text:
        return StoreError(f"PostgreSQL at {where} has no free connection: {said} "
                          "(raise max_connections or run fewer jobs at once)")
    if "certificate" in text or "SSL" in text:
        return StoreError(f"PostgreSQL at {where} failed the TLS check: {text.split('failed:')[-1].strip()} "
                          "(check sslmode and sslrootcert in the URL, and the server's certificate)")
    return StoreError(f"cannot reach PostgreSQL at {where}: {text.split('failed:')[-1].strip()} "
                      "(check the host, the port and that the server is running)")


def _user(uri: str) -> str:
    return unquote(urlsplit(uri).username or getpass.getuser())


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


def database_exists(uri: str) -> bool:
    """Whether the URI's database can be connected to; False when the server (or a pooler) says there
    is no such database; any other failure raises its one line (:func:`_explain`)."""
    try:
        connect(uri).close()
    except StoreError as err:
        if str(err).startswith(f"database {urlsplit(uri).path.lstrip('/')!r} does not exist"):
            return False
        raise
    return True


def create_database(uri: str) -> bool:
    """Create the URI's database if it does not exist; True when it was created. A database that exists
    is used as it is (a site's administrator made it): only a missing one needs the server's `postgres`
    maintenance database and CREATEDB, which a role given one database, or a pooler, may not offer."""
    import psycopg2
    from psycopg2 import sql
    if database_exists(uri):
        return False
    dbname, user, where = urlsplit(uri).path.lstrip("/"), _user(uri), mask_uri(uri)
    ask = (f"ask your administrator to create database {dbname} for role {user} (CREATE DATABASE {dbname} "
           "OWNER {user}), or give the URL of a database you were given").replace("{user}", user)
    try:
        conn = psycopg2.connect(application_name="smtlock", **connect_kwargs(uri, "postgres"))
    except psycopg2.Error as err:
        why = _reason_of(err)
        raise StoreError(f"database {dbname!r} does not exist at {where}, and it cannot be created from here (the "
                         f"server's postgres database is not reachable: {why}): {ask}") from None
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg2.errors.DuplicateDatabase:
                return False  # made meanwhile by another
            except psycopg2.errors.InsufficientPrivilege:
                raise StoreError(f"role {user!r} may not create database {dbname!r} at {where} (permission "
                                 f"denied to create): {ask}") from None
            return True
    finally:
        conn.close()


def _reason_of(err: BaseException) -> str:
    text = str(err).strip()
    return mask_uri(text.splitlines()[0].split(" failed: ")[-1].replace("FATAL:", "").strip()) if text else \
        type(err).__name__


def refuses_transactions(uri: str) -> bool:
    """Whether the server at ``uri`` closes a connection at its first BEGIN while a statement outside a
    transaction works: a pooler in statement pooling mode (PgBouncer), where no lock can be held across
    statements and no record written in one transaction. A failed connection raises psycopg2's error."""
    import psycopg2
    conn = psycopg2.connect(application_name="smtlock pooling check", **connect_kwargs(uri))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            try:
                cur.execute("BEGIN; SELECT 1")
                cur.execute("ROLLBACK")
            except psycopg2.OperationalError:
                if conn.closed:
                    return True
                raise
    finally:
        conn.close()
    return False


def statement_pooling(uri: str) -> StoreError:
    """The one line for a store behind a statement pooler."""
    return StoreError(f"{mask_uri(uri)} is behind a pooler in statement pooling mode (it closes the connection at "
                      "the first BEGIN), where no lock and no transaction can be kept: use the pooler's session or "
                      "transaction pooling (another port or database entry; ask its administrator)")


def check_transactions(uri: str) -> None:
    """Raise :func:`statement_pooling`'s line when the server at ``uri`` cannot keep a transaction open,
    and a connection failure's one line (:func:`connect`)."""
    import psycopg2
    try:
        refused = refuses_transactions(uri)
    except psycopg2.Error as err:
        raise _explain(err, uri) from None
    if refused:
        raise statement_pooling(uri)


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
