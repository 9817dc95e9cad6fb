"""smtlock: Sumatra provenance tracking that keeps every record when many jobs start at once.

Importing smtlock makes every write a Sumatra project does safe (see :mod:`smtlock.patches`).
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

from . import patches
from .decorator import current_label, smt_logged
from .errors import (
    LockFileError,
    LockTimeout,
    NoProjectError,
    ProjectFileError,
    ServerUnreachable,
    SettingError,
    SMTLockError,
    StoreError,
)
from .lock import SMTLock

__version__ = "0.2.0"

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
    "ServerUnreachable",
    "SettingError",
    "__version__",
]

patches.apply()
