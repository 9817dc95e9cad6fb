"""The tests' PostgreSQL: smtlock's throwaway server (see :class:`smtlock.server.ThrowawayServer`)."""

from smtlock.server import ThrowawayServer as Cluster
from smtlock.server import _free_port as free_port

__all__ = ["Cluster", "free_port"]
