"""A person's edits to a record whose job is still running (a tag, a comment, a reason), kept by the
job's later saves.

Upstream's save writes the job's whole copy of the record over the stored one, so a ``smt tag``, ``smt
comment`` or smtweb edit made while the job ran is lost at its next save (``smt run`` saves again when
the job ends). Here each save of a record this process wrote (or read) before applies only what the
process changed since then to what the store holds now, inside the write, under the lock:

* **tags**: the store's, less those the process removed, plus those it added;
* **outcome, reason**: the store's where only the person changed it, the process's where only it did;
  where both did, both texts are kept, the store's first, then the process's on a new line;
* **a record deleted** from the store while its job ran is stored again (the job's results are
  provenance), and the job says so in one line.

A record this process never saw (made by hand with a label already stored) is written over, as
upstream does.
"""

from __future__ import annotations

import functools
import sys
import weakref
from typing import Any, Callable, Dict, FrozenSet, NamedTuple, Optional, Tuple

__all__ = ["Edits", "note_stored", "fields", "restore", "merge", "merged_db_record", "merged_shelve_save"]


class Edits(NamedTuple):
    """The fields of a record a person can change while its job runs (Sumatra's CLI, API and smtweb)."""
    tags: FrozenSet[str]
    outcome: Optional[str]
    reason: Optional[str]


_base: Dict[int, Tuple[Any, Edits]] = {}  # id(record) -> (weak reference, fields as last written or read)


def fields(record: Any) -> Edits:
    """``record``'s editable fields as they are now."""
    return Edits(frozenset(getattr(record, "tags", None) or ()), getattr(record, "outcome", None),
                 getattr(record, "reason", None))


def restore(record: Any, edits: Edits) -> None:
    """Put ``edits`` (taken with :func:`fields`) back into ``record``: a write rolled back is made again
    from the record as it was, so a person's edits are merged once (not a comment twice)."""
    record.tags = set(edits.tags)
    record.outcome, record.reason = edits.outcome, edits.reason


def note_stored(record: Any) -> None:
    """Note ``record``'s fields as the store holds them now (this process has just written or read it)."""
    key = id(record)

    def gone(_: Any, key: int = key) -> None:
        _base.pop(key, None)
    _base[key] = (weakref.ref(record, gone), fields(record))


def _known(record: Any) -> Optional[Edits]:
    entry = _base.get(id(record))
    return entry[1] if entry is not None and entry[0]() is record else None


def _text(base: Optional[str], mine: Optional[str], theirs: Optional[str]) -> Optional[str]:
    """A three-way merge of a text field: nobody's change is lost."""
    if mine == base or mine == theirs:
        return theirs
    if theirs == base:
        return mine
    base, mine, theirs = base or "", mine or "", theirs or ""
    added = mine[len(base):].lstrip("\n") if mine.startswith(base) else mine  # the process appended, or replaced
    return f"{theirs}\n{added}" if theirs and added else theirs or added


def merge(record: Any, stored: Optional[Edits]) -> None:
    """Apply to ``stored`` (what the store holds now; None: no such record) the changes this process
    made to ``record`` since it last wrote or read it, and put the result in ``record`` for the write."""
    base = _known(record)
    if base is None:
        return  # never seen here: the write replaces what is stored, as upstream
    if stored is None:
        print(f"smtlock: record {record.label} was deleted while its job ran; the job stored it again "
              f"(`smt delete {record.label}` once the job has ended removes it)", file=sys.stderr)
        return
    mine = fields(record)
    record.tags = set((stored.tags - (base.tags - mine.tags)) | (mine.tags - base.tags))
    for name in ("outcome", "reason"):
        setattr(record, name, _text(getattr(base, name), getattr(mine, name), getattr(stored, name)))


def merged_db_record(lookup: Callable[..., Any]) -> Callable[..., Any]:
    """``DjangoRecordStore._get_db_record``, wrapped: the row it found (upstream's own query, inside the
    write's transaction) is what the store holds; the record is merged with it before upstream's
    ``save`` copies the record into the row."""
    @functools.wraps(lookup)
    def _get_db_record(self: Any, project_name: str, record: Any) -> Any:
        db_record = lookup(self, project_name, record)
        if _known(record) is not None:
            from sumatra.recordstore.django_store.tagging_utils import parse_tag_input
            stored = None if db_record._state.adding else Edits(
                frozenset(parse_tag_input(db_record.tags)), db_record.outcome, db_record.reason)
            merge(record, stored)
        return db_record
    return _get_db_record


def merged_shelve_save(save: Callable[..., Any]) -> Callable[..., Any]:
    """``ShelveRecordStore.save``, wrapped inside the freshly opened shelf (:func:`smtlock._sumatra.shelf.fresh`,
    under the lock): the record is merged with the stored one before upstream replaces it."""
    @functools.wraps(save)
    def shelve_save(self: Any, project_name: str, record: Any) -> None:
        if _known(record) is not None:
            held = self.shelf[project_name].get(record.label) if project_name in self.shelf else None
            merge(record, None if held is None else fields(held))
        save(self, project_name, record)
    return shelve_save
