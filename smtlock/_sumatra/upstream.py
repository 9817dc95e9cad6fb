"""Sumatra's own callables that smtlock replaced, kept so each replacement can call the original."""

from __future__ import annotations

from typing import Any, Callable, Dict

__all__ = ["patch", "original", "is_patched"]

_ORIGINAL: Dict[str, Any] = {}  # "Class.name" -> what Sumatra had there


def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` with ``make(original)``, once."""
    key = f"{owner.__name__}.{name}"
    if key not in _ORIGINAL:
        _ORIGINAL[key] = getattr(owner, name)
        setattr(owner, name, make(_ORIGINAL[key]))


def original(key: str) -> Any:
    """What Sumatra had at ``key`` ("Class.name") before smtlock patched it."""
    return _ORIGINAL[key]


def is_patched(key: str) -> bool:
    """Whether ``key`` ("Class.name") has been patched in this process."""
    return key in _ORIGINAL
