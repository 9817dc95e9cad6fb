"""smtlock: Sumatra provenance tracking that keeps every record when many jobs start at once.

Importing smtlock makes every write a Sumatra project does safe (see :mod:`smtlock._sumatra.patches`).
The public names are the ones below, chosen here once; everything in a ``_folder`` is internal. The
folders are the layers, each importing only those below it (``tests/test_layout.py``)::

    errors      the error hierarchy (one Sumatra base: ServerUnreachable is a RecordStoreAccessError)
    _postgres   PostgreSQL: URIs, connections, libpq's password file, the user's own server
    _lock       SMTLock and its backends (flock, lease, advisory lock), atomic .smt files, one host
    _sumatra    Sumatra made safe: every patch, the stores, the provenance memo, moves between stores
    _tracking   what a job calls: @smt_logged, its output capture, the smt-run plugin
    _ops        repairs and migration: doctor, smtlock postgres
    _harness    smtlock stress: bursts, hosts, counting (never imported by the library)
    cli         the smtlock command; plugin: the module Sumatra imports (smtlock enable)
"""

import os
import warnings

# Sumatra 0.8.1's dependency_finder/genesis.py has an invalid escape in a regex: Python >= 3.12 prints
# a SyntaxWarning when it compiles that file (an install that did not byte-compile, such as uv's),
# which nobody but Sumatra can act on and which broke our one-line errors.
warnings.filterwarnings("ignore", category=SyntaxWarning, module=r".*[/\\]sumatra[/\\]")

if os.name != "posix":  # flock(2) is the lock; there is no Windows backend
    raise ImportError("smtlock needs Linux or macOS (POSIX file locks); on Windows, run your jobs under "
                      "WSL or on a Linux machine")

from ._lock.lock import SMTLock
from ._sumatra import patches
from ._tracking.decorator import current_label, smt_logged
from .errors import (
    LockFileError,
    LockLost,
    LockTimeout,
    NoProjectError,
    ProjectFileError,
    ServerUnreachable,
    SettingError,
    SMTLockError,
    StoreError,
    TrackedStoreError,
)

__version__ = "0.2.0"

__all__ = [
    "SMTLock",
    "smt_logged",
    "current_label",
    "SMTLockError",
    "LockTimeout",
    "LockLost",
    "NoProjectError",
    "ProjectFileError",
    "LockFileError",
    "StoreError",
    "ServerUnreachable",
    "SettingError",
    "TrackedStoreError",
    "__version__",
]

for _public in (SMTLock, smt_logged, current_label):  # as users import them, in reprs and the docs
    _public.__module__ = __name__
del _public

patches.apply()
