"""Checks of a Sumatra store that concurrency may have damaged (the harness uses them too)."""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["DEDUPLICATED_MODELS", "duplicate_rows", "shared_labels"]

#: Sumatra's Django models written with a plain get_or_create on tables without unique constraints:
#: two racing processes create two identical rows, and every later get() raises MultipleObjectsReturned.
DEDUPLICATED_MODELS = ("Executable", "Repository", "LaunchMode", "Datastore", "ParameterSet",
                       "DataKey", "Dependency", "PlatformInformation")


def _identity_fields(model: Any) -> list:
    """The columns get_or_create matches on: every concrete column but the key and record links."""
    return [f.attname for f in model._meta.concrete_fields
            if not f.primary_key and f.name != "output_from_record"]


def duplicate_rows(store: Any) -> Dict[str, int]:
    """Extra rows per Sumatra table (rows identical to another but for their id); Django stores only."""
    from django.db.models import Count
    models = store._get_models()
    extra: Dict[str, int] = {}
    for name in DEDUPLICATED_MODELS:
        model = getattr(models, name)
        groups = (model.objects.using(store._db_label).values(*_identity_fields(model))
                  .annotate(n=Count("id")).filter(n__gt=1).values_list("n", flat=True))
        count = sum(n - 1 for n in groups)
        if count:
            extra[name] = count
    return extra


def shared_labels(store: Any, project_name: str) -> Dict[str, int]:
    """Labels carried by more than one record row of the project, with their row counts."""
    from django.db.models import Count
    rows = (store._manager.filter(project__id=project_name).values("label")
            .annotate(n=Count("db_id")).filter(n__gt=1))
    return {row["label"]: row["n"] for row in rows}
