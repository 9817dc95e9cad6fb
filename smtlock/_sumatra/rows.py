"""Fewer queries in a Django store's write, so the lock is held briefly: a per-process memory of the
rows a write looks up, and no row saved twice unchanged within one write.

Upstream's ``DjangoRecordStore.save`` runs a get_or_create (a SELECT, and an INSERT for a value not
stored yet) for each of about ten values of every record (executable, repository, launch mode,
datastores, parameter set, platform information, dependencies) and looks up the project's row,
all while the lock is held: about 250 µs of Python each on SQLite, a network round trip each on
PostgreSQL. Sumatra never changes these rows once made, so a process remembers which row each value
maps to (for the :data:`ROWS_KEPT` values it used last) and asks again only for a value it has not
seen. It asks before the lock (:func:`prefetch`); a value not stored yet (each call of a sweep has a
parameter set of its own) is then made under the lock in one INSERT that the table's unique index
lets through only if no one made it meanwhile (:func:`_insert_new`).

Two rules keep a remembered row true:

* a row is remembered only once the transaction that found or made it has committed
  (``transaction.on_commit``): a rolled-back INSERT is never remembered;
* a remembered row can disappear only when ``smtlock doctor --repair`` merges duplicate rows. The
  write that then refers to it fails at commit on its foreign key, having written nothing; the write
  path calls :func:`forget` and runs the write again, asking the store for every value (see
  :func:`smtlock._sumatra.djangostore.transaction`).

Upstream also saves rows again right after making them: ``_get_db_obj`` saves a row that
``get_or_create`` has just inserted, and ``save`` writes the record's row a second time, with its
tags, after adding its many-to-many links. Inside :func:`one_write` (one transaction, under the lock,
so nobody else can have changed the row) a save that would write exactly what the same object last
wrote is skipped (:func:`save_once`), a row's tag links are changed in at most three statements
(:func:`update_tags`), and its dependency and platform links are added together, once per process
(:func:`add_links`), in one INSERT for each relation (:func:`_insert_links`).
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import functools
import pickle
import sys
import threading
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

from .._postgres.client import mask_uri
from ..errors import StoreError

__all__ = ["REMEMBERED_MODELS", "get_db_obj", "get_db_project", "forget", "one_write", "in_one_write", "save_once",
           "claimed_new", "get_db_record", "get_or_create_tag", "update_tags", "LOOKED_UP", "LOOKED_UP_EACH",
           "prefetch", "ROWS_KEPT", "LINKED", "LINKS_KEPT", "add_links", "patch_links", "links_batched"]

#: the models whose rows never change once made (DataKey is left out: a write updates its row)
REMEMBERED_MODELS = frozenset({"Executable", "Repository", "LaunchMode", "Datastore", "ParameterSet",
                               "PlatformInformation", "Dependency"})

#: how many rows a process remembers, the most recently used: each call of a sweep has a parameter set
#: of its own, and a long session must not keep them all
ROWS_KEPT = 4096
#: (database label, model, the value pickled) -> row; the most recently used last
_rows: "collections.OrderedDict[Tuple[str, str, bytes], Any]" = collections.OrderedDict()


def _used(memory: "collections.OrderedDict[Any, Any]", key: Any, kept: int) -> None:
    """Mark ``key`` of ``memory`` used last, and forget the least recently used beyond ``kept`` (call
    with ``_guard`` held)."""
    memory.move_to_end(key)
    while len(memory) > kept:
        memory.popitem(last=False)


def _keep(key: Tuple[str, str, bytes], row: Any) -> None:
    """Remember ``row`` for ``key`` (call with ``_guard`` held), forgetting the least recently used."""
    _rows[key] = row
    _used(_rows, key, ROWS_KEPT)
_guard = threading.Lock()


def _key(database: str, model: str, value: Any) -> Tuple[str, str, bytes] | None:
    try:
        return (database, model, pickle.dumps(value, protocol=4))
    except Exception:  # a value that does not pickle is simply not remembered
        return None


def _remembered(database: str, model: str, value: Any, find: Callable[[], Any]) -> Any:
    """The row remembered for ``value``, or the one ``find`` returns, remembered once the transaction
    that found or made it commits."""
    key = _key(database, model, value)
    if key is None:
        return find()
    with _guard:
        row = _rows.get(key)
        if row is not None:
            _used(_rows, key, ROWS_KEPT)
    if row is not None:
        return row
    row = find()
    from django.db import transaction

    def remember() -> None:
        with _guard:
            _keep(key, row)
    transaction.on_commit(remember, using=database)
    return row


def get_db_obj(original: Callable[..., Any]) -> Callable[..., Any]:
    """``DjangoRecordStore._get_db_obj`` that asks the store only for a value this process has not
    seen stored, and takes the oldest of identical rows (:func:`_oldest_of_duplicates`)."""
    def _get_db_obj(self: Any, db_class: str, obj: Any) -> Any:
        def find() -> Any:
            made = _insert_new(self, db_class, obj)
            return made if made is not None else _oldest_of_duplicates(original, self, db_class, obj)
        if db_class not in REMEMBERED_MODELS or obj is None:
            return find()
        return _remembered(self._db_label, db_class, obj, find)
    return _get_db_obj


#: what :func:`prefetch` found not stored, for the write that follows in the same thread:
#: (database label, model, the value pickled) -> the columns upstream's get_or_create matches on
_new = threading.local()


def _insert_new(store: Any, db_class: str, obj: Any) -> Any:
    """Inside :func:`one_write`, the row for ``obj`` that :func:`prefetch` found not stored, made in one
    statement: the row upstream's get_or_create would make (its model built from the same columns, each
    value as Django's INSERT gives it to the database), unless the table's unique index
    (:mod:`smtlock._sumatra.uniques`) finds it made meanwhile. Upstream asks again first (a SELECT, then
    the INSERT with Django's model machinery: a quarter of a new record's hold, since each call of a
    sweep has a parameter set of its own). None, having written nothing, when it cannot be sure: the
    caller asks as upstream does (no unique index to rely on, a row made meanwhile, another vendor)."""
    key = _key(store._db_label, db_class, obj)
    attributes = getattr(_new, "rows", {}).pop(key, None)
    if attributes is None or _write.get() is None:
        return None
    from django.db import connections
    connection = connections[store._db_label]
    if connection.vendor not in _INSERT_IGNORING or db_class not in _unique_models(connection):
        return None
    row = getattr(store._get_models(), db_class)(**attributes)
    pk = _insert(connection, row, ignoring=True)
    if pk is None:
        return None
    row.pk = pk
    row._state.adding, row._state.db = False, store._db_label
    return row


def _insert(connection: Any, obj: Any, ignoring: bool = False) -> Any:
    """Insert ``obj``'s row in one statement, each column's value as Django's INSERT gives it to the
    database; its new key (None when ``ignoring`` and a unique index held the row already). SQLite and
    PostgreSQL only."""
    meta, quote = obj._meta, connection.ops.quote_name
    fields = [field for field in meta.local_concrete_fields if field is not meta.pk]
    values = [field.get_db_prep_save(field.pre_save(obj, True), connection) for field in fields]
    statement = _INSERT_IGNORING[connection.vendor] if ignoring else "INSERT INTO {table} ({columns}) VALUES {rows}"
    sql = statement.format(table=quote(meta.db_table), columns=", ".join(quote(field.column) for field in fields),
                           rows=f"({', '.join(['%s'] * len(fields))})")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"{sql} RETURNING {quote(meta.pk.column)}", values)
            made = cursor.fetchone()
            return made[0] if made else None
        cursor.execute(sql, values)
        return cursor.lastrowid if cursor.rowcount == 1 else None


#: database label -> (SQLite's schema version when asked, the models whose table has its unique index there)
_unique: Dict[str, Tuple[Optional[int], FrozenSet[str]]] = {}


def _unique_models(connection: Any) -> FrozenSet[str]:
    """The models of :data:`REMEMBERED_MODELS` whose table has its unique index in ``connection``'s
    database: a row of these may be added by :func:`_insert_new`, which relies on that index. Asked
    again on SQLite whenever the schema changed since (a table Django remakes in a migration loses
    smtlock's index with it; a person may drop one); on PostgreSQL once per process: Django alters a
    table in place, and smtlock only ever adds an index (a store's first use, ``smtlock doctor --repair``)."""
    from . import uniques
    version = _schema_version(connection)
    found = _unique.get(connection.alias)
    if found is None or found[0] != version:
        found = (version, REMEMBERED_MODELS.intersection(uniques.UNIQUE_MODELS).difference(uniques.missing(connection)))
        _unique[connection.alias] = found
    return found[1]


def _schema_version(connection: Any) -> Optional[int]:
    """SQLite's count of the database's schema changes (one statement, read from the file's header);
    None elsewhere."""
    if connection.vendor != "sqlite":
        return None
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA schema_version")
        return int(cursor.fetchone()[0])


_said_duplicates: Set[str] = set()  # stores this process has said need `smtlock doctor --repair`


def _oldest_of_duplicates(original: Callable[..., Any], store: Any, db_class: str, obj: Any) -> Any:
    """Upstream's lookup; where the store holds identical rows (plain Sumatra's racing get_or_create
    made them, and upstream's every later write of them fails with MultipleObjectsReturned), the one
    with the lowest id, which ``smtlock doctor --repair`` keeps when it merges them. It says once per
    process that the store needs that repair."""
    from django.core.exceptions import MultipleObjectsReturned
    try:
        return original(store, db_class, obj)
    except MultipleObjectsReturned:
        models = store._get_models()
        finder = _Finder(getattr(models, db_class), store._db_label, oldest=True)
        row = models.SumatraObjectsManager.get_or_create_from_sumatra_object(finder, obj, using=store._db_label)[0]
    if store._db_label not in _said_duplicates:
        _said_duplicates.add(store._db_label)
        print(f"smtlock: the store {mask_uri(store._db_file)} has duplicate {db_class} rows, made by writers "
              "without smtlock; records use the oldest of each, the one `smtlock doctor --repair` keeps: run it "
              "once to merge them", file=sys.stderr)
    return row


def get_db_project(original: Callable[..., Any]) -> Callable[..., Any]:
    """``DjangoRecordStore._get_db_project`` that looks the project's row up once per process."""
    def _get_db_project(self: Any, project_name: str) -> Any:
        return _remembered(self._db_label, "Project", project_name, lambda: original(self, project_name))
    return _get_db_project


def get_or_create_tag(original: Callable[..., Any]) -> Callable[..., Any]:
    """``TagManager.get_or_create`` that remembers each tag's row (a tag's name is unique, and
    Sumatra never deletes a tag): upstream looks the tag up in every write that changes a record's
    tags, and ``smt run`` changes them in each of its writes (its status)."""
    def get_or_create(self: Any, **kwargs: Any) -> Any:
        if set(kwargs) != {"name"}:
            return original(self, **kwargs)
        created = [False]

        def find() -> Any:
            row, created[0] = original(self, **kwargs)
            return row
        return _remembered(self.db, "Tag", kwargs["name"], find), created[0]
    return get_or_create


#: what upstream's ``DjangoRecordStore.save`` looks up for a record: (model, the record's attribute),
#: and for each item of a list attribute (looked up once the record is registered)
LOOKED_UP = (("Executable", "executable"), ("Repository", "repository"), ("LaunchMode", "launch_mode"),
             ("Datastore", "datastore"), ("Datastore", "input_datastore"), ("ParameterSet", "parameters"))
LOOKED_UP_EACH = (("Dependency", "dependencies"), ("PlatformInformation", "platforms"))


class _Finder:
    """Stands in for a model's manager so that Sumatra's own ``get_or_create_from_sumatra_object``
    builds its lookup and only finds (never creates) the row; with ``oldest``, the lowest id of
    identical rows."""

    def __init__(self, model: Any, using: str, oldest: bool = False) -> None:
        self.model = model
        self._using = using
        self._oldest = oldest
        self.attributes: Optional[Dict[str, Any]] = None  # what the lookup matched on

    def using(self, using: str) -> "_Finder":
        return self

    def get_or_create(self, **attributes: Any) -> Tuple[Any, bool]:
        self.attributes = attributes
        rows = self.model.objects.using(self._using)
        if self._oldest:
            return rows.filter(**attributes).order_by("id")[0], False
        found = _get(self.model, self._using, attributes)
        return (rows.get(**attributes) if found is _UNCOMPILED else found), False


_UNCOMPILED = object()  # _get could not compile the query: ask Django
#: (database label, model, the names looked up, those None) -> (SQL, the names in its parameters' order
#: with their fields, the columns it selects), or None where Django's query is not as expected
_GETS: Dict[Tuple[str, Any, Tuple[str, ...], FrozenSet[str]],
            Optional[Tuple[str, Tuple[Tuple[str, Any], ...], List[str]]]] = {}
_TEXT_FIELDS = frozenset({"CharField", "TextField", "URLField", "SlugField"})


def _get(model: Any, using: str, attributes: Dict[str, Any]) -> Any:
    """``model.objects.using(using).get(**attributes)`` with SQL Django compiles once per process for
    these names (compiling a query costs more than running it on SQLite: a fifth of a warm call's
    prefetch, which looks up each call's new parameter set); the row built by Django's ``from_db``.
    Raises what ``get`` raises; :data:`_UNCOMPILED` where the lookup is not one of text columns only."""
    nulls = frozenset(name for name, value in attributes.items() if value is None)
    key = (using, model, tuple(sorted(attributes)), nulls)
    if key not in _GETS:
        _GETS[key] = _compile_get(model, using, key[2], nulls)
    compiled = _GETS[key]
    if compiled is None:
        return _UNCOMPILED
    from django.db import connections
    connection = connections[using]
    sql, names, columns = compiled
    # each value as Django's exact lookup gives it to the database: a CharField's is its text (a
    # dependency's version may be an int, a float, a list); bound as it is, SQLite's column affinity
    # matched another row ('0.3' for 0.1 + 0.2), and sqlite3 before 3.11 cannot bind a list
    params = [field.get_db_prep_value(field.get_prep_value(attributes[name]), connection, prepared=True)
              for name, field in names]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    if not found:
        raise model.DoesNotExist(f"{model._meta.object_name} matching query does not exist.")
    if len(found) > 1:
        raise model.MultipleObjectsReturned(f"get() returned more than one {model._meta.object_name}")
    return model.from_db(using, columns, found[0])


def _compile_get(model: Any, using: str, names: Tuple[str, ...], nulls: FrozenSet[str]
                 ) -> Optional[Tuple[str, Tuple[Tuple[str, Any], ...], List[str]]]:
    """Compile ``get``'s query for example values (a distinct string for each name not None); kept
    when its parameters are exactly those values, each a text column's exact match."""
    meta = model._meta
    try:
        fields = {name: meta.get_field(name) for name in names}
    except Exception:  # not a field: Django says what is wrong
        return None
    if any(field.is_relation or field.get_internal_type() not in _TEXT_FIELDS for field in fields.values()) or any(
            field is not meta.pk and field.get_internal_type() not in _TEXT_FIELDS for field in meta.concrete_fields):
        return None  # only text columns and the key: the database's values are the model's, no converter
    example = {name: None if name in nulls else f"smtlock-example-{i}" for i, name in enumerate(names)}
    columns = [field.attname for field in meta.concrete_fields]
    query = model.objects.using(using).filter(**example).order_by().values_list(*columns)[:2]
    sql, params = query.query.get_compiler(using=using).as_sql()
    by_value = {value: name for name, value in example.items() if value is not None}
    if sorted(params) != sorted(by_value) or len(set(params)) != len(params):
        return None
    return sql, tuple((by_value[value], fields[by_value[value]]) for value in params), columns


def prefetch(store: Any, project_name: str, record: Any) -> None:
    """Before the lock is taken: find and remember the stored rows the record's write will look up
    (its project, executable, repository, ..., tags), so that the write under the lock asks only
    for what is new. It only reads, and remembers only rows that exist (committed); a value not
    stored yet is left to the write, which makes it under the lock (:func:`_insert_new`: it knows
    that row's columns from here)."""
    from django.contrib.contenttypes.models import ContentType
    from django.core.exceptions import MultipleObjectsReturned, ObjectDoesNotExist
    models = store._get_models()
    db = store._db_label
    _new.rows = absent = {}

    def find(database: str, model: str, value: Any, lookup: Callable[[], Any],
             finder: Optional[_Finder] = None) -> None:
        key = _key(database, model, value)
        with _guard:
            if key is None or value is None or key in _rows:
                return
        try:
            row = lookup()
        except ObjectDoesNotExist:  # new: the write makes it
            if finder is not None and finder.attributes is not None:
                absent[key] = finder.attributes
            return
        except MultipleObjectsReturned:  # upstream's error: the write says what to do
            return
        with _guard:
            _keep(key, row)

    find(db, "Project", project_name, lambda: models.Project.objects.using(db).get(id=project_name))
    values = [(model, getattr(record, name, None)) for model, name in LOOKED_UP]
    values += [(model, item) for model, name in LOOKED_UP_EACH for item in getattr(record, name, None) or ()]
    lookup = models.SumatraObjectsManager.get_or_create_from_sumatra_object
    for model, value in values:
        finder = _Finder(getattr(models, model), db)
        find(db, model, value, functools.partial(lambda f, v: lookup(f, v, using=db)[0], finder, value), finder)
    if absent:
        from django.db import connections
        _unique_models(connections[db])  # asked here, not under the lock (there: has the schema changed?)
    ContentType.objects.get_for_model(models.Record)  # Django keeps it; tagging asks in every write
    tags = models.Tag.objects  # tagging uses Django's default database
    for name in getattr(record, "tags", None) or ():
        find(tags.db, "Tag", name, functools.partial(tags.get, name=name))


def forget(store: Any) -> bool:
    """Forget every row remembered for ``store``; True when there were any (a write that failed on a
    foreign key may have used one that no longer exists)."""
    with _guard:
        _unique.pop(store._db_label, None)
        keys = [key for key in _rows if key[0] == store._db_label]
        for key in keys:
            del _rows[key]
        links = [row for row in _links if row[0] == store._db_label]
        for row in links:
            del _links[row]
    return bool(keys or links)


class _Write:
    """One write in progress: the labels it claimed as new (no record has them yet), and while a
    store's save runs (:func:`links_batched`) the many-to-many links it adds."""

    def __init__(self) -> None:
        self.new_labels: Set[Tuple[str, str, str]] = set()  # (database label, project, label)
        #: (manager class, the row's id) -> [a manager, upstream's add, its database, the rows to link]
        self.links: Optional[Dict[Tuple[type, Any], List[Any]]] = None


_write: contextvars.ContextVar[Optional[_Write]] = contextvars.ContextVar("smtlock_write", default=None)
_WRITTEN = "_smtlock_written"  # set on a model object: (the write, the database, the values it saved)
_UNTAGGED = "_smtlock_untagged"  # set on a model object whose row the write inserts: the write, until tagged


@contextlib.contextmanager
def one_write() -> Iterator[None]:
    """Mark what runs inside as one write: one transaction, under the store's lock (inside another
    write, it is part of that one)."""
    if _write.get() is not None:
        yield
        return
    token = _write.set(_Write())
    try:
        yield
    finally:
        _write.reset(token)
        _new.rows = {}  # what the prefetch before it found not stored is for this write alone


def in_one_write() -> bool:
    """Whether the caller runs inside :func:`one_write`."""
    return _write.get() is not None


def claimed_new(store: Any, project_name: str, label: str) -> None:
    """Note that the current write gave a record ``label``, which no record of the store has."""
    write = _write.get()
    if write is not None:
        write.new_labels.add((store._db_label, project_name, label))


def get_db_record(original: Callable[..., Any]) -> Callable[..., Any]:
    """``DjangoRecordStore._get_db_record`` that does not look for a record whose label the current
    write has just claimed as new: upstream's query would find nothing and make the same new row."""
    def _get_db_record(self: Any, project_name: str, record: Any) -> Any:
        write = _write.get()
        if write is None or (self._db_label, project_name, record.label) not in write.new_labels:
            return original(self, project_name, record)
        db_record = self._get_models().Record(label=record.label, project=self._get_db_project(project_name))
        db_record._state.db = self._db_label
        return db_record
    return _get_db_record


def save_once(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Model.save`` for Sumatra's models that, inside :func:`one_write`, skips a plain save of an
    object whose values are exactly those it saved earlier in the same write (no UPDATE, and for a
    record no second update of its tags), and inserts a new row in one statement (:func:`_insert_row`)."""
    def save(self: Any, *args: Any, **kwargs: Any) -> None:
        from django.db import router
        write = _write.get()
        if write is None:
            return original(self, *args, **kwargs)
        plain = not args and set(kwargs) <= {"using"}
        if plain and getattr(self, _WRITTEN, None) == (write, kwargs.get("using") or self._state.db,
                                                       _values(self)):
            return None
        if self._state.adding and self.pk is None:  # this save inserts its row, under a new id
            setattr(self, _UNTAGGED, write)
            if not (plain and _insert_row(self, kwargs.get("using") or router.db_for_write(type(self), instance=self))):
                original(self, *args, **kwargs)
        else:
            original(self, *args, **kwargs)
        setattr(self, _WRITTEN, (write, kwargs.get("using") or self._state.db, _values(self)))
        return None
    return save


def _insert_row(obj: Any, using: str) -> bool:
    """What Django's ``save`` does for a new row of a plain model (Sumatra's: no parent, an automatic
    key, no database defaults), without its query compiler: its checks of the related rows, its
    ``pre_save`` and ``post_save`` signals (Sumatra's TagField saves the tags on the latter), one INSERT
    of every column (each value as Django gives it to the database) that returns the new key. A new
    record's row is inserted so in every call (Django's machinery cost a sixth of the lock's hold).
    False, having done nothing, for a model or database this does not cover: Django saves it."""
    from django.db import connections
    from django.db.models import NOT_PROVIDED, AutoField, signals
    meta = obj._meta
    connection = connections[using]
    fields = [field for field in meta.local_concrete_fields if field is not meta.pk]
    if meta.parents or meta.proxy or meta.auto_created or meta.order_with_respect_to or \
            not isinstance(meta.pk, AutoField) or \
            connection.vendor not in _INSERT_IGNORING or any(
                getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED or getattr(field, "generated", False)
                for field in fields):
        return False
    obj._prepare_related_fields_for_save(operation_name="save")  # an unsaved related row raises, as in save
    signals.pre_save.send(sender=type(obj), instance=obj, raw=False, using=using, update_fields=None)
    pk = _insert(connection, obj)
    if pk is None:  # no row (a trigger of the store's ignored it): the write must not go on as if stored
        raise StoreError(f"{meta.db_table}: the INSERT of a new row stored none (does a trigger of the store "
                         "ignore it?); nothing of this write was kept")
    setattr(obj, meta.pk.attname, meta.pk.to_python(pk))
    obj._state.db, obj._state.adding = using, False
    signals.post_save.send(sender=type(obj), instance=obj, created=True, update_fields=None, raw=False, using=using)
    return True


_TAGS_A_STATEMENT = 300  # tag links (3 parameters each) in one statement: within SQLite's oldest limit of 999


def update_tags(original: Callable[..., Any]) -> Callable[..., Any]:
    """``TagManager.update_tags`` inside :func:`one_write`, in at most three statements: the row's
    links read once, those of tags it no longer has deleted in one DELETE, the new ones made in one
    INSERT (a row the write has just inserted has no links: ids are never reused, AUTOINCREMENT on
    SQLite, a sequence on PostgreSQL, so only the INSERT). Upstream builds an ORM query for the links,
    a DELETE, and for each new tag a get_or_create of its link (a lookup, a savepoint, an insert):
    ``smt run`` and ``@smt_logged`` change the status tag in every write. The links left are
    upstream's. Only where the links live in the row's own database (upstream keeps them in Django's
    default one)."""
    def update_tags(self: Any, obj: Any, tag_names: Any) -> None:
        from django.db import router
        from sumatra.recordstore.django_store.tagging import TaggedItem
        write = _write.get()
        database = obj._state.db
        if write is None or obj.pk is None or database != router.db_for_write(TaggedItem):
            return original(self, obj, tag_names)
        from django.contrib.contenttypes.models import ContentType
        from django.db import connections
        from sumatra.recordstore.django_store.tagging_utils import parse_tag_input
        content_type = ContentType.objects.get_for_model(obj).pk
        names = parse_tag_input(tag_names)
        links: List[Tuple[int, str]] = []
        if getattr(obj, _UNTAGGED, None) is write:
            delattr(obj, _UNTAGGED)
        else:
            connection = connections[database]
            quote = connection.ops.quote_name
            item, tag = TaggedItem._meta.db_table, self.model._meta.db_table
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT i.id, t.name FROM {quote(item)} i JOIN {quote(tag)} t ON t.id = i.tag_id "
                               "WHERE i.content_type_id = %s AND i.object_id = %s", [content_type, obj.pk])
                links = [(row[0], row[1]) for row in cursor.fetchall()]
                gone = [link for link, name in links if name not in names]
                if gone:
                    cursor.execute(f"DELETE FROM {quote(item)} WHERE id IN ({', '.join(['%s'] * len(gone))})", gone)
        linked = {name for _, name in links}
        new = [name for name in names if name not in linked]
        if new:  # in one INSERT: what a bulk_create of the links writes, without a model instance for each
            connection = connections[database]
            meta, quote = TaggedItem._meta, connection.ops.quote_name
            fields = [meta.get_field(name) for name in ("tag", "content_type", "object_id")]
            values = [[self.get_or_create(name=name)[0].pk, content_type, obj.pk] for name in new]
            with connection.cursor() as cursor:
                for start in range(0, len(values), _TAGS_A_STATEMENT):
                    chunk = values[start:start + _TAGS_A_STATEMENT]
                    cursor.execute(f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)})"
                                   f" VALUES {', '.join(['(%s, %s, %s)'] * len(chunk))}",
                                   [field.get_db_prep_save(value, connection) for row in chunk
                                    for field, value in zip(fields, row)])
        return None
    return update_tags


#: the many-to-many relations of a record that upstream's save adds to in every write
LINKED = ("dependencies", "platforms")
#: how many records' links a process remembers, the most recently written (a record is written again
#: while its job runs; a long session of calls must not keep every record's links)
LINKS_KEPT = 256
#: (database label, record id) -> {(link table, linked id)} committed; the most recently written last
_links: "collections.OrderedDict[Tuple[str, Any], Set[Tuple[str, Any]]]" = collections.OrderedDict()


def add_links(original: Callable[..., Any]) -> Callable[..., Any]:
    """``add`` of a record's dependencies and platforms (:data:`LINKED`), inside :func:`links_batched`:
    a link this process has seen committed is not added again, and the others are added together
    when the save ends. Upstream adds each dependency and platform with its own INSERT (on PostgreSQL,
    and Django before 3.0 on SQLite, a SELECT too) in every write: ~50 statements for each call of a
    function whose module imports smtlock. A link row is never changed or deleted but with its
    record, whose new row has a new id (ids are never reused)."""
    def add(self: Any, *objs: Any, **kwargs: Any) -> None:
        write = _write.get()
        if write is None or write.links is None or kwargs or self.instance.pk is None:
            return original(self, *objs, **kwargs)
        from django.db import router
        database = router.db_for_write(self.through, instance=self.instance)  # where upstream's add writes
        table = self.through._meta.db_table
        with _guard:
            known = _links.get((database, self.instance.pk), ())
            new = [obj for obj in objs if getattr(obj, "pk", None) is None or (table, obj.pk) not in known]
        if new:
            write.links.setdefault((type(self), self.instance.pk), [self, original, database, []])[3].extend(new)
        return None
    add._smtlock_links = True  # type: ignore[attr-defined]
    return add


def patch_links(record_model: Any) -> None:
    """Put :func:`add_links` on the many-to-many managers of ``record_model`` named in :data:`LINKED`
    (not through ``upstream.patch``, which keys on a class's name: Django names both managers alike)."""
    for name in LINKED:
        manager = getattr(record_model, name).related_manager_cls
        if not getattr(manager.add, "_smtlock_links", False):
            manager.add = add_links(manager.add)


@contextlib.contextmanager
def links_batched() -> Iterator[None]:
    """Inside :func:`one_write`, around a store's save: the links it adds are made when it ends, in
    one statement for each relation, still inside the write's transaction; remembered once it commits."""
    write = _write.get()
    if write is None or write.links is not None:
        yield
        return
    write.links = {}
    try:
        yield
        pending, write.links = write.links, None
        from django.db import transaction
        for manager, add, database, objs in pending.values():
            if not _insert_links(manager, database, objs):
                add(manager, *objs)
            row = (database, manager.instance.pk)
            keys = {(manager.through._meta.db_table, obj.pk) for obj in objs if getattr(obj, "pk", None) is not None}

            def remember(row: Tuple[str, Any] = row, keys: Set[Tuple[str, Any]] = keys) -> None:
                with _guard:
                    _links.setdefault(row, set()).update(keys)
                    _used(_links, row, LINKS_KEPT)
            transaction.on_commit(remember, using=database)
    finally:
        write.links = None


#: the statement that adds rows to a link table and skips those there already, by database vendor
_INSERT_IGNORING = {"sqlite": "INSERT OR IGNORE INTO {table} ({columns}) VALUES {rows}",
                    "postgresql": "INSERT INTO {table} ({columns}) VALUES {rows} ON CONFLICT DO NOTHING"}
_LINKS_A_STATEMENT = 400  # rows (2 parameters each) in one statement: within SQLite's oldest limit of 999


def _insert_links(manager: Any, database: str, objs: List[Any]) -> bool:
    """Add the links of ``manager`` (a record's dependencies or platforms) to ``objs`` in one INSERT
    that skips those there already: what Django's ``add`` does where no ``m2m_changed`` receiver
    listens, but without its ``bulk_create`` of a model instance for each link (~0.3 ms of the lock's
    hold in each record's first write). False, having done nothing, where Django's own checks could
    say otherwise (a row not saved, of another model or database, a receiver, another vendor): the
    caller adds them as upstream does."""
    from django.db import connections
    from django.db.models.signals import m2m_changed
    connection = connections[database]
    statement = _INSERT_IGNORING.get(connection.vendor)
    if statement is None or m2m_changed.has_listeners(manager.through) or not all(
            isinstance(obj, manager.model) and obj.pk is not None and obj._state.db == database for obj in objs):
        return False
    through = manager.through._meta
    source, target = through.get_field(manager.source_field_name), through.get_field(manager.target_field_name)
    pairs = sorted({(manager.related_val[0], target.get_foreign_related_value(obj)[0]) for obj in objs})
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for start in range(0, len(pairs), _LINKS_A_STATEMENT):
            chunk = pairs[start:start + _LINKS_A_STATEMENT]
            cursor.execute(statement.format(table=quote(through.db_table),
                                            columns=f"{quote(source.column)}, {quote(target.column)}",
                                            rows=", ".join(["(%s, %s)"] * len(chunk))),
                           [value for pair in chunk for value in pair])
    return True


def _values(obj: Any) -> tuple:
    """What a save of ``obj`` writes: each column's value (a record's tags included)."""
    return tuple(obj.__dict__.get(field.attname) for field in obj._meta.concrete_fields)
