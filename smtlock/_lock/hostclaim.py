"""One writing host for an SQLite or shelve store on a shared filesystem, where neither file locks
nor SQLite's own locking reach the other hosts."""

from __future__ import annotations

import os
import socket
import time
from typing import Optional

from ..errors import StoreError
from .atomic import AtomicFile
from .filesystem import is_shared, mount_of
from .lock import store_lock
from .paths import HOST_CLAIM_SUFFIX, RUNNING_DIR

__all__ = ["HOST_IDLE_S", "one_host"]

HOST_IDLE_S = 600.0  # a claim passes to another host after this long with no write and no running record


def one_host(path: Optional[str]) -> None:
    """Refuse to touch an SQLite or shelve store on a shared filesystem that another host writes.

    File locks rarely reach across the hosts of a shared filesystem, and SQLite's own locking and
    rollback journal do not either: a second host's reader can even roll back the first host's
    transaction in progress. Upstream writes regardless (databases "malformed", records silently
    missing). So the first host to write claims the store (``<store>.smtlock-host``, touched at each
    write); another host stops here, before it reads or writes anything, with a line that says what
    to do. A claim passes to another host once its host has had no running record and no write for
    :data:`HOST_IDLE_S` (a user whose home is on NFS may move between machines).
    """
    if path is None:
        return
    path = os.path.abspath(os.path.expanduser(path))
    folder = os.path.dirname(path)
    if not is_shared(folder):
        return
    me, claim = socket.gethostname(), path + HOST_CLAIM_SUFFIX
    with store_lock(path, "host check"):
        try:
            owner, idle = open(claim).read().split()[0], time.time() - os.stat(claim).st_mtime
        except (OSError, IndexError):
            owner, idle = me, 0.0
        if owner != me and (idle < HOST_IDLE_S or _runs_on(owner, folder)):
            mount = mount_of(folder)
            raise StoreError(
                f"the records are in {path}, a file on a shared filesystem ({mount.fstype} at "
                f"{mount.mountpoint}) that host {owner} writes; writing it from {me} too would corrupt it: "
                "keep the records in PostgreSQL, which every host reaches (`smtlock postgres URL`), or run "
                f"every job on {owner} (the store passes to another host once {owner} has run nothing and "
                f"written nothing for {HOST_IDLE_S / 60:.0f} min)")
        if os.path.exists(claim) and owner == me:
            os.utime(claim)
        else:
            with AtomicFile(claim, "w") as f:
                f.write(f"{me}\n")


def _runs_on(host: str, folder: str) -> bool:
    """Whether the project whose .smt is ``folder`` has a record running on ``host``."""
    try:
        notes = os.scandir(os.path.join(folder, RUNNING_DIR))
    except OSError:
        return False
    with notes:
        for note in notes:
            try:
                if open(note.path).read().split()[1:2] == [host]:
                    return True
            except (OSError, IndexError):
                continue
    return False
