"""Every write Sumatra 0.8.1 makes, made safe: the one place where smtlock patches Sumatra.

:func:`apply` runs on ``import smtlock`` (and from the Sumatra plugin) and lists every patch. Each
wraps the narrowest Sumatra callable and says which upstream behaviour it fixes; no Sumatra code is
copied. The project-level write path is here; what each kind of store needs is in
:mod:`~smtlock._sumatra.djangostore` and :mod:`~smtlock._sumatra.shelf`, the files under ``.smt`` in
:mod:`~smtlock._lock.atomic`.

The path of one record write, top to bottom (:func:`add_record`)::

    Project.new_record            builds the Record, VCS checks        (outside the lock)
      -> Project.add_record       = add_record() below
           prepare_store()        one host per store on a shared fs; Django set up (outside the lock)
           with _acquired(SMTLock(project)):
             rows.prefetch()      Django: the stored rows the write will use (before the lock;
                                  PostgreSQL: after the file lock, before the store's lock)
             _write()             Django: djangostore.transaction(), shelve: as it is
                                                                       (inside the lock)
               claim_label()      one query: labels like this one; add a suffix if taken
               store.save()       Django: rows remembered per process (rows.py) / shelve: re-read,
                                  write, close (shelf.py)
                                  a record written before: a person's edits since merged in
                                  (edits.py)
      -> Record.register          dependencies, platform information   (outside the lock)

Under :func:`first_write_deferred` (``@smt_logged``) ``add_record`` writes nothing: the same steps
run at the record's first ``save_record``, once it is registered and running.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, Optional, Set, Tuple

import sumatra.commands
import sumatra.dependency_finder.python
import sumatra.launch
import sumatra.programs
import sumatra.projects
import sumatra.records
import sumatra.versioncontrol._git
from sumatra.core import STATUS_FORMAT, get_encoding
from sumatra.projects import Project
from sumatra.recordstore.shelve_store import ShelveRecordStore

from .._lock.atomic import atomic_open
from .._lock.backends import FileBackend
from .._lock.hostclaim import one_host
from .._lock.lock import SMTLock, current_hold
from .._lock.paths import LOCK_FILE_NAME, SMT_DIR, postgres_uri
from .._lock.running import note_ended, note_running
from .._postgres.client import is_postgres, keep_password_apart, mask_uri, without_password
from .._postgres.pgpass import password_file
from ..errors import SMTLockError, TrackedStoreError
from . import djangostore, edits, moves, provenance, rows, shelf, versioncontrol
from .djangostore import DjangoConfiguration, DjangoRecordStore, connecting  # None without Django
from .project import MimeTypesOnce, store_path, tracked_smt_files
from .upstream import is_patched, original, patch

__all__ = ["apply", "is_applied", "add_record", "save_record", "claim_label", "free_label", "prepare_store",
           "first_write_deferred",
           "RUNNING_TAGS", "ENDED_TAGS"]

_CLAIM = "_smtlock_claimed_label"  # set on a Record once its label is claimed in its store
_FIRST = "_smtlock_first_write"  # set on a Record whose first write was deferred (first_write_deferred)
_deferring = threading.local()  # .on: add_record of a new record in this thread writes nothing yet
_saved: Dict[int, Tuple[Any, Dict[str, bytes]]] = {}  # id(record) -> (weak reference, state last written)
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
    if getattr(_deferring, "on", False) and getattr(record, _CLAIM, None) is None:
        setattr(record, _FIRST, True)  # its first save_record claims the label and writes it whole
        self._most_recent = record.label
        return
    prepare_store(self.record_store)
    with _acquired(SMTLock(self, purpose="add_record"), self, record):
        _write(self, record, claim=True)
    _remember(record, _state(record))
    self._most_recent = record.label


def _write(project: Project, record: Any, claim: bool) -> None:
    """One record write: the label claim, then the store's save; for a Django store both in one
    transaction (:func:`smtlock._sumatra.djangostore.transaction`: on PostgreSQL it holds the store's write
    lock, and a write whose connection broke is rolled back and made again, whole)."""
    store = project.record_store

    def steps() -> None:
        if claim:
            claim_label(project, record)
        original("Project.save_record")(project, record)
    label, claimed, fields = record.label, getattr(record, _CLAIM, None), edits.fields(record)

    def undo() -> None:  # the transaction rolled back (or nothing was written): so does the label it claimed,
        record.label = label  # and a person's edits merged into the record (the next attempt merges again)
        setattr(record, _CLAIM, claimed)
        edits.restore(record, fields)
    if not djangostore.is_django(store):  # shelve: a lost hold writes nothing
        def fenced() -> None:
            djangostore.fenced_commit()
            steps()
        return djangostore.again_if_lost(fenced, undo, current_hold())
    djangostore.transaction(store, steps, undo)


def _acquired(lock: SMTLock, project: Project, record: Any) -> Any:
    """``lock.acquire()``, the rows the write will look up found first (rows.prefetch) for a Django
    store: on SQLite before the lock, on PostgreSQL once this host's file lock is held and before the
    store's advisory lock, on the connection the write then uses (upstream connects inside the
    write; a connection costs more than the whole write). Not when this process holds the lock."""
    store = project.record_store
    if not djangostore.is_django(store) or lock.is_locked:
        return lock.acquire()

    def prefetch() -> None:
        from django.db import DatabaseError
        try:
            connecting(lambda: rows.prefetch(store, project.name, record), store._db_label)
        except DatabaseError:  # only a head start (a server restarting mid-query): the write asks itself
            djangostore.close(store)
    if not postgres_uri(store):
        if not djangostore.changed_only():  # an ended record's update looks up no related row
            prefetch()
        return lock.acquire()
    try:
        return lock.acquire(before_store=prefetch)
    except BaseException:  # the write closes it; without the lock, nothing writes
        djangostore.close(store)
        raise


def claim_label(project: Project, record: Any) -> None:
    """Make ``record.label`` unique in the project's store; call with the lock held.

    Upstream's default label is a one-second timestamp, so a burst repeats it and the records replace
    each other (open-research/sumatra#362). A taken label gets the first free suffix ``_1``, ``_2``...
    """
    if getattr(record, _CLAIM, None) == record.label:
        return  # the same record, added again (the user's pattern after new_record, or @capture)
    taken = _labels_like(project.record_store, project.name, record.label)
    record.label = free_label(record.label, taken)
    setattr(record, _CLAIM, record.label)
    if djangostore.is_django(project.record_store):
        rows.claimed_new(project.record_store, project.name, record.label)


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
    if djangostore.is_django(store):
        return connecting(lambda: djangostore.labels_starting(store, project_name, label), store._db_label)
    return {x for x in store.labels(project_name) if x.startswith(label)}


def save_record(self: Project, record: Any) -> None:
    """``Project.save_record`` under the lock; notes which process runs a record.

    Upstream writes with no lock (``smt run`` saves a record 4 times). Sumatra stores no process id,
    so while a record's status is running, ``.smt/smtlock-running/<label>`` holds "pid host":
    ``smtlock doctor`` tells a live run from one whose process was killed.
    """
    first = getattr(record, _FIRST, False)
    state = None if first else _state(record)  # a record never stored has nothing to compare with
    if _unchanged(record, state):
        return
    prepare_store(self.record_store)
    # A record whose run has ended waits for the lock as long as it takes, whatever $SMTLOCK_TIMEOUT
    # says: a timeout there would throw away a finished run's result (smt run, @smt_logged, @capture).
    ended = not ENDED_TAGS.isdisjoint(record.tags)
    before = edits.fields(record)
    # a record this process stored, of which only what a run's end changes has changed: the store's
    # save sets those columns (djangostore.save_changed), not the whole row again
    with djangostore.only_changed(_changed(record, state)), \
            _acquired(SMTLock(self, timeout=-1 if ended else None, purpose="save_record"), self, record):
        _write(self, record, claim=first)
    if first:
        delattr(record, _FIRST)
        self._most_recent = record.label
        state = _state(record)
    _remember(record, state if edits.fields(record) == before else _state(record))  # a person's edits merged in
    if any(tag in RUNNING_TAGS for tag in record.tags):
        note_running(os.path.join(self.path, SMT_DIR), record.label)
    else:
        note_ended(os.path.join(self.path, SMT_DIR), record.label)


@contextlib.contextmanager
def first_write_deferred() -> Iterator[None]:
    """Inside, ``add_record`` of a new record (``Project.new_record`` calls it before the record's
    provenance is gathered) writes nothing; the record's first ``save_record`` claims its label and
    writes it whole. ``@smt_logged`` stores each call's record first as running, with its provenance,
    in one write instead of two (upstream's first write stores it "initialized", without them)."""
    before = getattr(_deferring, "on", False)
    _deferring.on = True
    try:
        yield
    finally:
        _deferring.on = before


def _state(record: Any) -> Optional[Dict[str, bytes]]:
    """Everything a store write would take from the record, as bytes by attribute (None if one cannot
    pickle)."""
    try:
        return {k: pickle.dumps(v, protocol=4) for k, v in vars(record).items() if k not in (_CLAIM, _FIRST)}
    except Exception:
        return None


def _changed(record: Any, state: Optional[Dict[str, bytes]]) -> Optional[Set[str]]:
    """The attributes of ``record`` that changed since this process last wrote it (None: it did not, or
    cannot tell)."""
    saved = _saved.get(id(record))
    if state is None or saved is None or saved[0]() is not record:
        return None
    return {name for name in state.keys() | saved[1].keys() if state.get(name) != saved[1].get(name)}


def _unchanged(record: Any, state: Optional[Dict[str, bytes]]) -> bool:
    """Whether this process already wrote the record exactly as it is now.

    Upstream writes it again regardless: ``new_record`` writes it, then the usual
    ``with lock: add_record(record)`` and ``@capture`` write the same record a second time.
    """
    return _changed(record, state) == set()


def _remember(record: Any, state: Optional[Dict[str, bytes]]) -> None:
    """Note that the store holds ``record`` as it is now (its state, and the fields a person may edit)."""
    edits.note_stored(record)
    key = id(record)
    if state is not None:
        def forget(_: Any, key: int = key) -> None:
            _saved.pop(key, None)
        _saved[key] = (weakref.ref(record, forget), state)


def _mark_stored(method: Callable) -> Callable:
    """Records read from the store are stored records: adding one again updates it (no new label), and
    a save merges what changed since with what the store holds then (see edits.py)."""
    @functools.wraps(method)
    def wrapper(self: Project, *args: Any, **kwargs: Any) -> Any:
        found = method(self, *args, **kwargs)
        for record in found if isinstance(found, list) else [found]:
            if hasattr(record, "label"):
                setattr(record, _CLAIM, record.label)
                edits.note_stored(record)
        return found
    return wrapper


def prepare_store(store: Any) -> None:
    """Before each write: one host per SQLite/shelve store on a shared filesystem; first-use set-up
    of a store (Django configuration, migration check, SQLite tuning), done outside the lock."""
    one_host(store_path(store))
    if djangostore.is_django(store):
        connecting(store._get_models, store._db_label)


def _locked(method: Callable, purpose: str) -> Callable:
    """Run a Project method with the project's lock held (get-modify-save sequences, file writes)."""
    @functools.wraps(method)
    def wrapper(self: Project, *args: Any, **kwargs: Any) -> Any:
        prepare_store(getattr(self, "record_store", None))
        with SMTLock(self, purpose=purpose):
            return method(self, *args, **kwargs)
    return wrapper


# --- passwords ------------------------------------------------------------------------------------

def _state_without_password(orig: Callable) -> Callable:
    """``DjangoRecordStore.__getstate__``: upstream writes the store's URI, password and all, into
    ``.smt/project`` (readable by every user who can read the project). The password goes to libpq's
    password file instead (never replacing one already there), saying so once."""
    @functools.wraps(orig)
    def getstate(self: Any) -> dict:
        state = dict(orig(self))
        if is_postgres(state.get("db_file")):
            uri, line = keep_password_apart(state["db_file"])
            if line:
                print(f"smtlock: {line}", file=sys.stderr)
            state["db_file"] = uri  # not self._db_file: Django's settings for this process are keyed by it
        return state
    return getstate


def _masked_str(orig: Callable) -> Callable:
    """``DjangoRecordStore.__str__``: upstream's shows the URI with its password (``smt info``, smtweb)."""
    @functools.wraps(orig)
    def text(self: Any) -> str:
        return mask_uri(orig(self))
    return text


def _load_without_password(orig: Callable) -> Callable:
    """``sumatra.projects._load_project_from_json``: a project moved to PostgreSQL by an earlier
    smtlock (or by ``smt configure -s URI``) has the password in ``.smt/project``; it is moved out at
    its first load, once (under this host's lock of the project), saying so in one line, where this
    user may write the project (else it is left as it is, for one who may). In a project shared by a
    group it goes to that member's password file: the others then get the one line that says where
    to put theirs."""
    @functools.wraps(orig)
    def load(path: str) -> Any:
        project = _read_whole(orig, path)
        uri = getattr(getattr(project, "record_store", None), "_db_file", None)
        if not (isinstance(uri, str) and is_postgres(uri) and uri != without_password(uri)):
            return project
        project_file = os.path.join(project.path, SMT_DIR, "project")
        # This host's file lock of the project, tried once: never the store's lock (every job of a burst
        # would wait here), never waited for (busy in a burst, or held by this process: a later load does it)
        lock = FileBackend(os.path.join(project.path, SMT_DIR, LOCK_FILE_NAME))
        try:
            if lock.try_acquire():
                try:
                    _move_password_out(project_file, uri)
                finally:
                    lock.release()
        except (OSError, ValueError, SMTLockError):
            pass  # not this user's to write: whoever may write it moves the password out
        finally:
            lock.abandon()
        return project
    return load


#: pauses before reading ``.smt/project`` again after it did not parse: on a shared filesystem (FUSE,
#: NFS) a host may keep the size of a file another host has just replaced for up to a second (FUSE's
#: attribute cache), and read it cut short, though every write is a whole file renamed into place
_REREAD_S = (0.05, 0.1, 0.2, 0.4, 0.8)


def _read_whole(orig: Callable, path: str) -> Any:
    """``orig(path)``, read again while ``.smt/project`` does not parse; a file still damaged after
    :data:`_REREAD_S` raises as upstream does. Upstream: a job failed with "Unterminated string"."""
    for pause in (*_REREAD_S, None):
        try:
            return orig(path)
        except json.JSONDecodeError:
            if pause is None:
                raise
            time.sleep(pause)


def _move_password_out(project_file: str, uri: str) -> None:
    """Rewrite ``.smt/project`` (and its last-good copy) with the store's URI without its password,
    which goes to libpq's password file; unless another process did it already."""
    with open(project_file) as text:
        settings = json.load(text)
    if settings.get("record_store", {}).get("db_file") != uri:
        return
    keep_password_apart(uri)
    settings["record_store"]["db_file"] = without_password(uri)
    with atomic_open(project_file, "w") as text:
        json.dump(settings, text, indent=2)
    print(f"smtlock: moved the password of {mask_uri(uri)} out of {project_file} into {password_file()} "
          "(readable by you only)", file=sys.stderr)


# --- threads --------------------------------------------------------------------------------------

def _run_in_any_thread(orig: Callable) -> Callable:
    """``sumatra.programs.run`` (``sumatra.core.run``, which ``PythonExecutable._get_version`` calls for
    every record): upstream times the command out with ``SIGALRM``, which Python allows only in the
    main thread, so every record made in a thread pool or a dask worker fails with "signal only works
    in main thread". Outside the main thread the command runs with subprocess's own timeout, which
    needs no signal, and gives what upstream gives (-9 and no output once timed out, the process
    group killed); the main thread keeps upstream's."""
    @functools.wraps(orig)
    def run(args: Any, cwd: Optional[str] = None, shell: bool = False, kill_tree: bool = True,
            timeout: float = -1, env: Optional[dict] = None) -> Tuple[int, str, str]:
        if timeout == -1 or threading.current_thread() is threading.main_thread():
            return orig(args, cwd=cwd, shell=shell, kill_tree=kill_tree, timeout=timeout, env=env)
        with subprocess.Popen(args, cwd=cwd, shell=shell, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, start_new_session=kill_tree) as child:
            try:
                out, err = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:  # kill_tree: the command's own process group, it and its children
                    os.killpg(child.pid, signal.SIGKILL) if kill_tree else child.kill()
                except ProcessLookupError:
                    pass  # gone already
                child.communicate()
                return -9, "", ""
        return child.returncode, out.decode(get_encoding()), err.decode(get_encoding())
    return run


# --- the working copy -----------------------------------------------------------------------------

def _tracked_smt_explained(orig: Callable) -> Callable:
    """``Project.update_code`` and ``Record.register``, whose second argument is the working copy: when
    git tracks files under ``.smt`` (``git add .`` after ``smt init``), which Sumatra and smtlock rewrite
    with every record, upstream's check that the code is unchanged fails: "Code has changed, please
    commit your changes" (a traceback, though the code is unchanged) or a bare AssertionError. Then
    :class:`~smtlock.errors.TrackedStoreError` says so in one line, with the fix (git is asked only then)."""
    from sumatra.versioncontrol import UncommittedModificationsError

    @functools.wraps(orig)
    def checked(self: Any, working_copy: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return orig(self, working_copy, *args, **kwargs)
        except (AssertionError, UncommittedModificationsError) as err:
            tracked = tracked_smt_files(getattr(working_copy, "path", None) or ".", changed_only=True)
            if tracked:
                raise TrackedStoreError(tracked) from err
            raise
    return checked


# --- provenance -----------------------------------------------------------------------------------

def _memo_in_project(orig: Callable) -> Callable:
    """``Project.new_record`` (which also registers the record): as upstream, with the project's
    ``.smt`` as the place where the scans' memo is shared between processes, and each repository's
    state compared once for the record."""
    @functools.wraps(orig)
    def new_record(self: Project, *args: Any, **kwargs: Any) -> Any:
        with provenance.in_project(self.path), versioncontrol.one_record():
            return orig(self, *args, **kwargs)
    return new_record


# --- applying -------------------------------------------------------------------------------------


def _configure(original: Callable) -> Callable:
    """``DjangoConfiguration.configure``, then the patches that need Django's models.

    Upstream configures Django with ``DEBUG=True`` for every command: Django then keeps each query in
    memory (up to 9000 per connection) and, on SQLite, runs one more query per query to quote its
    parameters for that log. Only smtweb (which adds ``sumatra.web``) keeps it.

    Upstream is not thread-safe either: a second thread finds Django's settings configured while the
    first is still in ``django.setup()``, and fails with AppRegistryNotReady (two records begun at
    once in a thread pool or a dask worker). The threads configure one at a time.
    """
    @functools.wraps(original)
    def configure(self: Any) -> None:
        with _configuring:
            if self.configured:  # another thread did it while this one waited
                return
            if "sumatra.web" not in self._settings["INSTALLED_APPS"]:
                self._settings["DEBUG"] = False
            original(self)
            _patch_models()
    return configure


_configuring = threading.RLock()  # re-entrant: the set-up's migration check uses the store it sets up


def _patch_models() -> None:
    from sumatra.recordstore.django_store import models
    # Upstream saves rows again unchanged: a row get_or_create has just made, the record's row with
    # its tags (see rows.save_once).
    patch(models.BaseModel, "save", rows.save_once)
    # Upstream looks each status tag up again in every write that changes it (see rows.py).
    patch(models.TagManager, "get_or_create", rows.get_or_create_tag)
    # Upstream asks for a new record's tag links (it has none), then makes each with get_or_create.
    patch(models.TagManager, "update_tags", rows.update_tags)
    # Upstream adds each dependency and platform link with its own statement, in every write.
    rows.patch_links(models.Record)


def is_applied() -> bool:
    """Whether :func:`apply` has run in this process."""
    return is_patched("Project.add_record")


def apply() -> None:
    """Apply every patch once; calling it again does nothing."""
    if is_applied():
        return
    patch(Project, "add_record", lambda orig: add_record)
    patch(Project, "save_record", lambda orig: save_record)
    # Project.save is upstream's, without the lock: it dumps JSON straight into .smt/project, and
    # atomic_open below makes that atomic (a reader sees the old file or the new, whole; the last
    # writer's wins, as it would under the lock, since no writer reads the file again first).
    for name in ("get_record", "find_records"):
        patch(Project, name, _mark_stored)
    # Upstream: get -> modify -> save_record with no lock loses concurrent tags and comments.
    for name in ("add_tag", "remove_tag", "add_comment", "delete_record", "delete_by_tag",
                 "change_record_store", "backup"):
        patch(Project, name, functools.partial(_locked, purpose=name))
    # Upstream: open(path, 'w') on .smt/project and .smt/labels (see atomic_open).
    for module in (sumatra.projects, sumatra.commands):
        if getattr(module, "open", None) is not atomic_open:
            setattr(module, "open", atomic_open)  # noqa: B010 (a module attribute mypy cannot see)

    patch(sumatra.programs, "run", _run_in_any_thread)
    # Upstream's load_project re-reads every system mime.types file each time (see MimeTypesOnce).
    if not isinstance(sumatra.projects.mimetypes, MimeTypesOnce):
        setattr(sumatra.projects, "mimetypes", MimeTypesOnce())  # noqa: B010 (a module attribute mypy cannot see)

    # Upstream repeats for every record a dependency scan, `python --version`, `file -b`, `uname -p`
    # and an HTTP probe whose answers rarely change: remembered while what they read is unchanged
    # (see provenance.py); the project's memo is in its .smt, so new_record says which project.
    patch(Project, "new_record", _memo_in_project)
    patch(Project, "update_code", _tracked_smt_explained)
    patch(sumatra.records.Record, "register", _tracked_smt_explained)
    patch(sumatra.dependency_finder.python, "run_script", provenance.run_script)
    # Upstream tokenizes its own module again for every record's versions script (inspect.getsource).
    if not isinstance(sumatra.dependency_finder.python.inspect, provenance.SourceOnce):
        setattr(sumatra.dependency_finder.python, "inspect", provenance.SourceOnce())  # noqa: B010
    # Upstream lists site-packages for each dependency of every record (its egg heuristic).
    if not isinstance(sumatra.dependency_finder.python.os, provenance.ListingOnce):
        setattr(sumatra.dependency_finder.python, "os", provenance.ListingOnce())  # noqa: B010
    patch(sumatra.programs.Executable, "_get_version", provenance.executable_version)
    patch(sumatra.launch.LaunchMode, "get_platform_information", provenance.platform_information)
    # Upstream asks git in 7 subprocesses for every record (check-ignore, 4 diffs, cat-file, ls-files)
    # and reads its configuration files for every working copy made: each answer remembered while
    # nothing git reads for it has changed (see versioncontrol.py).
    patch(sumatra.versioncontrol._git, "findrepo", versioncontrol.findrepo)
    patch(sumatra.versioncontrol, "get_working_copy", versioncontrol.get_working_copy)
    for name in ("has_changed", "diff", "current_version", "contains", "get_username"):
        patch(sumatra.versioncontrol._git.GitWorkingCopy, name, versioncontrol.remembered)
    patch(sumatra.versioncontrol._git.GitRepository, "_get_upstream", versioncontrol.remembered)

    patch(ShelveRecordStore, "accepts_uri", lambda orig: classmethod(shelf.accepts_uri))
    patch(ShelveRecordStore, "__init__", lambda orig: shelf.locked_init)
    for name in ("list_projects", "has_project", "get", "list", "labels", "delete", "delete_by_tag", "most_recent"):
        patch(ShelveRecordStore, name, shelf.fresh)
    # Upstream's save replaces the stored record whole: a tag or comment added while the job ran is lost.
    patch(ShelveRecordStore, "save", lambda orig: shelf.fresh(edits.merged_shelve_save(orig)))

    if DjangoRecordStore is not None:
        djangostore.tune_registered_databases()
        patch(DjangoRecordStore, "save", lambda orig: djangostore.hygiene(djangostore.save))
        for name in ("get", "list", "most_recent", "has_project", "list_projects"):
            patch(DjangoRecordStore, name, djangostore.hygiene)
        # Upstream deletes each record in a transaction of its own, unfenced (see djangostore.deleting).
        for name in ("delete", "delete_by_tag"):
            patch(DjangoRecordStore, name, lambda orig: djangostore.hygiene(djangostore.deleting(orig)))
        # Upstream builds every record's model object, with its related rows, to read the labels
        # (`smt list`, and `.smt/labels` at the end of every `smt run`): the label column alone.
        patch(DjangoRecordStore, "labels", lambda orig: djangostore.hygiene(djangostore.labels))
        # Upstream looks up ~10 never-changing rows with get_or_create in every write (see rows.py).
        patch(DjangoRecordStore, "_get_db_obj", rows.get_db_obj)
        patch(DjangoRecordStore, "_get_db_project", rows.get_db_project)
        # Upstream looks for the record by label; a label the write has just claimed is new. Upstream's
        # save then writes the whole record over the row: a person's tag or comment on a running job is
        # lost; it is merged with the row found (see edits.py).
        patch(DjangoRecordStore, "_get_db_record", lambda orig: edits.merged_db_record(rows.get_db_record(orig)))
        # Upstream's sync (smt sync, smt configure --store) reads and writes two Django stores in one
        # process, whose tag links all live in the first store's database: records get others' tags.
        patch(DjangoRecordStore, "sync", moves.sync)
        patch(DjangoConfiguration, "uri_to_db", lambda orig: djangostore.uri_to_db)
        patch(DjangoConfiguration, "_create_databases", lambda orig: djangostore.create_databases)
        patch(DjangoConfiguration, "configure", _configure)
        patch(DjangoRecordStore, "__getstate__", _state_without_password)
        patch(DjangoRecordStore, "__str__", _masked_str)
        patch(sumatra.projects, "_load_project_from_json", _load_without_password)
        from sumatra.recordstore.django_store import db_config
        if db_config.configured:  # the store was used before smtlock was imported
            _patch_models()
        os.register_at_fork(before=djangostore.before_fork, after_in_child=djangostore.after_fork_in_child)
        from django.db.backends.signals import connection_created
        connection_created.connect(djangostore.sqlite_pragmas, dispatch_uid="smtlock-sqlite-pragmas")
