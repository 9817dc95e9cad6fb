"""Sumatra's Django record store made safe: one transaction per save (on PostgreSQL with the
store's write lock inside it), retries of a broken connection, no connection held between calls on
PostgreSQL, the SQLite journal, migrations only when needed and under the lock, connections never
carried across a fork."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sqlite3
import sys
import threading
import time
from contextvars import ContextVar
from typing import AbstractSet, Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple
from urllib.parse import quote, urlencode, urlsplit

from .._lock.backends import connection_trouble, held_check
from .._lock.filesystem import is_shared
from .._lock.hostclaim import one_host
from .._lock.lock import current_hold, in_before_store, server_wait, store_lock, wait_for_server
from .._lock.paths import postgres_uri, project_root
from .._postgres import client as postgres
from ..errors import LockLost
from . import edits, indexes, rows, uniques
from .upstream import original

try:  # Sumatra's django_store module imports without Django; its store needs it
    import django  # noqa: F401
    from sumatra.recordstore.django_store import DjangoConfiguration, DjangoRecordStore
except ImportError:  # Django is optional for Sumatra and for us
    DjangoConfiguration = DjangoRecordStore = None

__all__ = ["SQLITE_BUSY_TIMEOUT_S", "READ_WAIT_S", "ENDED_FIELDS", "is_django", "transaction", "save",
           "only_changed", "changed_only", "save_changed", "fenced_transaction", "fence",
           "without_stale_rows", "retrying", "fenced_commit", "own_hold", "again_if_lost",
           "labels", "uri_to_db", "tune_registered_databases", "connecting", "reading",
           "close", "deleting", "hygiene", "sqlite_pragmas", "create_databases", "before_fork", "after_fork_in_child"]

SQLITE_BUSY_TIMEOUT_S = 60.0  # how long an SQLite connection waits for another writer, not fail
#: how long a process that has only read (``smt list``, smtweb, ``smtlock doctor``) waits for a
#: PostgreSQL server that is down; a job waits :data:`smtlock._lock.lock.SERVER_WAIT_S`
READ_WAIT_S = 5.0


def is_django(store: Any) -> bool:
    """Whether ``store`` is Sumatra's Django record store (never, without Django)."""
    return DjangoRecordStore is not None and isinstance(store, DjangoRecordStore)


def transaction(store: Any, steps: Callable[[], Any], undo: Callable[[], None]) -> None:
    """Run ``steps`` (a record write: claim, save) in one transaction of ``store``, fenced
    (:func:`fenced_transaction`). When the connection broke, or a
    remembered row was merged away (:mod:`smtlock._sumatra.rows`), ``undo`` what ``steps`` changed in memory and
    run it again, whole: a retry cannot write twice. Upstream's save is ~16 autocommitted queries and
    nothing retries them."""
    from django.db import connections

    def attempt() -> None:
        connection = connections[store._db_label]
        fenced_commit()  # a hold known lost writes nothing (nor waits for a server it cannot reach)
        with rows.one_write(), fenced_transaction(store._db_label, postgres_uri(store)), _no_savepoints(connection):
            steps()
    without_stale_rows(lambda: retrying(attempt, store, undo), store, undo)


@contextlib.contextmanager
def _no_savepoints(connection: Any) -> Iterator[None]:
    """Inside one write, Django makes no savepoints. Upstream's get_or_create calls each wrap their
    INSERT in one (a SAVEPOINT and a RELEASE: on PostgreSQL, two more round trips under the lock) so
    that an INSERT that lost a race can be undone alone; under the lock no writer races, and a
    statement that fails fails the whole write, which is undone whole. ``savepoint()`` returning
    None is what Django's atomic blocks do where savepoints are not supported."""
    if "savepoint" in vars(connection):  # inside another write's
        yield
        return
    connection.savepoint = lambda: None
    try:
        yield
    finally:
        del connection.savepoint


_LABELS_SQL: Dict[str, Tuple[str, Tuple[str, ...]]] = {}  # database label -> (SQL, its parameters' names)
_ABOVE = "\U0010ffff"  # the highest character: a label that starts with a prefix sorts below prefix + it


def labels_starting(store: Any, project_name: str, prefix: str) -> Set[str]:
    """The labels of the project's records that start with ``prefix``, in one query that Django
    compiles once per process (compiling a query costs more than running it on SQLite) and that the
    store's label index answers (:data:`smtlock._sumatra.indexes.LABEL_INDEX`): on PostgreSQL with LIKE
    itself, on SQLite, whose LIKE ignores case and so cannot use an index, as a range of labels."""
    from django.db import connections
    connection = connections[store._db_label]
    compiled = _LABELS_SQL.get(store._db_label) or _compile_labels_query(store, connection)
    if compiled is None:  # a Django whose query is not as expected: compile it each time
        return set(_labels_query(store, connection, project_name, prefix).values_list("label", flat=True))
    sql, names = compiled
    values = {"project": project_name, "pattern": connection.ops.prep_for_like_query(prefix) + "%",
              "prefix": prefix, "above": prefix + _ABOVE}
    with connection.cursor() as cursor:
        cursor.execute(sql, [values[name] for name in names])
        return {row[0] for row in cursor.fetchall()}


def labels(self: Any, project_name: str, tags: Any = None, *args: Any, **kwargs: Any) -> List[str]:
    """``DjangoRecordStore.labels``: the same records in the same order (upstream's filters: the
    project, ``args``/``kwargs``, each tag), read as the label column alone. Upstream builds a full
    model object with every related row (``select_related()``) for each record to read its label:
    ``smt list`` and the end of every ``smt run`` (``.smt/labels``) took 10 s at 100,000 records."""
    records = self._manager.filter(*args, project__id=project_name, **kwargs)
    if tags:
        for tag in tags if hasattr(tags, "__len__") else [tags]:
            records = records.filter(tags__contains=tag)
    return list(records.values_list("label", flat=True))


def _labels_query(store: Any, connection: Any, project_name: str, prefix: str) -> Any:
    query = store._manager.filter(project__id=project_name, label__startswith=prefix).order_by()
    if connection.vendor == "sqlite":  # SQLite compares text byte by byte (BINARY): an exact range
        query = query.filter(label__gte=prefix, label__lt=prefix + _ABOVE)
    return query


def _compile_labels_query(store: Any, connection: Any) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """Compile :func:`labels_starting`'s query for example values; keep it when its parameters are
    exactly the example's values (so that new values can replace them)."""
    project, prefix = "smtlock-example-project", "smtlock%example_label"
    expected = {project: "project", connection.ops.prep_for_like_query(prefix) + "%": "pattern"}
    if connection.vendor == "sqlite":
        expected.update({prefix: "prefix", prefix + _ABOVE: "above"})
    query = _labels_query(store, connection, project, prefix).values_list("label", flat=True)
    sql, params = query.query.get_compiler(using=store._db_label).as_sql()
    if len(params) != len(expected) or set(params) != set(expected):
        return None
    _LABELS_SQL[store._db_label] = (sql, tuple(expected[param] for param in params))
    return _LABELS_SQL[store._db_label]


def save(self: Any, project_name: str, record: Any) -> None:
    """``DjangoRecordStore.save`` in one transaction.

    Upstream issues ~16 autocommitted queries: a failure half-way leaves a half-written record, and
    each commit costs a journal sync.
    """
    from django.db import connections
    self._get_models()  # configures Django (and migrates) before a transaction can be opened

    def write() -> None:
        with rows.one_write(), fenced_transaction(self._db_label, postgres_uri(self)), rows.links_batched():
            _save_record(self, project_name, record)
    if rows.in_one_write():  # inside transaction(): it holds the write lock and retries
        with rows.links_batched():
            _save_record(self, project_name, record)
    elif connections[self._db_label].in_atomic_block:  # in a caller's transaction: it retries
        write()
    else:  # called by itself (smt sync, smtlock postgres, smt tag)
        without_stale_rows(lambda: again_if_lost(write, lambda: None, current_hold()), self, lambda: None)


#: what may change alone in a record's later save (its run ended: status tag, duration, output, outcome;
#: a reason or a comment): the columns :func:`save_changed` sets
ENDED_FIELDS = frozenset({"tags", "duration", "stdout_stderr", "outcome", "reason"})
_changed: ContextVar[Optional[FrozenSet[str]]] = ContextVar("smtlock_changed", default=None)


@contextlib.contextmanager
def only_changed(fields: Optional[AbstractSet[str]]) -> Iterator[None]:
    """Inside, a store's save of a record knows that only ``fields`` of it changed since this process
    stored it (None: not known, or not only :data:`ENDED_FIELDS`): :func:`save_changed` writes it."""
    token = _changed.set(frozenset(fields) if fields is not None and fields <= ENDED_FIELDS else None)
    try:
        yield
    finally:
        _changed.reset(token)


def changed_only() -> bool:
    """Whether the current save is of a record of which only :data:`ENDED_FIELDS` changed (see
    :func:`only_changed`): :func:`save_changed` looks up no related row."""
    return _changed.get() is not None


def _save_record(store: Any, project_name: str, record: Any) -> None:
    if not changed_only() or not save_changed(store, project_name, record):
        original("DjangoRecordStore.save")(store, project_name, record)


def save_changed(store: Any, project_name: str, record: Any) -> bool:
    """Upstream's save of a record stored before, when only :data:`ENDED_FIELDS` changed since this
    process stored it: the columns upstream's save sets from them, to the same values (``reason``,
    ``duration`` and ``outcome`` unless None; ``tags``; ``stdout_stderr``) in one UPDATE, and the tag
    links as upstream's save leaves them, after a person's edits are merged in (:mod:`edits`).

    Upstream rebuilds the whole row (a full SELECT, every related row looked up again, two UPDATEs of
    every column, each dependency link added again): two thirds of an ended write, held under the
    lock. Every other column and link would be written with what the store holds already; a column
    someone else changed meanwhile (``smt repeat`` sets ``repeats``) is kept, where upstream would
    overwrite it. False, having written nothing, when the row is not there exactly once (deleted while
    the job ran: upstream's save stores it again)."""
    from django.db import connections
    from sumatra.recordstore.django_store.tagging_utils import parse_tag_input
    models = store._get_models()
    connection = connections[store._db_label]
    meta, quote = models.Record._meta, connection.ops.quote_name

    def column(name: str) -> str:
        return quote(meta.get_field(name).column)
    with connection.cursor() as cursor:  # SQL of its own: Django's query building cost more than the query
        cursor.execute(f"SELECT {column('db_id')}, {column('tags')}, {column('outcome')}, {column('reason')} "
                       f"FROM {quote(meta.db_table)} WHERE {column('project')} = %s AND {column('label')} = %s",
                       [project_name, record.label])
        found = cursor.fetchmany(2)
        if len(found) != 1:
            return False
        db_id, tags, outcome, reason = found[0]
        edits.merge(record, edits.Edits(frozenset(parse_tag_input(tags)), outcome, reason))
        columns = {name: getattr(record, name) for name in ("reason", "duration", "outcome")
                   if getattr(record, name) is not None}
        columns.update(tags=",".join(record.tags), stdout_stderr=record.stdout_stderr)
        names = list(columns)  # each value as the ORM's UPDATE would give it to the database
        values = [meta.get_field(name).get_db_prep_save(columns[name], connection) for name in names]
        cursor.execute(f"UPDATE {quote(meta.db_table)} SET {', '.join(column(name) + ' = %s' for name in names)} "
                       f"WHERE {column('db_id')} = %s", [*values, db_id])
    row = models.Record(db_id=db_id)  # what upstream's TagField gives update_tags: the row and its tags
    row._state.db, row._state.adding = store._db_label, False
    models.Tag.objects.update_tags(row, columns["tags"])
    return True


def without_stale_rows(write: Callable[[], Any], store: Any, undo: Callable[[], None]) -> Any:
    """Run ``write`` (whole transactions); when it failed on a foreign key and this process
    remembered rows of the store (``rows.py``), one may have been merged away by ``smtlock doctor
    --repair``: forget them all and write once more, asking the store for every row (once: a second
    failure raises). So too when an INSERT lost a race on a unique index (:mod:`smtlock._sumatra.uniques`) to a
    writer that takes no lock (plain Sumatra): once that writer committed, the write finds its row.
    Without savepoints the INSERT fails the whole transaction; on PostgreSQL the next statement then
    raises Django's TransactionManagementError, with the IntegrityError as its context."""
    from django.db import IntegrityError
    try:
        return write()
    except Exception as error:
        lost_a_race = isinstance(error, IntegrityError) or isinstance(error.__context__, IntegrityError)
        if not lost_a_race:
            raise
        rows.forget(store)
        undo()
        return write()


@contextlib.contextmanager
def fenced_transaction(label: str, uri: Optional[str]) -> Iterator[None]:
    """One transaction on database ``label`` made holding the store's lock (a write, a deletion, a change
    of the schema); on PostgreSQL (``uri``) its first statement is :func:`fence`, and it commits only
    while the hold is not known lost (:func:`fenced_commit`)."""
    from django.db import connections
    from django.db import transaction as django_transaction
    connection = connections[label]
    with _writing_from_the_start(connection), django_transaction.atomic(using=label):
        if uri:
            fence(connection, uri)
        yield
        fenced_commit()


@contextlib.contextmanager
def _writing_from_the_start(connection: Any) -> Iterator[None]:
    """SQLite: a transaction begun inside is ``BEGIN IMMEDIATE``, taking the database's write lock at
    once (waiting for a writer as long as the busy timeout). Django begins a deferred one, which takes
    it at its first write; in WAL mode a transaction that has read by then and finds that another
    connection wrote since fails at once with "database is locked", without waiting: a writer without
    the lock (plain Sumatra, smtweb, a person's sqlite3 shell) would fail the write."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        yield
        return

    def begin_immediate() -> None:
        connection.cursor().execute("BEGIN IMMEDIATE")
    connection._start_transaction_under_autocommit = begin_immediate
    try:
        yield
    finally:
        del connection._start_transaction_under_autocommit


def fence(connection: Any, uri: str) -> None:
    """The first statement of each transaction on PostgreSQL that a holder of the store's lock makes (a
    write, a deletion, a change of the schema in :func:`create_databases`, ``smtlock doctor --repair``).

    ``pg_advisory_xact_lock`` on the store's write key (taken again inside it, it stacks). It is held
    until that transaction ends, so a holder cut off from the server can never commit after another
    holder began: the write and its lock die together. Upstream races get_or_create on tables without
    unique constraints, and the duplicate rows it leaves make every later write fail
    (MultipleObjectsReturned). The server's keepalives are set in the same statement, for the
    transaction only (:func:`smtlock._postgres.client.local_settings`): without them the transaction of
    a host cut off stays open on the server for the kernel's two hours, holding what it locked.

    The fence, in the same round trip: a transaction made holding an SMTLock checks, holding the write
    key, that the hold's token still lives on the server (:func:`smtlock._lock.backends.held_check`); a
    hold that was lost (its connection died, a restart, a cut) raises LockLost and the transaction is
    rolled back. A new holder waits for the write key once before its hold begins, so a transaction of
    a former holder either ended before that or finds its token gone."""
    settings, params = postgres.local_settings()
    hold = current_hold()
    token = hold[0].fence_token(uri) if hold else None
    sql = f"SELECT {settings}, pg_advisory_xact_lock(%s)" + (f"; {held_check(token)}" if token else "")
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, postgres.advisory_key(uri, "write")])
        if hold and token and not cursor.fetchone()[0]:
            hold[0].check()  # the backend's own reason, when it knows it
            raise LockLost(hold[0].lock_file, "the server no longer holds it for this process",
                           time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def fenced_commit() -> None:
    """Before a write commits (any store): the SMTLock held must not be known lost, so a holder that
    resumes after its lease ran out writes nothing (PostgreSQL proves it in :func:`fence` too)."""
    hold = current_hold()
    if hold is not None:
        hold[0].check()


def retrying(attempt: Callable[[], Any], store: Any, undo: Callable[[], None]) -> Any:
    """Run ``attempt`` (one whole transaction); when the PostgreSQL connection broke or could not be
    made, ``undo`` what it changed in memory and run it again. A server that is down is waited for
    holding no lock when the write holds the lock once (its own hold: the write is redone whole
    after, so letting others in meanwhile is safe), else holding the caller's; a finished run's
    write waits as long as it takes. Any other error raises at once; the connection is closed after
    (see :func:`hygiene`)."""
    from django.db import InterfaceError, OperationalError, connections
    uri = postgres_uri(store)
    hold = current_hold()
    if not uri:
        return again_if_lost(attempt, undo, hold)
    connection = connections[store._db_label]
    seconds = hold[2] if hold else server_wait()
    deadline = time.monotonic() + seconds
    delay = 0.05
    try:
        while True:
            try:
                return attempt()
            except LockLost as lost:  # the hold's connection died: a hold of its own is taken again
                undo()
                connection.close()
                if not own_hold(hold):
                    raise
                hold[0].let_go_until_reachable(lost.why)  # type: ignore[index]
            except (OperationalError, InterfaceError) as error:
                broken = _broke(error)  # not the connection's state now: Django may have reconnected
                undo()
                connection.close()
                trouble = connection_trouble(error)
                if not broken or trouble == "refused":
                    raise
                if trouble == "down" and own_hold(hold):
                    hold[0].let_go_until_reachable(_reason(error))  # type: ignore[index]
                    continue
                left = deadline - time.monotonic()
                if trouble == "down":  # in a caller's block that holds the lock: wait holding it
                    wait_for_server(uri, _reason(error), max(0.0, left))
                elif left <= 0:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)
    finally:
        connection.close()  # a job holds no connection between writes


def own_hold(hold: Optional[Tuple[Any, int, float]]) -> bool:
    """Whether the lock this thread holds is a write's own hold (held once, not a user's block): one
    that it may let go of and take again, redoing the write whole."""
    return hold is not None and hold[1] == 1 and hold[0].purpose != "user"


def again_if_lost(attempt: Callable[[], Any], undo: Callable[[], None],
                  hold: Optional[Tuple[Any, int, float]]) -> Any:
    """Run ``attempt``; when it raised LockLost in a write's own hold, undo it, take the lock
    again and run it again (a user's block gets the LockLost)."""
    while True:
        try:
            return attempt()
        except LockLost as lost:
            undo()
            if not own_hold(hold):
                raise
            hold[0].let_go_until_reachable(lost.why)  # type: ignore[index]


def _reason(error: BaseException) -> str:
    """Why a connection failed, in a few words ("Connection refused")."""
    text = str(error).strip()
    return postgres.mask_uri(text.splitlines()[0].split(" failed: ")[-1].replace("FATAL:", "").strip()
                             if text else type(error).__name__)


def _broke(error: BaseException) -> bool:
    """Whether a database error says the connection broke: no answer from the server (no SQLSTATE),
    a connection exception (class 08) or the server shutting down (57P01 to 57P03)."""
    cause = error.__cause__ if error.__cause__ is not None else error
    code = getattr(cause, "pgcode", None)
    return code is None or code.startswith("08") or code in ("57P01", "57P02", "57P03")


def uri_to_db(self: Any, uri: str) -> dict:
    """Upstream's database settings, tuned by :func:`_tune_database`, with the URI's TLS settings
    (upstream drops its query: see :func:`smtlock._postgres.client.libpq_options`)."""
    return _tune_database(original("DjangoConfiguration.uri_to_db")(self, uri), uri)


def _tune_database(db: dict, uri: Optional[str] = None) -> dict:
    """Fix and tune one entry of Django's DATABASES as Sumatra builds it.

    * SQLite: upstream sets no timeout, so a second writer fails at once with "database is locked".
    * PostgreSQL: upstream sets no connect timeout or keepalives, so an unreachable server or a dead
      host hangs a job. No server-side cursors, which a transaction pooler cannot keep (Django's docs ask
      for it behind PgBouncer's transaction pooling); nothing else of a session is relied on.
    """
    if "sqlite3" in db["ENGINE"]:
        db.setdefault("OPTIONS", {})["timeout"] = SQLITE_BUSY_TIMEOUT_S
    elif "postgresql" in db["ENGINE"]:
        db.setdefault("OPTIONS", {}).update(connect_timeout=postgres.CONNECT_TIMEOUT_S,
                                            **postgres.KEEPALIVES, **postgres.libpq_options(uri or ""))
        db["DISABLE_SERVER_SIDE_CURSORS"] = True
    return db


def tune_registered_databases() -> None:
    """Tune the stores created before smtlock was imported (a plugin is imported after the
    project's store is built)."""
    from sumatra.recordstore import django_store
    uris = _project_store_uris()
    for db in django_store.db_config._settings["DATABASES"].values():
        _tune_database(db, uris.get((db.get("HOST"), str(db.get("PORT") or ""), db.get("NAME"))))


def _project_store_uris() -> Dict[Tuple[Any, str, Any], str]:
    """The PostgreSQL URI of the project at or above the working directory, by (host, port, database):
    a plugin is imported after upstream made the project store's settings without the URI's query."""
    try:
        with open(project_root(os.getcwd()) / ".smt" / "project") as file:
            uri = json.load(file)["record_store"]["db_file"]
        parts = urlsplit(uri)
        return {(parts.hostname, str(parts.port or ""), parts.path.rsplit("/", 1)[-1]): uri} \
            if postgres.is_postgres(uri) else {}
    except Exception:  # no project here, or not one with a store URI: nothing to add
        return {}


_local = threading.local()  # .reads: inside a call that only reads (see reading())
_wrote = False  # whether this process has begun a write: its reads too then wait as a job does


@contextlib.contextmanager
def reading() -> Iterator[None]:
    """Store calls inside only read: in a process that has not begun a write (``smt list``, smtweb,
    ``smtlock doctor``) they wait :data:`READ_WAIT_S` at most for a server that is down, not a job's
    :func:`~smtlock._lock.lock.server_wait`."""
    depth = getattr(_local, "reads", 0)
    _local.reads = depth + 1
    try:
        yield
    finally:
        _local.reads = depth


def _wait_s() -> float:
    global _wrote
    if not getattr(_local, "reads", 0):
        _wrote = True
    elif not _wrote:
        return min(READ_WAIT_S, server_wait())
    return server_wait()


def connecting(call: Callable[[], Any], label: str) -> Any:
    """Run ``call``; while the database connection cannot be made, or broke outside a transaction,
    retry: a PostgreSQL server that is down is waited for (a job: :func:`~smtlock._lock.lock.server_wait`,
    saying so on stderr; a process that only reads: :data:`READ_WAIT_S`), then
    :class:`~smtlock.errors.ServerUnreachable`; one with no free connection is retried with backoff.
    A refused login, or an error on an open connection, raises at once; so does anything inside
    :meth:`SMTLock.acquire`'s ``before_store``, where the host's lock is held."""
    from django.db import InterfaceError, OperationalError, connections
    deadline: Optional[float] = None
    seconds = 0.0
    delay = 0.05
    while True:
        try:
            return call()
        except (OperationalError, InterfaceError) as error:
            connection = connections[label]  # Django is configured now: call() configures it
            if connection.in_atomic_block or in_before_store():
                raise  # a transaction is redone whole by retrying(); before_store is only a head start
            if connection.vendor != "postgresql":
                if connection.connection is not None:
                    raise
                trouble = "busy"  # an SQLite file that cannot be opened yet: as it always was
            else:
                if connection.connection is not None and not _broke(error):
                    raise  # a query failed, not the connection
                trouble = connection_trouble(error)
                if trouble == "refused":
                    raise
            connection.close()
            if deadline is None:
                seconds = _wait_s() if connection.vendor == "postgresql" else server_wait()
                deadline = time.monotonic() + seconds
            left = deadline - time.monotonic()
            if trouble == "down":
                wait_for_server(_uri_of(connection), _reason(error), max(0.0, left),
                                quiet=bool(getattr(_local, "reads", 0)) and not _wrote)
            elif left <= 0:
                raise
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 2.0)


def _uri_of(connection: Any) -> str:
    """A PostgreSQL connection's URI, as Sumatra writes it (masked in every message)."""
    settings = connection.settings_dict
    password = f":{quote(settings['PASSWORD'], safe='')}" if settings.get("PASSWORD") else ""
    host = settings.get("HOST") or "localhost"
    host = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URI writes it
    query = urlencode({k: v for k, v in (settings.get("OPTIONS") or {}).items() if k in postgres.LIBPQ_PARAMETERS})
    return (f"postgres://{quote(settings.get('USER') or '', safe='')}{password}@"
            f"{host}:{settings.get('PORT') or 5432}/{settings.get('NAME')}" + (f"?{query}" if query else ""))


def close(store: Any) -> None:
    """Close this thread's connection to the store's database."""
    from django.db import connections
    connections[store._db_label].close()


def deleting(method: Callable) -> Callable:
    """Django's ``delete`` and ``delete_by_tag`` in one transaction made as a write's is
    (:func:`fenced_transaction`: on PostgreSQL the server's keepalives, the write key, the hold's check).
    Upstream deletes each record in a transaction of its own with no keepalives: a host cut off inside
    one held the record's row for the kernel's two hours, and the next write to that record (``smt
    tag``) waited for it holding the lock. ``delete_by_tag`` deletes all its records or none."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        from django.db import connections
        self._get_models()

        def write() -> Any:
            with fenced_transaction(self._db_label, postgres_uri(self)):
                return method(self, *args, **kwargs)
        if connections[self._db_label].in_atomic_block:  # in a caller's transaction
            return write()
        return again_if_lost(write, lambda: None, current_hold())
    return wrapper


def hygiene(method: Callable) -> Callable:
    """PostgreSQL stores: retry calls whose connection could not be made (a server that is down is
    waited for, see :func:`connecting`; a call that only reads, briefly), and close the connection
    after each call. Upstream keeps one connection open for each process's whole life, so a few
    hundred jobs exhaust the server's max_connections ("sorry, too many clients already"), and
    waits for a server that is down with no word for minutes."""
    only_reads = method is not save

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not postgres_uri(self):
            return method(self, *args, **kwargs)
        from django.db import connections
        with reading() if only_reads else contextlib.nullcontext():
            connecting(self._get_models, self._db_label)
            connection = connections[self._db_label]
            if connection.in_atomic_block:  # inside another call's transaction: it closes
                return method(self, *args, **kwargs)
            try:
                return connecting(lambda: method(self, *args, **kwargs), self._db_label)
            finally:
                connection.close()
    return wrapper


def sqlite_pragmas(sender: Any, connection: Any, **kwargs: Any) -> None:
    """WAL journal on every SQLite store on a local filesystem: readers (``smt list``, smtweb) never
    block the writer, and a commit needs no fsync of a rollback journal (upstream uses SQLite's
    default journal). On a shared filesystem SQLite's rollback journal, which WAL does not work on.

    Switching the journal needs every other connection to have stopped reading, and SQLite refuses
    it at once ("database is locked", without waiting its timeout) when two connections switch
    together, as when several jobs start. The journal is a matter of speed, not of safety, so the
    switch is tried without waiting and, if anyone reads, left to a later connection.
    """
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict["NAME"])
    journal = "DELETE" if is_shared(os.path.dirname(os.path.abspath(name))) else "WAL"
    with _not_waiting(connection), connection.cursor() as cursor:
        try:
            cursor.execute("PRAGMA journal_mode=" + journal)
            journal = cursor.fetchone()[0].upper()
        except Exception as error:  # Django wraps sqlite3's error in its own class
            if not isinstance(error.__cause__ or error, sqlite3.OperationalError):
                raise
            journal = "unchanged"
        if journal == "WAL":
            cursor.execute("PRAGMA synchronous=NORMAL")


def _add_indexes(connection: Any) -> None:
    """Add the missing speed indexes (:mod:`smtlock._sumatra.indexes`) without waiting for a busy store."""
    names = indexes.lacking(connection)
    if names:
        with _not_waiting(connection):
            indexes.create(connection, names, lambda cursor: _not_waiting_in(cursor, connection.vendor))


def _add_unique_indexes(connection: Any) -> None:
    """Add the missing unique indexes (:mod:`smtlock._sumatra.uniques`) without waiting for a busy store; a
    table with duplicate rows refuses its index until ``smtlock doctor --repair`` merges them."""
    names = uniques.to_add(connection)
    if names:
        with _not_waiting(connection):
            uniques.add(connection, names, lambda cursor: _not_waiting_in(cursor, connection.vendor))


@contextlib.contextmanager
def _not_waiting(connection: Any) -> Iterator[None]:
    """SQLite: statements, and the COMMITs of transactions, run inside fail at once rather than wait
    when another connection holds a lock they need (any reader, for a change of the schema or the
    journal). Around the whole transaction: a COMMIT needs the lock too (a reader kept a job's first
    connection waiting at its index's COMMIT until the reader ended)."""
    if connection.vendor != "sqlite":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        waits_ms = cursor.fetchone()[0]
        cursor.execute("PRAGMA busy_timeout=0")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"PRAGMA busy_timeout={int(waits_ms)}")


@contextlib.contextmanager
def _not_waiting_in(cursor: Any, vendor: str) -> Iterator[None]:
    """PostgreSQL: statements of the caller's transaction fail at once rather than wait for a lock
    another holds; for that transaction only (a session's SET would stay on a pooled server connection
    for its next client). SQLite: see :func:`_not_waiting`, around the transaction."""
    if vendor == "postgresql":
        cursor.execute("SELECT set_config('lock_timeout', '1', true)")
    yield


def create_databases(self: Any) -> None:
    """Run Sumatra's ``migrate`` only when a database needs it, and under the store's lock; then add
    the speed indexes (:mod:`smtlock._sumatra.indexes`) and the unique indexes (:mod:`smtlock._sumatra.uniques`)
    where they are missing.

    Upstream migrates on first use in every process: a burst on a new store races to create the
    same tables, and every process pays for it.
    """
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    def unmigrated() -> bool:
        for label in self._settings["DATABASES"]:
            executor = MigrationExecutor(connections[label])
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                return True
        return False

    def unindexed() -> list:
        return [label for label in self._settings["DATABASES"]
                if indexes.lacking(connections[label]) or uniques.to_add(connections[label])]

    def close() -> None:  # a job waiting for the lock must not sit on one of the server's few connections
        for label, settings in self._settings["DATABASES"].items():
            if "postgresql" in settings["ENGINE"]:
                connections[label].close()

    db = self._settings["DATABASES"]["default"]
    for settings in self._settings["DATABASES"].values():  # before this process first opens it
        if "sqlite3" in settings["ENGINE"]:
            one_host(settings["NAME"])
    try:
        if not connecting(lambda: unmigrated() or unindexed(), "default"):
            return
        close()

        def change() -> None:
            with _fenced(self._settings["DATABASES"]):
                if unmigrated():
                    original("DjangoConfiguration._create_databases")(self)
                for label in unindexed():
                    _add_indexes(connections[label])
                    _add_unique_indexes(connections[label])
        with store_lock(db["NAME"] if "sqlite3" in db["ENGINE"] else os.getcwd(), "migrate"):
            again_if_lost(lambda: connecting(change, "default"), close, current_hold())
    finally:
        close()


@contextlib.contextmanager
def _fenced(databases: dict) -> Iterator[None]:
    """PostgreSQL: the change of a store's schema in one transaction per database, begun as a write's
    is (:func:`fenced_transaction`). Upstream migrates in transactions of their own with no keepalives: a host cut
    off inside one left it open on the server for the system's two hours (tcp_keepalives_idle 0 is
    the kernel's 7200 s), holding its tables, and the next holder of the lock waited for it forever.
    Fenced, the server ends it with its client, and the next holder's hold begins after it ended."""
    from django.db import connections
    with contextlib.ExitStack() as stack:
        for label, settings in databases.items():
            if "postgresql" in settings["ENGINE"]:
                stack.enter_context(fenced_transaction(label, _uri_of(connections[label])))
        yield


def before_fork() -> None:
    """Close this thread's idle Django connections before a fork; each process opens its own.

    Upstream keeps a process's connection open for its whole life, so a child forked by a process pool
    (multiprocessing's default on Linux) would use its parent's SQLite handle, which SQLite forbids
    across fork, or speak on its parent's PostgreSQL socket at the same time as the parent.
    """
    for wrapper in _django_connections():
        if wrapper.connection is not None and not wrapper.in_atomic_block:
            wrapper.close()


def after_fork_in_child() -> None:
    """A connection still open at the fork (it was inside a transaction) is never used by the child:
    a PostgreSQL socket is first pointed at /dev/null, so that closing it cannot end the parent's
    session; an SQLite handle is kept, unused, so that it is never closed in the child."""
    for wrapper in _django_connections():
        raw = wrapper.connection
        if raw is None:
            continue
        if wrapper.vendor == "postgresql":
            devnull = os.open(os.devnull, os.O_RDWR)
            os.dup2(devnull, raw.fileno())
            os.close(devnull)
        else:
            _inherited.append(raw)
        wrapper.connection = None


_inherited: list = []  # database handles a forked child inherited and must never use or close


def _django_connections() -> list:
    """This thread's Django connection wrappers that exist already (none before Django is set up)."""
    db = sys.modules.get("django.db")
    if db is None:
        return []
    try:
        return list(db.connections.all(initialized_only=True))
    except Exception:  # Django not configured yet
        return []
