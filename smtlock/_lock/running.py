"""Notes of running records, ``.smt/smtlock-running/<label>``: which process runs a record ("pid
host"), which Sumatra does not store. ``smtlock doctor`` tells by them a record whose process was
killed from one still running, and the host check of a shared store a host that still runs one."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import socket
import threading
from typing import Dict, Tuple

from .atomic import TEMP_SUFFIX, temporary_prefix
from .paths import RUNNING_DIR

__all__ = ["note_running", "note_ended"]

#: (pid, .smt folder) -> this process's note there, of which each record's note is a hard link
_sources: Dict[Tuple[int, str], str] = {}
_guard = threading.Lock()


def note_running(smt: str, label: str) -> None:
    """Note that this process runs ``label`` in the project whose ``.smt`` folder is ``smt``.

    The note is a hard link to a file this process writes once, beside the temporary files of atomic
    writes in ``.smt`` (named as they are: once its process has ended, the next write removes it), not
    a file made for each record: a new file allocates an inode, ~0.2 ms of each ``@smt_logged`` call
    on a busy ext4. Where no hard link can be made, the note is a file of its own."""
    note = os.path.join(smt, RUNNING_DIR, label.replace("/", "_"))
    for _ in range(3):
        try:
            source = _source(smt)
        except OSError:  # .smt not this user's to write: a file of its own
            break
        try:
            os.link(source, note)
            return
        except FileExistsError:  # noted already: by this process (a record saved running again), or
            with contextlib.suppress(OSError):  # by one killed while it ran a record of this label
                if os.path.samefile(source, note):
                    return
            with contextlib.suppress(FileNotFoundError):
                os.unlink(note)
        except FileNotFoundError:  # the folder of notes is new, or this process's note was removed
            if os.path.isdir(os.path.dirname(note)):
                with _guard:
                    _sources.pop((os.getpid(), smt), None)
            else:
                os.makedirs(os.path.dirname(note), exist_ok=True)
        except OSError:  # a filesystem without hard links
            break
    os.makedirs(os.path.dirname(note), exist_ok=True)
    with open(note, "w") as file:
        file.write(_text())


def note_ended(smt: str, label: str) -> None:
    """Remove the note of ``label``, if there is one."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(smt, RUNNING_DIR, label.replace("/", "_")))


def _text() -> str:
    return f"{os.getpid()} {socket.gethostname()}\n"


def _source(smt: str) -> str:
    """This process's note in ``smt``, written the first time (mode as ``open`` gives, for a group)."""
    key = (os.getpid(), smt)  # a forked child writes its own
    with _guard:
        source = _sources.get(key)
        if source is None:
            source = os.path.join(smt, f"{temporary_prefix(RUNNING_DIR)}{secrets.token_hex(4)}{TEMP_SUFFIX}")
            fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            with os.fdopen(fd, "w") as file:
                file.write(_text())
            _sources[key] = source
        return source


@atexit.register
def _remove_sources() -> None:
    """At exit, this process's notes (one killed leaves them to the next atomic write in ``.smt``)."""
    for (pid, _), source in list(_sources.items()):
        if pid == os.getpid():
            with contextlib.suppress(OSError):
                os.unlink(source)
