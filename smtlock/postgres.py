"""PostgreSQL record stores: server checks (more in a later step)."""

from __future__ import annotations

__all__ = ["check_server"]


def check_server(uri: str) -> None:
    """Placeholder until PostgreSQL support lands: refuse clearly."""
    from .errors import StoreError
    from .stress import mask_uri
    raise StoreError(f"PostgreSQL stores are not supported yet: {mask_uri(uri)}")
