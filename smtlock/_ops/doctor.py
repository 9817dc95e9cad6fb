"""``smtlock doctor``: check a project that concurrency may have damaged, and repair it.

Each check gives one line with counts. Without ``repair`` nothing is changed; with it every repair
runs under the project's SMTLock, and the database ones in one transaction. No record is deleted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List

from .._lock.backends import CLOCK_SLOP_S, FILE_MODE, HOLDER_SUFFIX, Holder, LeaseBackend, PostgresBackend, probe
from .._lock.filesystem import mount_of
from .._lock.lock import SMTLock
from .._lock.paths import (
    LAST_GOOD_SUFFIX,
    LEASE_SUFFIX,
    LOCK_FILE_NAME,
    MOST_RECENT,
    RUNNING_DIR,
    SMT_DIR,
    postgres_uri,
    project_root,
)
from .._postgres.client import mask_uri
from .._sumatra import djangostore, uniques
from .._sumatra.patches import RUNNING_TAGS, free_label
from .._sumatra.project import load, store_path, tracked_smt_files
from ..errors import StoreError

__all__ = ["DEDUPLICATED_MODELS", "Finding", "diagnose", "duplicate_rows", "shared_labels",
           "merge_duplicate_rows"]

#: Sumatra's Django models written with a plain get_or_create on tables without unique constraints:
#: two racing processes create two identical rows, and every later get() raises MultipleObjectsReturned.
DEDUPLICATED_MODELS = ("Executable", "Repository", "LaunchMode", "Datastore", "ParameterSet",
                       "DataKey", "Dependency", "PlatformInformation")
OK, WARN, PROBLEM, REPAIRED = "ok", "warning", "problem", "repaired"


@dataclass
class Finding:
    """The outcome of one check."""
    check: str
    status: str  # ok, warning, problem, repaired
    detail: str
    count: int = 0

    def line(self) -> str:
        return f"{self.status:9} {self.check:18} {self.detail}"


def _exit_status(findings: List[Finding]) -> int:
    """0 when nothing is left to fix (warnings allowed), 1 otherwise."""
    return 1 if any(f.status == PROBLEM for f in findings) else 0


# --- store queries (the stress harness uses these too) --------------------------------------------

def _identity_fields(model: Any) -> list:
    """The columns get_or_create matches on: every concrete column but the key and record links."""
    return [f.attname for f in uniques.identity_fields(model)]


def _duplicate_groups(store: Any, model: Any) -> List[List[int]]:
    """Ids of rows identical but for their id, a list per group, lowest id first."""
    from django.db.models import Count
    fields = _identity_fields(model)
    rows = model.objects.using(store._db_label)
    groups = rows.values(*fields).annotate(n=Count("id")).filter(n__gt=1)
    return [sorted(rows.filter(**group_fields).values_list("id", flat=True))
            for group_fields in ({k: v for k, v in g.items() if k != "n"} for g in groups)]


def duplicate_rows(store: Any) -> Dict[str, int]:
    """Extra rows per Sumatra table (rows identical to another but for their id); Django stores only."""
    models = store._get_models()
    extra = {name: sum(len(g) - 1 for g in _duplicate_groups(store, getattr(models, name)))
             for name in DEDUPLICATED_MODELS}
    return {name: n for name, n in extra.items() if n}


def shared_labels(store: Any, project_name: str) -> Dict[str, int]:
    """Labels carried by more than one record row of the project, with their row counts."""
    from django.db.models import Count
    rows = (store._manager.filter(project__id=project_name).values("label")
            .annotate(n=Count("db_id")).filter(n__gt=1))
    return {row["label"]: row["n"] for row in rows}


def merge_duplicate_rows(store: Any) -> Dict[str, int]:
    """Merge each group of identical rows into its lowest id: repoint every foreign key and
    many-to-many row, then delete the extra rows. Call inside a transaction."""
    models = store._get_models()
    merged: Dict[str, int] = {}
    for name in DEDUPLICATED_MODELS:
        model = getattr(models, name)
        for keep, *extras in _duplicate_groups(store, model):
            _repoint(store._db_label, model, keep, extras)
            model.objects.using(store._db_label).filter(id__in=extras).delete()
            merged[name] = merged.get(name, 0) + len(extras)
    return merged


def _repoint(using: str, model: Any, keep: int, extras: List[int]) -> None:
    for rel in model._meta.related_objects:
        if rel.many_to_many:
            through = rel.through.objects.using(using)
            ours, other = rel.field.m2m_reverse_field_name(), rel.field.m2m_field_name()
            linked = set(through.filter(**{ours: keep}).values_list(f"{other}_id", flat=True))
            for row in through.filter(**{f"{ours}__in": extras}):
                if getattr(row, f"{other}_id") in linked:
                    row.delete()  # the record already links to the row we keep
                else:
                    linked.add(getattr(row, f"{other}_id"))
                    through.filter(pk=row.pk).update(**{ours: keep})
        else:
            rel.related_model.objects.using(using).filter(**{f"{rel.field.name}__in": extras}) \
                .update(**{rel.field.name: keep})


# --- the checks -----------------------------------------------------------------------------------

def _check_project_file(smt: Path, repair: bool) -> Finding:
    file, copy = smt / "project", smt / ("project" + LAST_GOOD_SUFFIX)
    try:
        json.loads(file.read_text())
        return Finding("project file", OK, f"{file} parses")
    except (OSError, ValueError) as err:
        problem = f"{file} is unreadable ({type(err).__name__})"
    try:
        json.loads(copy.read_text())
    except (OSError, ValueError):
        # smt init refuses while a project file exists, readable or not: it must be moved aside
        return Finding("project file", PROBLEM, f"{problem} and there is no good copy to restore; the "
                       f"records are safe in the store. Make a new project file that uses it: `mv {file} "
                       f"{file}.broken && smt init -s {_store_hint(smt)} {_name_hint(smt)}` (then "
                       "`smtlock enable` again if you used it)", 1)
    if not repair:
        return Finding("project file", PROBLEM, f"{problem}; `--repair` restores {copy.name}", 1)
    # the copy keeps the settings; the most recent label it holds may be older than the store's (the
    # copy is rewritten only when a setting changes): without one, Sumatra asks the store
    settings = json.loads(copy.read_text())
    if isinstance(settings, dict) and MOST_RECENT in settings:
        settings[MOST_RECENT] = None
    tmp = smt / "project.restoring"
    tmp.write_text(json.dumps(settings, indent=2))
    shutil.copymode(copy, tmp)
    os.replace(tmp, file)
    return Finding("project file", REPAIRED, f"{problem}: restored from {copy.name}", 1)


def _store_hint(smt: Path) -> str:
    """The store a lost project file most likely named: Sumatra's default SQLite file, if it is there."""
    return str(smt / "records") if (smt / "records").exists() else "STORE"


def _name_hint(smt: Path) -> str:
    """The project's name, read from the default SQLite store when it can be; else NAME."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{smt / 'records'}?mode=ro", uri=True)) as db:
            names = [row[0] for row in db.execute("SELECT id FROM django_store_project")]
    except sqlite3.Error:
        names = []
    return names[0] if len(names) == 1 else "NAME"


def _check_writable(root: Path) -> Finding:
    """Every write takes the lock under .smt: a read-only .smt (or mount) makes every smt run fail."""
    smt = root / SMT_DIR
    if not os.access(smt, os.W_OK):
        return Finding("writable", PROBLEM, f"{smt} is not writable here ({_why_not_writable(smt)}): every "
                       "smt run and record write fails; make it writable or run from a writable copy", 1)
    # open the lock's files as a write would, without locking: the doctor changes nothing unasked
    for name in (LOCK_FILE_NAME, LOCK_FILE_NAME + HOLDER_SUFFIX):
        try:
            os.close(os.open(smt / name, os.O_RDWR | os.O_CREAT, FILE_MODE))
        except OSError as err:
            return Finding("writable", PROBLEM, f"cannot open {smt / name} for writing: {err.strerror} (every "
                           "smt run here fails; make it writable by everyone who runs jobs)", 1)
    return Finding("writable", OK, f"{smt} and its lock files are writable")


def _why_not_writable(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "a read-only filesystem"
    except OSError:
        pass
    return f"mode {folder.stat().st_mode & 0o777:o}, owner uid {folder.stat().st_uid}"


def _check_duplicates(store: Any, repair: bool) -> Finding:
    found = duplicate_rows(store)
    if not found:
        return Finding("duplicate rows", OK, "no duplicate rows in Sumatra's tables")
    total, names = sum(found.values()), ", ".join(f"{k} {v}" for k, v in sorted(found.items()))
    if not repair:
        return Finding("duplicate rows", PROBLEM, f"{total} extra rows ({names}): every write that uses "
                       "them fails with MultipleObjectsReturned; `--repair` merges them", total)
    merge_duplicate_rows(store)
    return Finding("duplicate rows", REPAIRED, f"merged {total} extra rows ({names}); no record deleted",
                   total)


def _check_uniques(store: Any, repair: bool, duplicates_left: bool) -> Finding:
    """Sumatra's get_or_create tables with smtlock's unique indexes (:mod:`smtlock._sumatra.uniques`): without
    them a writer not under smtlock's lock (a plain-Sumatra folder, smtweb) can add duplicate rows."""
    from django.db import connections
    connection = connections[store._db_label]
    absent = uniques.missing(connection)
    if not absent:
        return Finding("unique indexes", OK, f"Sumatra's {len(uniques.UNIQUE_MODELS)} get_or_create tables (the "
                       "records' labels included) have unique indexes: no writer can add a duplicate row")
    tables, n = ", ".join(absent), len(absent)
    risk = f"{n} tables lack smtlock's unique index ({tables}): a writer without smtlock can add duplicate rows"
    if duplicates_left:
        return Finding("unique indexes", WARN, f"{risk}; they are added once the duplicate rows are merged "
                       "and shared labels are given their own (`--repair`)", n)
    if not uniques.may_add(connection):
        return Finding("unique indexes", WARN, f"{risk}; this role may not add them (it does not own the "
                       "tables): their owner can, with `smtlock doctor --repair`", n)
    if not repair:
        return Finding("unique indexes", WARN, f"{risk}; `--repair` adds them", n)
    outcome = uniques.add(connection, absent)
    refused = {name: why for name, why in outcome.items() if why != "added"}
    if refused:
        return Finding("unique indexes", PROBLEM, "could not add the unique index of " + "; ".join(
            f"{name} ({why})" for name, why in sorted(refused.items())), len(refused))
    return Finding("unique indexes", REPAIRED, f"added the unique index of {n} tables ({tables}): no writer can "
                   "add a duplicate row now", n)


def _check_labels(store: Any, project_name: str, repair: bool) -> Finding:
    shared = shared_labels(store, project_name)
    if not shared:
        return Finding("shared labels", OK, "every record has its own label")
    extra = sum(n - 1 for n in shared.values())
    if not repair:
        return Finding("shared labels", PROBLEM, f"{extra} records share a label with another "
                       f"({', '.join(sorted(shared)[:3])}...); `--repair` gives each its own", extra)
    taken = set(store._manager.filter(project__id=project_name).values_list("label", flat=True))
    for label in shared:
        for db_id in list(store._manager.filter(project__id=project_name, label=label)
                          .order_by("db_id").values_list("db_id", flat=True))[1:]:
            new = free_label(label, taken)
            taken.add(new)
            store._manager.filter(db_id=db_id).update(label=new)
    return Finding("shared labels", REPAIRED, f"gave {extra} records their own label (suffix _N)", extra)


def _check_running(project: Any, repair: bool) -> Finding:
    store, notes = project.record_store, Path(project.path) / SMT_DIR / RUNNING_DIR
    running = {}
    for tag in RUNNING_TAGS:
        for record in store.list(project.name, tags=[tag]):
            running[record.label] = record
    if not running:
        return Finding("running records", OK, "no record is stuck as running")
    gone, unknown, host = [], [], socket.gethostname()
    for label, record in running.items():
        note = notes / label.replace("/", "_")
        pid, _, where = note.read_text().strip().partition(" ") if note.exists() else ("", "", "")
        if where == host and pid.isdigit() and not _alive(int(pid)):
            gone.append(label)
        elif where != host:
            unknown.append(record)
    if unknown and not gone:
        oldest = max(time.time() - r.timestamp.timestamp() for r in unknown) / 3600
        return Finding("running records", WARN, f"{len(unknown)} records tagged running with no process "
                       f"known on this host (oldest started {oldest:.1f} h ago); left as they are",
                       len(unknown))
    if not gone:
        return Finding("running records", OK, f"{len(running)} records running, their processes alive")
    if not repair:
        return Finding("running records", PROBLEM, f"{len(gone)} records tagged running whose process "
                       "is gone; `--repair` tags them _killed_", len(gone))
    for label in gone:
        project.add_tag(label, "_killed_")  # a status tag: replaces _running_
        (notes / label.replace("/", "_")).unlink(missing_ok=True)
    return Finding("running records", REPAIRED, f"tagged {len(gone)} records _killed_", len(gone))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _check_sqlite(path: str) -> Finding:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            result = db.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as err:
        return Finding("sqlite integrity", PROBLEM, f"{path} cannot be checked: {err}", 1)
    if result == "ok":
        return Finding("sqlite integrity", OK, f"{path}: integrity_check ok")
    return Finding("sqlite integrity", PROBLEM, f"{path}: {result} (not repairable here; restore a backup)", 1)


def _check_shelve(store: Any, project_name: str) -> Finding:
    try:
        n = len(store.list(project_name))
    except Exception as err:  # a truncated pickle raises anything from EOFError to UnpicklingError
        return Finding("shelve store", PROBLEM, f"{store._shelf_name} unreadable: {type(err).__name__} "
                       "(not repairable here; restore a backup)", 1)
    return Finding("shelve store", OK, f"{store._shelf_name}: {n} records readable")


def _check_holder(smt: Path, repair: bool) -> Finding:
    holder = smt / (LOCK_FILE_NAME + HOLDER_SUFFIX)
    text = holder.read_text().strip() if holder.exists() else ""
    if not text:
        return Finding("lock holder", OK, "the lock is free")
    who = Holder.parse(text)
    if who is not None and who.host == socket.gethostname() and not _alive(who.pid):
        if repair:
            holder.write_text("")
            return Finding("lock holder", REPAIRED, f"cleared a stale holder record ({text})", 1)
        return Finding("lock holder", WARN, f"the holder recorded ({text}) is gone; the lock itself is "
                       "free (the kernel released it); `--repair` clears the record", 1)
    return Finding("lock holder", OK, f"held by {text}")


def _check_lease(smt: Path, repair: bool) -> Finding:
    """The lock across hosts on a shared filesystem: a lease left by a holder that died."""
    lease = smt / (Path(LOCK_FILE_NAME).stem + LEASE_SUFFIX)
    try:
        who = lease.read_text().splitlines()[0]
        expired = time.time() - lease.stat().st_mtime
    except (OSError, IndexError):
        return Finding("lease", OK, "no lease is held across hosts")
    if expired <= 0:
        return Finding("lease", OK, f"held across hosts by {who} (lease ends in {-expired:.0f} s)")
    if expired <= CLOCK_SLOP_S or not repair:
        return Finding("lease", WARN, f"left by {who}, expired {expired:.0f} s ago: its holder is gone; the "
                       f"next lock breaks it (or `--repair`)", 1)
    LeaseBackend(str(lease)).break_if_expired()
    return Finding("lease", REPAIRED, f"broke the lease left by {who} (expired {expired:.0f} s ago)", 1)


def _check_tracked(root: Path) -> Finding:
    """Files under ``.smt`` tracked by git: every record then fails Sumatra's check that the code is
    unchanged. Not repaired here: the index is the user's."""
    tracked = tracked_smt_files(root)
    if not tracked:
        return Finding("version control", OK, f"git tracks nothing under {SMT_DIR}")
    return Finding("version control", PROBLEM, f"git tracks {', '.join(tracked)}: each record changes the store, "
                   "so Sumatra's check that the code is unchanged fails every record; run `git rm -r --cached "
                   f"{SMT_DIR}`, add `{SMT_DIR}/` to .gitignore, and commit (--repair leaves your git index alone)",
                   len(tracked))


def _check_filesystem(smt: Path) -> Finding:
    mount = mount_of(smt)
    if mount.shared:
        return Finding("filesystem", WARN, f"{smt} is on {mount.fstype} ({mount.mountpoint}), which other "
                       "hosts may share: file locks may not exclude across them and SQLite must not be "
                       "written there by several; use `smtlock postgres URL`", 1)
    return Finding("filesystem", OK, f"{smt} is on a local filesystem ({mount.fstype})")


def diagnose(path: str = ".", repair: bool = False) -> List[Finding]:
    """Run every check on the project at or above ``path``; with ``repair``, fix what can be fixed."""
    root = project_root(path)
    smt = root / SMT_DIR
    # the holder record and the lease first: taking the lock (to repair) rewrites the one and would
    # break an expired other
    findings = [_check_project_file(smt, repair), _check_holder(smt, repair), _check_lease(smt, repair)]
    writable = _check_writable(root)
    findings.append(writable)
    if writable.status == PROBLEM:
        findings.append(Finding("store", WARN, "not checked: the project cannot be written, so nothing "
                                "can be repaired (see writable)"))
    elif findings[0].status != PROBLEM:
        project = load(root)
        server = _check_server(postgres_uri(project.record_store))
        if server is not None:
            findings.append(server)
        if server is None or server.status != PROBLEM:
            with SMTLock(project) if repair else djangostore.reading():
                findings += _store_checks(project, project.record_store, repair)
    findings.append(_check_tracked(root))
    findings.append(_check_filesystem(smt))
    return findings


def _check_server(uri: str | None) -> Finding | None:
    """A PostgreSQL store's server: one try to connect (seconds, not a job's wait for it)."""
    if not uri:
        return None
    try:
        why = probe(uri)
    except StoreError as err:  # a refused login
        return Finding("server", PROBLEM, str(err), 1)
    if why is not None:
        return Finding("server", PROBLEM, f"PostgreSQL at {mask_uri(uri)} is not reachable ({why}); the store "
                       "was not checked; if it is your own server: smtlock server start", 1)
    return Finding("server", OK, f"PostgreSQL at {mask_uri(uri)} is reachable")


def _check_server_holder(uri: str) -> Finding:
    """A PostgreSQL store's lock may be held on another host: ask the server, not the local file."""
    who = PostgresBackend(uri).holder()
    return Finding("server lock", OK, f"held by {who}" if who else "the store's lock is free on the server")


def _store_checks(project: Any, store: Any, repair: bool) -> List[Finding]:
    findings = []
    uri = postgres_uri(store)
    if uri:
        findings.append(_check_server_holder(uri))
    if hasattr(store, "_db_file"):  # Django
        from django.db import connections, transaction
        store._get_models()
        if store_path(store):
            findings.append(_check_sqlite(store._db_file))
        with transaction.atomic(using=store._db_label):
            if repair and uri:  # held as a write's transaction is: a host cut off inside it holds up no other
                djangostore.fence(connections[store._db_label], uri)
            findings.append(_check_duplicates(store, repair))
            findings.append(_check_labels(store, project.name, repair))
            findings.append(_check_uniques(store, repair, PROBLEM in (findings[-1].status, findings[-2].status)))
    elif hasattr(store, "_shelf_name"):
        findings.append(_check_shelve(store, project.name))
    findings.append(_check_running(project, repair))
    return findings


def main(args: Any) -> int:
    """``smtlock doctor``: print a line per check (or JSON); exit 0 healthy, 1 problems left."""
    findings = diagnose(args.path, repair=args.repair)
    if args.json:
        print(json.dumps({"findings": [asdict(f) for f in findings], "exit": _exit_status(findings)},
                         indent=2))
    else:
        print("\n".join(f.line() for f in findings))
    return _exit_status(findings)
