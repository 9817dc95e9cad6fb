"""What filesystem a path is on, and whether other hosts may share it (Linux and macOS).

File locks may not reach across the hosts of a network or cluster filesystem, and SQLite must not be
written there by more than one host. The doctor asks here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

__all__ = ["Mount", "mount_of", "is_shared", "SHARED_TYPES", "FILESYSTEM_VARIABLE"]

#: ``local`` or ``shared``: overrides what the mount table says (an unknown type counts as shared)
FILESYSTEM_VARIABLE = "SMTLOCK_FILESYSTEM"

#: filesystem types that hosts share: network and cluster filesystems; every FUSE type counts too
#: (sshfs, glusterfs, s3fs...: their locks rarely reach other hosts)
SHARED_TYPES = {"nfs", "nfs4", "cifs", "smb", "smb3", "smbfs", "9p", "lustre", "gpfs", "ceph", "glusterfs",
                "beegfs", "afs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs", "wekafs", "webdav", "fuse"}


@dataclass(frozen=True)
class Mount:
    """The mount a path lives on."""

    fstype: str
    mountpoint: str

    @property
    def shared(self) -> bool:
        """Whether other hosts may see this filesystem (an unknown type is treated as shared)."""
        kind = self.fstype.lower()
        return kind == "unknown" or kind in SHARED_TYPES or kind.startswith(("fuse.", "fuse"))


def mount_of(path: "str | os.PathLike[str]") -> Mount:
    """The mount that holds ``path`` (the longest mount point above it).

    Remembered per process for a path on the same device: every record write asks, and the mount
    table is a file to parse on Linux and a ``mount`` command to run on macOS. A path mounted over
    meanwhile is on another device, so it is looked up again.
    """
    real = os.path.realpath(path)
    try:
        key: Optional[Tuple[str, int]] = (real, os.stat(real).st_dev)
    except OSError:
        key = None
    if key is not None and key in _known:
        return _known[key]
    best = Mount("unknown", "/")
    for fstype, mountpoint in _mounts():
        inside = real == mountpoint or real.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best.mountpoint):
            best = Mount(fstype, mountpoint)
    if key is not None:
        _known[key] = best
    return best


_known: Dict[Tuple[str, int], Mount] = {}  # (real path, its device) -> its mount


def is_shared(path: "str | os.PathLike[str]") -> bool:
    """Whether other hosts may write ``path``'s filesystem: ``$SMTLOCK_FILESYSTEM`` if set, else the
    mount table."""
    said = os.environ.get(FILESYSTEM_VARIABLE, "").strip().lower()
    if said in ("local", "shared"):
        return said == "shared"
    if said:
        from ..errors import SettingError
        raise SettingError(f"{FILESYSTEM_VARIABLE}={said!r}: use local (only this host writes the "
                           "project) or shared")
    return mount_of(path).shared


def _mounts() -> Iterable[Tuple[str, str]]:
    """(type, mount point) of every mount this process sees."""
    if sys.platform.startswith("linux"):
        return _linux_mounts(Path("/proc/self/mounts"))
    if sys.platform == "darwin":
        return _parse_bsd_mount(_run(["/sbin/mount"]))
    return []


def _linux_mounts(table: Path) -> List[Tuple[str, str]]:
    try:
        lines = table.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except OSError:
        return []
    # fields: device, mount point (with octal escapes such as \040 for a space), type, options...
    return [(fields[2], _unescape(fields[1])) for fields in (line.split() for line in lines) if len(fields) >= 3]


def _unescape(field: str) -> str:
    """A mount point as the mount table writes it: ``\\ooo`` octal escapes of bytes (space, tab,
    newline, backslash), the rest as it is (a name that is not ASCII stays whole)."""
    return re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape.group(1), 8)), field)


def _parse_bsd_mount(output: str) -> List[Tuple[str, str]]:
    """``mount`` on macOS: ``server:/export on /Volumes/data (nfs, nodev, nosuid)``."""
    found = []
    for line in output.splitlines():
        head, sep, options = line.rpartition(" (")
        device, on, mountpoint = head.partition(" on ")
        if sep and on:
            found.append((options.split(",")[0].strip(" )"), mountpoint))
    return found


def _run(command: List[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
