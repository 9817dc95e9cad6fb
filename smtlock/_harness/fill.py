"""A store of realistic size, made quickly: copies of the real records it holds, written with bulk
inserts. Each copy has a label, a parameter set and output data keys of its own, the original's
executable, repository, launch mode, datastores, dependencies, platforms and input data, and tag links
of its own to the original's tags: what a project's history of sweeps looks like to every query a run
or a listing makes. Nothing is analysed afterwards, as in a user's store. For the store-size
benchmark and the tests of what grows with the store."""

from __future__ import annotations

import datetime
from typing import Any, Dict, List

__all__ = ["fill"]


def fill(store: Any, project_name: str, total: int, batch: int = 2000) -> int:
    """Add copies of the project's records to ``store`` (a Sumatra ``DjangoRecordStore``) until the
    project holds ``total`` records; how many were added. Copy ``k`` of record ``L`` is ``L-cK``,
    ``k`` minutes older than ``L``."""
    from django.db import transaction
    models = store._get_models()
    db = store._db_label
    records = models.Record.objects.using(db)
    seeds = list(records.filter(project__id=project_name).order_by("db_id"))
    if not seeds:
        raise ValueError(f"project {project_name} has no record to copy")
    wanted = total - len(seeds)
    plans = [_plan(models, db, seed) for seed in seeds]
    done = 0
    while done < wanted:
        with transaction.atomic(using=db):
            size = min(batch, wanted - done)
            _copies(models, db, [(plans[(done + i) % len(plans)], (done + i) // len(plans) + 1) for i in range(size)])
        done += size
    return max(wanted, 0)


def _plan(models: Any, db: str, seed: Any) -> Dict[str, Any]:
    """What a copy of ``seed`` takes from it."""
    from django.contrib.contenttypes.models import ContentType
    tags = models.Tag.objects.db  # tagging keeps its links in Django's default database, as upstream does
    record_type = ContentType.objects.db_manager(tags).get_for_model(models.Record)
    return {
        "seed": seed,
        "fields": {f.attname: getattr(seed, f.attname) for f in models.Record._meta.concrete_fields
                   if f.attname not in ("db_id", "label", "parameters_id", "timestamp")},
        "parameters": seed.parameters,
        "outputs": list(models.DataKey.objects.using(db).filter(output_from_record=seed)),
        "m2m": {name: list(getattr(seed, name).values_list("pk", flat=True))
                for name in ("dependencies", "platforms", "input_data")},
        "tags": list(models.TaggedItem.objects.using(tags).filter(content_type=record_type, object_id=seed.pk)
                     .values_list("tag_id", flat=True)),
        "record_type": record_type,
        "tags_db": tags,
    }


def _copies(models: Any, db: str, copies: List[tuple]) -> None:
    """One batch of copies: parameter sets, records, output data keys, many-to-many and tag links."""
    def parameters(plan: Dict[str, Any], k: int) -> Any:
        seed = plan["parameters"]  # records may share one: each copy's is its own, where it can be told
        unique = f"\ncopy_of = {plan['seed'].pk}\ncopy = {k}"
        content = seed.content + unique if seed.type == "SimpleParameterSet" else seed.content
        return models.ParameterSet(type=seed.type, content=content)
    psets = models.ParameterSet.objects.using(db).bulk_create([parameters(plan, k) for plan, k in copies])
    made = models.Record.objects.using(db).bulk_create([
        models.Record(label=f"{plan['seed'].label}-c{k}", parameters_id=pset.pk,
                      timestamp=plan["seed"].timestamp - datetime.timedelta(minutes=k), **plan["fields"])
        for (plan, k), pset in zip(copies, psets)])
    if any(record.pk is None for record in made):
        raise RuntimeError("the database returned no ids for the copies (Django 4.2+ and SQLite 3.35+ do)")
    models.DataKey.objects.using(db).bulk_create([
        models.DataKey(path=f"copy{k}/{key.path}", digest=key.digest, creation=key.creation, metadata=key.metadata,
                       output_from_record_id=record.pk)
        for (plan, k), record in zip(copies, made) for key in plan["outputs"]])
    for name in ("dependencies", "platforms", "input_data"):
        through = getattr(models.Record, name).through
        source, target = (f.attname for f in through._meta.concrete_fields if f.is_relation)
        through.objects.using(db).bulk_create([
            through(**{source: record.pk, target: pk})
            for (plan, _), record in zip(copies, made) for pk in plan["m2m"][name]])
    if copies:
        first = copies[0][0]
        models.TaggedItem.objects.using(first["tags_db"]).bulk_create([
            models.TaggedItem(tag_id=tag, content_type=plan["record_type"], object_id=record.pk)
            for (plan, _), record in zip(copies, made) for tag in plan["tags"]])
