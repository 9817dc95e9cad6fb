"""Every write Sumatra 0.8.1 makes, made safe: the one place where smtlock patches Sumatra.

:func:`apply` runs on ``import smtlock`` (and from the Sumatra plugin). Each patch wraps the narrowest
Sumatra callable and says which upstream behaviour it fixes; no Sumatra code is copied here.

The path of one record write, top to bottom (:func:`add_record`)::

    Project.new_record            builds the Record, VCS checks        (outside the lock)
      -> Project.add_record       = add_record() below
           with SMTLock(project):                                      (inside the lock)
               claim_label()      one query: labels like this one; add a suffix if taken
               store.save()       Django: one transaction / shelve: re-read, write, close
      -> Record.register          dependencies, platform information   (outside the lock)
"""

from __future__ import annotations

import builtins
import functools
import os
import pickle
import random
import shelve
import shutil
import socket
import sqlite3
import sys
import tempfile
import time
import weakref
from typing import Any, Callable, Dict, Optional, Set, Tuple

import sumatra.commands
import sumatra.projects
from sumatra.core import STATUS_FORMAT
from sumatra.projects import Project
from sumatra.recordstore.shelve_store import ShelveRecordStore

from . import postgres, rows
from .backends import replacement_mode
from .errors import NoProjectError, StoreError
from .filesystem import is_shared, mount_of
from .lock import SMTLock, timeout_setting
from .project import HOST_CLAIM_SUFFIX, LAST_GOOD_SUFFIX, RUNNING_DIR, SMT_DIR, postgres_uri, store_path

try:  # Sumatra's django_store module imports without Django; its store needs it
    import django  # noqa: F401
    from sumatra.recordstore.django_store import DjangoConfiguration, DjangoRecordStore
except ImportError:  # Django is optional for Sumatra and for us
    DjangoConfiguration = DjangoRecordStore = None

__all__ = ["apply", "is_applied", "add_record", "save_record", "claim_label", "free_label", "atomic_open",
           "prepare_store", "SQLITE_BUSY_TIMEOUT_S", "RUNNING_TAGS", "ENDED_TAGS"]

SQLITE_BUSY_TIMEOUT_S = 60.0  # how long an SQLite connection waits for another writer, not fail
CONNECT_RETRY_S = 300.0  # how long a PostgreSQL connection is retried ($SMTLOCK_TIMEOUT overrides)
HOST_IDLE_S = 600.0  # a claim passes to another host after this long with no write and no running record
_CLAIM = "_smtlock_claimed_label"  # set on a Record once its label is claimed in its store
_ORIGINAL: dict = {}
_saved: Dict[int, Tuple[Any, bytes]] = {}  # id(record) -> (weak reference, state last written)
#: Sumatra's status tags of a record whose process has started and not ended
RUNNING_TAGS = {STATUS_FORMAT % s for s in ("pre_run", "running", "finished...", "failed...", "killed...")}
#: Sumatra's status tags once the simulation has ended (with "..." while its outputs are gathered)
ENDED_TAGS = {STATUS_FORMAT % s for s in ("finished", "failed", "killed", "finished...", "failed...",
                                          "killed...")}


# --- the write path -------------------------------------------------------------------------------

def add_record(self: Project, record: Any) -> None:
    """Replaces ``Project.add_record``.

    Upstream retries 200 times with 5 s sleeps on database errors, then prints "Reached maximum
    number of attempts" and drops the record. Here the write is serialized, so it does not race, and
    a write that fails raises. Adding the same Record object again updates it.
    """
    if getattr(record, _CLAIM, None) == record.label and _unchanged(record, _state(record)):
        self._most_recent = record.label  # already stored exactly so by this process: no write
        return
    prepare_store(self.record_store)
    with SMTLock(self, purpose="add_record"):
        _write(self, record, claim=True)
    _remember(record, _state(record))
    self._most_recent = record.label


def _write(project: Project, record: Any, claim: bool) -> None:
    """One record write: the label claim and the store's save in one transaction of a Django store.

    On PostgreSQL that transaction first takes the store's write lock (see :func:`_write_lock`), so
    the lock and the write commit or die together; a write whose connection broke (a server restart,
    "too many clients") is rolled back and done again, whole, within ``$SMTLOCK_TIMEOUT``: a retry
    cannot write twice. Upstream's save is ~16 autocommitted queries and nothing retries them.
    """
    store = project.record_store
    if DjangoRecordStore is None or not isinstance(store, DjangoRecordStore):
        if claim:
            claim_label(project, record)
        _ORIGINAL["Project.save_record"](project, record)
        return
    from django.db import transaction
    label, claimed = record.label, getattr(record, _CLAIM, None)

    def attempt() -> None:
        with transaction.atomic(using=store._db_label):
            _write_lock(store)
            if claim:
                claim_label(project, record)
            _ORIGINAL["Project.save_record"](project, record)

    def undo() -> None:  # the transaction rolled back: so does the label it claimed
        record.label = label
        setattr(record, _CLAIM, claimed)

    _without_stale_rows(lambda: _retrying(attempt, store, undo), store, undo)


def _without_stale_rows(write: Callable[[], Any], store: Any, undo: Callable[[], None]) -> Any:
    """Run ``write`` (whole transactions); when it failed on a foreign key and this process
    remembered rows of the store (``rows.py``), one may have been merged away by ``smtlock doctor
    --repair``: forget them all and write once more, asking the store for every row."""
    from django.db import IntegrityError
    try:
        return write()
    except IntegrityError:
        if not rows.forget(store):
            raise
        undo()
        return write()


def claim_label(project: Project, record: Any) -> None:
    """Make ``record.label`` unique in the project's store; call with the lock held.

    Upstream's default label is a one-second timestamp, so a burst repeats it and the records replace
    each other (open-research/sumatra#362). A taken label gets the first free suffix ``_1``, ``_2``...
    """
    if getattr(record, _CLAIM, None) == record.label:
        return  # the same record, added again (the user's pattern after new_record, or @capture)
    record.label = free_label(record.label, _labels_like(project.record_store, project.name, record.label))
    setattr(record, _CLAIM, record.label)


def free_label(label: str, taken: Set[str]) -> str:
    """``label`` if it is not taken, else the first free ``label_1``, ``label_2``..."""
    n = 0
    free = label
    while free in taken:
        n += 1
        free = f"{label}_{n}"
    return free


def _labels_like(store: Any, project_name: str, label: str) -> Set[str]:
    """Labels in the store equal to ``label`` or starting with it, with one query where possible."""
    if DjangoRecordStore is not None and isinstance(store, DjangoRecordStore):
        query = store._manager.filter(project__id=project_name, label__startswith=label)
        return _connecting(lambda: set(query.values_list("label", flat=True)), store._db_label)
    return {x for x in store.labels(project_name) if x.startswith(label)}


def save_record(self: Project, record: Any) -> None:
    """``Project.save_record`` under the lock; notes which process runs a record.

    Upstream writes with no lock (``smt run`` saves a record 4 times). Sumatra stores no process id,
    so while a record's status is running, ``.smt/smtlock-running/<label>`` holds "pid host":
    ``smtlock doctor`` tells a live run from one whose process was killed.
    """
    state = _state(record)
    if _unchanged(record, state):
        return
    prepare_store(self.record_store)
    # A record whose run has ended waits for the lock as long as it takes, whatever $SMTLOCK_TIMEOUT
    # says: a timeout there would throw away a finished run's result (smt run, @smt_logged, @capture).
    ended = not ENDED_TAGS.isdisjoint(record.tags)
    with SMTLock(self, timeout=-1 if ended else None, purpose="save_record"):
        _write(self, record, claim=False)
    _remember(record, state)
    note = os.path.join(self.path, SMT_DIR, RUNNING_DIR, record.label.replace("/", "_"))
    if any(tag in RUNNING_TAGS for tag in record.tags):
        os.makedirs(os.path.dirname(note), exist_ok=True)
        with open(note, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
    elif os.path.exists(note):
        os.unlink(note)


def _state(record: Any) -> Optional[bytes]:
    """Everything a store write would take from the record, as bytes (None if it cannot pickle)."""
    try:
        return pickle.dumps({k: v for k, v in vars(record).items() if k != _CLAIM}, protocol=4)
    except Exception:
        return None


def _unchanged(record: Any, state: Optional[bytes]) -> bool:
    """Whether this process already wrote the record exactly as it is now.

    Upstream writes it again regardless: ``new_record`` writes it, then the usual
    ``with lock: add_record(record)`` and ``@capture`` write the same record a second time.
    """
    saved = _saved.get(id(record))
    return state is not None and saved is not None and saved[0]() is record and saved[1] == state


def _remember(record: Any, state: Optional[bytes]) -> None:
    key = id(record)
    if state is not None:
        def forget(_: Any, key: int = key) -> None:
            _saved.pop(key, None)
        _saved[key] = (weakref.ref(record, forget), state)


def _mark_stored(method: Callable) -> Callable:
    """Records read from the store are stored records: adding one again updates it (no new label)."""
    @functools.wraps(method)
    def wrapper(self: Project, *args: Any, **kwargs: Any) -> Any:
        found = method(self, *args, **kwargs)
        for record in found if isinstance(found, list) else [found]:
            if hasattr(record, "label"):
                setattr(record, _CLAIM, record.label)
        return found
    return wrapper


def prepare_store(store: Any) -> None:
    """Before each write: one host per SQLite/shelve store on a shared filesystem; first-use set-up
    of a store (Django configuration, migration check, SQLite tuning), done outside the lock."""
    _one_host(store_path(store))
    if DjangoRecordStore is not None and isinstance(store, DjangoRecordStore):
        _connecting(store._get_models, store._db_label)


def _locked(method: Callable, purpose: str) -> Callable:
    """Run a Project method with the project's lock held (get-modify-save sequences, file writes)."""
    @functools.wraps(method)
    def wrapper(self: Project, *args: Any, **kwargs: Any) -> Any:
        if purpose != "save":  # the project file needs no store
            prepare_store(getattr(self, "record_store", None))
        with SMTLock(self, purpose=purpose):
            return method(self, *args, **kwargs)
    return wrapper


# --- atomic files under .smt/ ---------------------------------------------------------------------

class _AtomicFile:
    """A text file written to a temporary name in the target's folder; it replaces the target on
    close (after fsync), so a reader sees the old content or the new, never a torn file. On an error
    the target is left as it was."""

    def __init__(self, path: str, mode: str, keep_copy: bool = False, **kwargs: Any) -> None:
        self.path = os.path.abspath(path)
        self.keep_copy = keep_copy
        fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                        dir=os.path.dirname(self.path))
        self.file = os.fdopen(fd, mode.replace("x", "w"), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.file, name)

    def __enter__(self) -> "_AtomicFile":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.file.close()
            os.unlink(self.tmp)

    def close(self) -> None:
        if self.file.closed:
            return
        self.file.flush()
        os.fsync(self.file.fileno())
        os.chmod(self.tmp, replacement_mode(self.path))  # mkstemp made it 0o600
        self.file.close()
        if self.keep_copy:  # <path>.last-good: what `smtlock doctor --repair` restores
            copy = self.tmp + ".copy"
            shutil.copyfile(self.tmp, copy)
            os.replace(copy, self.path + LAST_GOOD_SUFFIX)
        os.replace(self.tmp, self.path)


def atomic_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
    """Stands in for ``open`` inside ``sumatra.projects`` and ``sumatra.commands``.

    Upstream writes ``.smt/project`` (``Project.save``) and ``.smt/labels`` (``smt run``, ``tag``...)
    with ``open(path, 'w')`` in place, so a concurrent ``load_project()`` reads an empty or
    half-written file (JSONDecodeError). Writes to files in a ``.smt`` folder become atomic here.
    """
    if ("w" in mode and "b" not in mode and not args and isinstance(file, (str, os.PathLike))
            and os.path.basename(os.path.dirname(os.path.abspath(file))) == SMT_DIR):
        path = os.fspath(file)
        return _AtomicFile(path, mode, keep_copy=os.path.basename(path) == "project", **kwargs)
    return builtins.open(file, mode, *args, **kwargs)


# --- record stores --------------------------------------------------------------------------------

def _django_save(self: Any, project_name: str, record: Any) -> None:
    """``DjangoRecordStore.save`` in one transaction.

    Upstream issues ~16 autocommitted queries: a failure half-way leaves a half-written record, and
    each commit costs a journal sync.
    """
    from django.db import connections, transaction
    self._get_models()  # configures Django (and migrates) before a transaction can be opened

    def write() -> None:
        with transaction.atomic(using=self._db_label):
            _write_lock(self)
            _ORIGINAL["DjangoRecordStore.save"](self, project_name, record)
    if connections[self._db_label].in_atomic_block:  # inside the write path's transaction: it retries
        write()
    else:  # called by itself (smt sync, smtlock postgres)
        _without_stale_rows(write, self, lambda: None)


def _write_lock(store: Any) -> None:
    """PostgreSQL: ``pg_advisory_xact_lock`` on the store's write key, the first statement of the
    write's transaction (taken again inside it, it stacks). It is held until that transaction ends, so
    a holder cut off from the server can never commit after another holder began: the write and its
    lock die together. Upstream races get_or_create on tables without unique constraints, and the
    duplicate rows it leaves make every later write fail (MultipleObjectsReturned)."""
    uri = postgres_uri(store)
    if uri:
        from django.db import connections
        with connections[store._db_label].cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [postgres.advisory_key(uri, "write")])


def _retrying(attempt: Callable[[], Any], store: Any, undo: Callable[[], None]) -> Any:
    """Run ``attempt`` (one whole transaction); when the PostgreSQL connection broke or could not be
    made, ``undo`` what it changed in memory and run it again, with backoff, within the timeout.
    Any other error raises at once; the connection is closed after (see :func:`_django_hygiene`)."""
    from django.db import InterfaceError, OperationalError, connections
    if not postgres_uri(store):
        return attempt()
    connection = connections[store._db_label]
    deadline = time.monotonic() + timeout_setting(CONNECT_RETRY_S)
    delay = 0.05
    try:
        while True:
            try:
                return attempt()
            except (OperationalError, InterfaceError):
                broken = connection.connection is None or not connection.is_usable()
                undo()
                connection.close()
                if not broken or time.monotonic() > deadline:
                    raise
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 2.0)
    finally:
        connection.close()  # a job holds no connection between writes


def _django_uri_to_db(self: Any, uri: str) -> dict:
    """Upstream's database settings, tuned by :func:`_tune_database`."""
    return _tune_database(_ORIGINAL["DjangoConfiguration.uri_to_db"](self, uri))


def _tune_database(db: dict) -> dict:
    """Fix and tune one entry of Django's DATABASES as Sumatra builds it.

    * SQLite: upstream sets no timeout, so a second writer fails at once with "database is locked".
    * PostgreSQL: upstream sets no connect timeout or keepalives, so an unreachable server or a dead
      host hangs a job.
    """
    if "sqlite3" in db["ENGINE"]:
        db.setdefault("OPTIONS", {})["timeout"] = SQLITE_BUSY_TIMEOUT_S
    elif "postgresql" in db["ENGINE"]:
        db.setdefault("OPTIONS", {}).update(connect_timeout=postgres.CONNECT_TIMEOUT_S,
                                            **postgres.KEEPALIVES)
    return db


def _tune_registered_databases() -> None:
    """Tune the stores created before smtlock was imported (a plugin is imported after the
    project's store is built)."""
    from sumatra.recordstore import django_store
    for db in django_store.db_config._settings["DATABASES"].values():
        _tune_database(db)


def _connecting(call: Callable[[], Any], label: str) -> Any:
    """Run ``call``; while the database connection cannot be made (too many clients, a server
    restarting) retry with backoff within the timeout. Errors on an open connection raise at once."""
    from django.db import InterfaceError, OperationalError, connections
    deadline = time.monotonic() + timeout_setting(CONNECT_RETRY_S)
    delay = 0.05
    while True:
        try:
            return call()
        except (OperationalError, InterfaceError):
            if connections[label].connection is not None or time.monotonic() > deadline:
                raise
            time.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 2.0)


def _django_hygiene(method: Callable) -> Callable:
    """PostgreSQL stores: retry calls whose connection could not be made, and close the connection
    after each call. Upstream keeps one connection open for each process's whole life, so a few
    hundred jobs exhaust the server's max_connections ("sorry, too many clients already")."""
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not postgres_uri(self):
            return method(self, *args, **kwargs)
        from django.db import connections
        _connecting(self._get_models, self._db_label)
        connection = connections[self._db_label]
        if connection.in_atomic_block:  # inside another call's transaction: it closes
            return method(self, *args, **kwargs)
        try:
            return _connecting(lambda: method(self, *args, **kwargs), self._db_label)
        finally:
            connection.close()
    return wrapper


def _sqlite_pragmas(sender: Any, connection: Any, **kwargs: Any) -> None:
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
    import sqlite3
    name = str(connection.settings_dict["NAME"])
    journal = "DELETE" if is_shared(os.path.dirname(os.path.abspath(name))) else "WAL"
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA busy_timeout")
        waits_ms = cursor.fetchone()[0]
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute("PRAGMA journal_mode=" + journal)
            journal = cursor.fetchone()[0].upper()
        except Exception as error:  # Django wraps sqlite3's error in its own class
            if not isinstance(error.__cause__ or error, sqlite3.OperationalError):
                raise
            journal = "unchanged"
        finally:
            cursor.execute(f"PRAGMA busy_timeout={int(waits_ms)}")
        if journal == "WAL":
            cursor.execute("PRAGMA synchronous=NORMAL")


def _one_host(path: Optional[str]) -> None:
    """Refuse to touch an SQLite or shelve store on a shared filesystem that another host writes.

    File locks rarely reach across the hosts of a shared filesystem, and SQLite's own locking and
    rollback journal do not either: a second host's reader can even roll back the first host's
    transaction in progress. Upstream writes regardless (databases "malformed", records silently
    missing). So the first host to write claims the store (``<store>.smtlock-host``, touched at each
    write); another host stops here, before it reads or writes anything, with a line that says what
    to do. A claim passes to another host once its host has had no running record and no write for
    :data:`HOST_IDLE_S` (a user whose home is on NFS may move between machines).
    """
    if path is None:
        return
    path = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(path)
    if not is_shared(folder):
        return
    me, claim = socket.gethostname(), path + HOST_CLAIM_SUFFIX
    with _path_lock(path, "host check"):
        try:
            owner, idle = open(claim).read().split()[0], time.time() - os.stat(claim).st_mtime
        except (OSError, IndexError):
            owner, idle = me, 0.0
        if owner != me and (idle < HOST_IDLE_S or _runs_on(owner, folder)):
            mount = mount_of(folder)
            raise StoreError(
                f"the records are in {path}, a file on a shared filesystem ({mount.fstype} at "
                f"{mount.mountpoint}) that host {owner} writes; writing it from {me} too would corrupt it: "
                "keep the records in PostgreSQL, which every host reaches (`smtlock postgres URL`), or run "
                f"every job on {owner} (the store passes to another host once {owner} has run nothing and "
                f"written nothing for {HOST_IDLE_S / 60:.0f} min)")
        if os.path.exists(claim) and owner == me:
            os.utime(claim)
        else:
            with _AtomicFile(claim, "w") as f:
                f.write(f"{me}\n")


def _runs_on(host: str, folder: str) -> bool:
    """Whether the project whose .smt is ``folder`` has a record running on ``host``."""
    try:
        notes = os.scandir(os.path.join(folder, RUNNING_DIR))
    except OSError:
        return False
    with notes:
        for note in notes:
            try:
                if open(note.path).read().split()[1:2] == [host]:
                    return True
            except (OSError, IndexError):
                continue
    return False


def _django_create_databases(self: Any) -> None:
    """Run Sumatra's ``migrate`` only when a database needs it, and under the store's lock.

    Upstream migrates on first use in every process: a burst on a new store races to create the
    same tables, and every process pays for it.
    """
    from django.db import connections
    from django.db.migrations.executor import MigrationExecutor

    def pending() -> bool:
        for label in self._settings["DATABASES"]:
            executor = MigrationExecutor(connections[label])
            if executor.migration_plan(executor.loader.graph.leaf_nodes()):
                return True
        return False

    db = self._settings["DATABASES"]["default"]
    for settings in self._settings["DATABASES"].values():  # before this process first opens it
        if "sqlite3" in settings["ENGINE"]:
            _one_host(settings["NAME"])
    try:
        if not _connecting(pending, "default"):
            return
        with _path_lock(db["NAME"] if "sqlite3" in db["ENGINE"] else os.getcwd(), "migrate"):
            if _connecting(pending, "default"):
                _ORIGINAL["DjangoConfiguration._create_databases"](self)
    finally:  # a job waiting for the lock must not sit on one of the server's few connections
        for label, settings in self._settings["DATABASES"].items():
            if "postgresql" in settings["ENGINE"]:
                connections[label].close()


def _path_lock(path: str, purpose: str) -> Any:
    """The lock for a store file: its project's SMTLock, or a lock file beside a store that lives
    outside any project."""
    path = os.path.abspath(os.path.expanduser(path))
    try:
        return SMTLock(path, purpose=purpose)
    except NoProjectError:
        return SMTLock.on_file(path + ".lock", purpose=purpose)


def _shelve_accepts_uri(cls: Any, uri: str) -> bool:
    """``ShelveRecordStore.accepts_uri`` that does not take a Django SQLite store for a shelf.

    Upstream accepts any existing path and relies on ``shelve.open`` failing on other files. Since
    Python 3.13 shelve opens SQLite files (``dbm.sqlite3``), so ``get_record_store('.smt/records')``
    (``smt init --store``, ``smt configure --store``, ``smt sync``) saw the Django store as an empty
    shelf, and added a ``Dict`` table to it.
    """
    if any(_is_other_sqlite(path) for path in (uri, uri + ".db")):
        return False
    return bool(_ORIGINAL["ShelveRecordStore.accepts_uri"](uri))


def _is_other_sqlite(path: str) -> bool:
    """Whether ``path`` is an SQLite database that is not a ``dbm.sqlite3`` shelf (table ``Dict``)."""
    try:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                return False
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            db.close()
    except (OSError, sqlite3.Error):
        return False
    return "Dict" not in tables


def _shelve_init(self: Any, shelf_name: str = ".smt/records") -> None:
    """Open the shelf under the lock, so that it never reads a half-written index."""
    _one_host(shelf_name)
    with _path_lock(shelf_name, "shelve"):
        _ORIGINAL["ShelveRecordStore.__init__"](self, shelf_name)


def _shelve_fresh(method: Callable) -> Callable:
    """Run a ShelveRecordStore method on a freshly opened shelf, under the lock, and close it after.

    Upstream opens the shelf in ``__init__`` and keeps it: the handle serves a stale view of the
    ``{label: record}`` dict it rewrites whole, so concurrent writers overwrite each other's records
    and readers see truncated pickles. A fresh, unmodified handle is left in ``self.shelf`` for code
    that uses it directly, as upstream allows; closing it later writes nothing.
    """
    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_smtlock_open", False):  # called from another wrapped method: shelf is open
            return method(self, *args, **kwargs)
        _one_host(self._shelf_name)
        with _path_lock(self._shelf_name, "shelve"):
            self.shelf.close()
            self.shelf = shelve.open(self._shelf_name)
            self._smtlock_open = True
            try:
                return method(self, *args, **kwargs)
            finally:
                self._smtlock_open = False
                self.shelf.close()
                self.shelf = shelve.open(self._shelf_name)
    return wrapper


def _django_before_fork() -> None:
    """Close this thread's idle Django connections before a fork; each process opens its own.

    Upstream keeps a process's connection open for its whole life, so a child forked by a process pool
    (multiprocessing's default on Linux) would use its parent's SQLite handle, which SQLite forbids
    across fork, or speak on its parent's PostgreSQL socket at the same time as the parent.
    """
    for wrapper in _django_connections():
        if wrapper.connection is not None and not wrapper.in_atomic_block:
            wrapper.close()


def _django_after_fork_in_child() -> None:
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


# --- applying -------------------------------------------------------------------------------------

def _patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    key = f"{owner.__name__}.{name}"
    if key not in _ORIGINAL:
        _ORIGINAL[key] = getattr(owner, name)
        setattr(owner, name, make(_ORIGINAL[key]))


def is_applied() -> bool:
    """Whether :func:`apply` has run in this process."""
    return "Project.add_record" in _ORIGINAL


def apply() -> None:
    """Apply every patch once; calling it again does nothing."""
    if is_applied():
        return
    _patch(Project, "add_record", lambda orig: add_record)
    _patch(Project, "save_record", lambda orig: save_record)
    # Upstream: save dumps JSON straight into .smt/project (atomic_open below makes it atomic).
    _patch(Project, "save", lambda orig: _locked(orig, "save"))
    for name in ("get_record", "find_records"):
        _patch(Project, name, _mark_stored)
    # Upstream: get -> modify -> save_record with no lock loses concurrent tags and comments.
    for name in ("add_tag", "remove_tag", "add_comment", "delete_record", "delete_by_tag",
                 "change_record_store", "backup"):
        _patch(Project, name, functools.partial(_locked, purpose=name))
    # Upstream: open(path, 'w') on .smt/project and .smt/labels (see atomic_open).
    for module in (sumatra.projects, sumatra.commands):
        if getattr(module, "open", None) is not atomic_open:
            setattr(module, "open", atomic_open)  # noqa: B010 (a module attribute mypy cannot see)

    _patch(ShelveRecordStore, "accepts_uri", lambda orig: classmethod(_shelve_accepts_uri))
    _patch(ShelveRecordStore, "__init__", lambda orig: _shelve_init)
    for name in ("list_projects", "has_project", "save", "get", "list", "labels", "delete",
                 "delete_by_tag", "most_recent"):
        _patch(ShelveRecordStore, name, _shelve_fresh)

    if DjangoRecordStore is not None:
        _tune_registered_databases()
        _patch(DjangoRecordStore, "save", lambda orig: _django_hygiene(_django_save))
        for name in ("get", "list", "labels", "delete", "delete_by_tag", "most_recent", "has_project",
                     "list_projects"):
            _patch(DjangoRecordStore, name, _django_hygiene)
        # Upstream looks up ~10 never-changing rows with get_or_create in every write (see rows.py).
        _patch(DjangoRecordStore, "_get_db_obj", rows.get_db_obj)
        _patch(DjangoRecordStore, "_get_db_project", rows.get_db_project)
        _patch(DjangoConfiguration, "uri_to_db", lambda orig: _django_uri_to_db)
        _patch(DjangoConfiguration, "_create_databases", lambda orig: _django_create_databases)
        os.register_at_fork(before=_django_before_fork, after_in_child=_django_after_fork_in_child)
        from django.db.backends.signals import connection_created
        connection_created.connect(_sqlite_pragmas, dispatch_uid="smtlock-sqlite-pragmas")
