"""The indexes smtlock adds to Sumatra's tables so that a write or a listing reads only the rows it
finds, however many records the store holds (on a store that was never analysed, too).

Upstream's tables have none of them, and each lookup they serve reads the whole table:

* ``smtlock_record_label``: a record by its label (the label claim, the record's own row); on
  PostgreSQL in the byte order ``LIKE`` needs, as Django's own ``_like`` indexes are;
* ``smtlock_taggeditem_object``: a record's tag links (every status save of ``smt run`` updates
  them). Upstream filters on ``content_type_id`` and ``object_id``; without statistics SQLite picks
  the index on ``content_type_id``, which every link matches: 35 ms under the lock at 100,000
  records. Over both columns it matches one record's links;
* PostgreSQL only, ``smtlock_parameterset_content`` and ``smtlock_datakey_path``: a parameter set
  by its content and a data key by its path. The unique indexes (:mod:`~smtlock._sumatra.uniques`) are
  on ``md5(column)``, which ``column = value`` cannot use (a sequential scan under the lock); a hash
  index takes any length of text and answers ``=``. On SQLite the unique indexes are on the columns.

Each is only a matter of speed: it is added where this process may (PostgreSQL: its role owns the
table; SQLite: it may write the file), and a store busy with a reader or a long write is not waited
for (a later connection adds it).
"""

from __future__ import annotations

import os
from typing import Any, Callable, ContextManager, Dict, List, Optional

__all__ = ["LABEL_INDEX", "definitions", "lacking", "create"]

LABEL_INDEX = "smtlock_record_label"


def definitions(connection: Any) -> Dict[str, tuple]:
    """Each index for ``connection``'s kind of database: name -> (table, what follows ``ON table``)."""
    from sumatra.recordstore.django_store.models import DataKey, ParameterSet, Record, TaggedItem
    quote = connection.ops.quote_name

    def columns(model: Any, *names: str) -> List[str]:
        return [quote(model._meta.get_field(name).column) for name in names]
    postgres = connection.vendor == "postgresql"
    project, label = columns(Record, "project", "label")
    found = {
        LABEL_INDEX: (Record, f"({project}, {label}{' varchar_pattern_ops' if postgres else ''})"),
        "smtlock_taggeditem_object": (TaggedItem, "({}, {})".format(*columns(TaggedItem, "object_id", "content_type"))),
    }
    if postgres:
        found["smtlock_parameterset_content"] = (ParameterSet, "USING hash ({})".format(*columns(ParameterSet,
                                                                                                 "content")))
        found["smtlock_datakey_path"] = (DataKey, "USING hash ({})".format(*columns(DataKey, "path")))
    return {name: (model._meta.db_table, on) for name, (model, on) in found.items()}


def lacking(connection: Any) -> List[str]:
    """The indexes whose table exists without them and that this process may add, in one query."""
    wanted = definitions(connection)
    names, tables = list(wanted), [table for table, _ in wanted.values()]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT t.name FROM unnest(%s::text[], %s::text[]) AS t(name, tab)"
                           " JOIN pg_class c ON c.oid = to_regclass(quote_ident(t.tab))"
                           " WHERE to_regclass(quote_ident(t.name)) IS NULL AND pg_has_role(c.relowner, 'USAGE')",
                           [names, tables])
            return sorted(row[0] for row in cursor.fetchall())
        if connection.vendor == "sqlite" and os.access(connection.settings_dict["NAME"], os.W_OK):
            cursor.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'index')")
            found = set(cursor.fetchall())
            return sorted(name for name, table in zip(names, tables)
                          if ("table", table) in found and ("index", name) not in found)
    return []


def create(connection: Any, names: List[str], inside: Optional[Callable[[Any], ContextManager[Any]]] = None) -> None:
    """Add each index in ``names``, each in a transaction of its own; ``inside(cursor)``: a context each
    CREATE runs in (djangostore's, that fails rather than waits for a busy store). One that cannot be
    added now (a busy store) is left for a later connection."""
    import contextlib

    from django.db import DatabaseError, transaction
    wanted = definitions(connection)
    quote = connection.ops.quote_name
    for name in names:
        table, on = wanted[name]
        try:
            with transaction.atomic(using=connection.alias), connection.cursor() as cursor, \
                    (inside or (lambda cursor: contextlib.nullcontext()))(cursor):
                cursor.execute(f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(table)} {on}")
        except DatabaseError:
            pass
