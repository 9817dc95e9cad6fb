"""The one error hierarchy of smtlock: catch :class:`SMTLockError` to catch them all."""

from __future__ import annotations

import math

# Sumatra's `smt` prints a RecordStoreAccessError as one line ("Error: ...", exit 1) and any other
# error as a traceback: ServerUnreachable is one too. Sumatra is loaded already (smtlock patches it).
from sumatra.recordstore.base import RecordStoreAccessError

__all__ = [
    "SMTLockError",
    "NoProjectError",
    "ProjectFileError",
    "LockFileError",
    "LockTimeout",
    "LockLost",
    "StoreError",
    "SettingError",
    "ServerUnreachable",
    "TrackedStoreError",
]


class SMTLockError(Exception):
    """Base class of every error smtlock raises; its message is one line that says what to do.

    Every subclass pickles (an error in a process-pool worker reaches the parent as itself).
    """


class NoProjectError(SMTLockError):
    """There is no Sumatra project (no ``.smt`` folder) at or above the given path."""


class ProjectFileError(SMTLockError):
    """``.smt/project`` is missing, unreadable or not valid JSON."""


class LockFileError(SMTLockError):
    """The lock file cannot be created or opened (for example ``.smt`` is not writable)."""


class StoreError(SMTLockError):
    """The record store cannot be reached or a write to it could not be done."""


class SettingError(SMTLockError):
    """An environment setting such as ``$SMTLOCK_TIMEOUT`` has a value smtlock cannot use."""


class LockTimeout(SMTLockError, TimeoutError):
    """The lock was not acquired within the timeout; ``holder`` says who has it."""

    def __init__(self, lock_file: str, timeout: float, holder: str | None) -> None:
        self.lock_file = lock_file
        self.timeout = timeout
        self.holder = holder
        who = holder or "an unknown process"
        super().__init__(
            f"timed out after {timeout:g} s waiting for {lock_file}, held by {who} "
            "(wait longer with a larger timeout, or stop that process)"
        )

    def __reduce__(self) -> tuple:
        # pickle rebuilds an exception from self.args (the message alone), which this __init__ refuses
        return type(self), (self.lock_file, self.timeout, self.holder)


class LockLost(SMTLockError):
    """A lock this process held was lost while it held it: another process may have held it since, so
    the block was not exclusive from then on, and nothing it wrote to the store after the loss was
    stored. ``lock`` names the lock, ``why`` says how it was lost and ``when`` (UTC) when it was noticed."""

    def __init__(self, lock: str, why: str, when: str) -> None:
        self.lock, self.why, self.when = lock, why, when
        super().__init__(f"the lock {lock} was lost ({why}; noticed at {when}): the block was not exclusive "
                         "from then on and none of its store writes since were stored; run it again")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple:
        return type(self), (self.lock, self.why, self.when)


class ServerUnreachable(StoreError, RecordStoreAccessError):
    """The store's PostgreSQL server did not accept a connection within the wait; ``where`` is its
    URI, masked, ``reason`` what the last attempt said and ``waited`` how long it was waited for."""

    def __init__(self, where: str, reason: str, waited: float = 0.0) -> None:
        self.where, self.reason, self.waited = where, reason, waited
        after = f"; waited {waited:.0f} s" if waited and not math.isinf(waited) else ""
        super().__init__(f"PostgreSQL at {where} is not reachable ({reason}{after}); if it is your own "
                         "server: smtlock server start")

    def __str__(self) -> str:  # OSError's would be "[Errno ...]"-shaped for several arguments
        return str(self.args[0])

    def __reduce__(self) -> tuple:
        return type(self), (self.where, self.reason, self.waited)


class TrackedStoreError(StoreError, RecordStoreAccessError):
    """Files under ``.smt`` (the record store, the project file) are tracked by the project's git
    repository: each record changes them, so Sumatra's check that the code is unchanged fails (upstream:
    a bare AssertionError in ``Record.register``). ``files``: those git tracks."""

    def __init__(self, files: "tuple[str, ...] | list[str]") -> None:
        self.files = tuple(files)
        super().__init__(f"{', '.join(self.files)} {'is' if len(self.files) == 1 else 'are'} tracked by git, and "
                         "Sumatra changes .smt with each record, so its check that the code is unchanged fails: "
                         "run `git rm -r --cached .smt`, add `.smt/` to .gitignore, and commit")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self) -> tuple:
        return type(self), (self.files,)
