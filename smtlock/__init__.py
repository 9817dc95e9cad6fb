"""smtlock: Sumatra provenance tracking that keeps every record when many jobs start at once.

Importing smtlock makes every write a Sumatra project does safe (see :mod:`smtlock.patches`).
"""

from . import patches
from .decorator import current_label, smt_logged
from .errors import (
    LockFileError,
    LockTimeout,
    NoProjectError,
    ProjectFileError,
    SMTLockError,
    StoreError,
)
from .lock import SMTLock

__version__ = "0.1.0"

__all__ = [
    "SMTLock",
    "smt_logged",
    "current_label",
    "SMTLockError",
    "LockTimeout",
    "NoProjectError",
    "ProjectFileError",
    "LockFileError",
    "StoreError",
    "__version__",
]

patches.apply()
