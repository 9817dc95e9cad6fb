"""Unique indexes on Sumatra's tables, so that no writer can poison a store.

Upstream's ``get_or_create_from_sumatra_object`` is a plain ``get_or_create`` on tables without
unique constraints: two writers that race (plain-Sumatra folders, smtweb, anyone not under
smtlock's lock) each find nothing and each insert the same row, and from then on every ``get()`` of
it raises MultipleObjectsReturned. With a unique index over exactly the columns that
``get_or_create`` matches on, the second INSERT fails and Django's ``get_or_create`` finds the first
writer's row instead: a racer gets the row or an error, never a second copy.

The index is added to a clean store only (a table with duplicates refuses it: ``smtlock doctor
--repair`` merges them, then adds it), where this process may (PostgreSQL: its role owns the
tables; SQLite: it may write the file). NULLs count as equal, as ``get_or_create``'s ``IS NULL``
does; on PostgreSQL text is indexed by its md5, since a btree entry may not exceed ~2.7 kB and a
diff or a parameter file can.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, ContextManager, Dict, List, Optional, Set

__all__ = ["UNIQUE_MODELS", "identity_fields", "index_name", "index_sql", "missing", "may_add", "to_add", "add"]

#: the models upstream writes with a plain get_or_create (Tag and TaggedItem are unique upstream),
#: and the record, which upstream looks up by (project, label) and makes when it finds none: two
#: writers of one label each make a row, and every later get() of that label fails. With the index
#: the second one's INSERT fails, and upstream's add_record retries it as an update of the first
#: (what upstream does with a label written twice: the later write replaces the earlier)
UNIQUE_MODELS = ("Executable", "Repository", "LaunchMode", "Datastore", "ParameterSet",
                 "DataKey", "Dependency", "PlatformInformation", "Record")
_IDENTITY = {"Record": ("project", "label")}
_TEXT = frozenset({"CharField", "TextField", "URLField", "SlugField"})
_said: Set[str] = set()  # stores this process has said it may not harden


def _nothing(cursor: Any) -> ContextManager[Any]:
    return contextlib.nullcontext()


def _models() -> List[Any]:
    from sumatra.recordstore.django_store import models
    return [getattr(models, name) for name in UNIQUE_MODELS]


def identity_fields(model: Any) -> List[Any]:
    """The fields ``get_or_create_from_sumatra_object`` matches on: every concrete column but the
    key and the link to the record that output a data key (a record: its project and label)."""
    name = model.__name__
    if name in _IDENTITY:
        return [model._meta.get_field(field) for field in _IDENTITY[name]]
    return [f for f in model._meta.concrete_fields if not f.primary_key and f.name != "output_from_record"]


def index_name(model: Any) -> str:
    """``smtlock_unique_<table>``."""
    return f"smtlock_unique_{model._meta.db_table}"


def _column(connection: Any, field: Any) -> str:
    """The index's expressions for one field: equal values give equal entries, NULL included."""
    column = connection.ops.quote_name(field.column)
    text = (field.target_field if field.is_relation else field).get_internal_type() in _TEXT
    postgres = connection.vendor == "postgresql"
    value = f"md5({column})" if postgres and text else column
    if not field.null:
        return f"({value})"
    empty = "''" if text or not postgres else "'epoch'"  # a nullable DateTimeField on PostgreSQL
    return f"({column} IS NULL), (COALESCE({value}, {empty}))"


def index_sql(connection: Any, model: Any) -> str:
    """``CREATE UNIQUE INDEX IF NOT EXISTS`` over ``model``'s identity fields."""
    quote = connection.ops.quote_name
    columns = ", ".join(_column(connection, field) for field in identity_fields(model))
    return f"CREATE UNIQUE INDEX IF NOT EXISTS {quote(index_name(model))} ON {quote(model._meta.db_table)} ({columns})"


def missing(connection: Any) -> List[str]:
    """The models whose table exists without its unique index, in one query."""
    models = _models()
    names = [index_name(model) for model in models]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT t.name FROM unnest(%s::text[], %s::text[]) AS t(name, idx)"
                           " WHERE to_regclass(quote_ident(t.name)) IS NOT NULL"
                           " AND to_regclass(quote_ident(t.idx)) IS NULL",
                           [[m._meta.db_table for m in models], names])
            tables = {row[0] for row in cursor.fetchall()}
        elif connection.vendor == "sqlite":
            cursor.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index')")
            found = set(cursor.fetchall())
            tables = {m._meta.db_table for m, name in zip(models, names)
                      if ("table", m._meta.db_table) in found and ("index", name) not in found}
        else:
            return []
    return [name for name, model in zip(UNIQUE_MODELS, models) if model._meta.db_table in tables]


def may_add(connection: Any) -> bool:
    """Whether this process may add the indexes: on PostgreSQL its role owns every table (or is a
    member of the owner), on SQLite it may write the file."""
    if connection.vendor == "sqlite":
        return os.access(connection.settings_dict["NAME"], os.W_OK)
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(bool_and(pg_has_role(relowner, 'USAGE')), false) FROM pg_class"
                       " WHERE oid = ANY(ARRAY(SELECT to_regclass(quote_ident(t)) FROM unnest(%s::text[]) t))",
                       [[m._meta.db_table for m in _models()]])
        return bool(cursor.fetchone()[0])


def to_add(connection: Any) -> List[str]:
    """The models whose index is missing and that this process may add; where it may not, it says
    so once per process on stderr (the write goes on: only the protection from other writers is
    missing)."""
    absent = missing(connection)
    if not absent or may_add(connection):
        return absent
    store = connection.settings_dict.get("NAME") or "the store"
    if store not in _said and connection.vendor == "postgresql":
        _said.add(store)
        print(f"smtlock: the role {connection.settings_dict.get('USER')} does not own Sumatra's tables in "
              f"database {store}, so it cannot add the unique indexes that stop writers without smtlock from "
              "adding duplicate rows; their owner can, with `smtlock doctor --repair`", file=sys.stderr)
    return []


def add(connection: Any, names: List[str], inside: Optional[Callable[[Any], ContextManager[Any]]] = None
        ) -> Dict[str, str]:
    """Add the unique index of each model in ``names``, each in a transaction (a savepoint inside the
    caller's, as the doctor's repair); each one's outcome: "added", or why not (a table with duplicate
    rows refuses it). ``inside(cursor)``: a context each CREATE runs in (djangostore's, that fails
    rather than waits for a busy store)."""
    from django.db import DatabaseError, transaction
    models = dict(zip(UNIQUE_MODELS, _models()))
    outcome: Dict[str, str] = {}
    if connection.vendor == "postgresql" and connection.in_atomic_block:
        with connection.cursor() as cursor:  # rows repointed in this transaction (a repair): check them
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # now, else the index is refused (pending triggers)
    for name in names:
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor, \
                    (inside or _nothing)(cursor):
                cursor.execute(index_sql(connection, models[name]))
            outcome[name] = "added"
        except DatabaseError as error:  # duplicates (IntegrityError), a busy table, no privilege
            outcome[name] = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return outcome
