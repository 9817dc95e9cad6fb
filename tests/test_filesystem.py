"""Which filesystem a path is on, from the mount tables of Linux and macOS."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smtlock._lock.filesystem import Mount, _linux_mounts, _parse_bsd_mount, mount_of


def test_this_test_folder_is_local(tmp_path: Path) -> None:
    mount = mount_of(tmp_path)
    assert mount.fstype != "unknown" and not mount.shared


def test_linux_mount_table_with_escaped_spaces(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("/dev/sda1 / ext4 rw 0 0\n"
                     "nas:/export /home/lab\\040data nfs4 rw,relatime 0 0\n"
                     "lab@login:/scratch /scratch fuse.sshfs rw 0 0\n"
                     "nas:/donnees /mnt/donn\u00e9es\\134x nfs rw 0 0\n", encoding="utf-8")
    # a name that is not ASCII stays whole (it came out as "donnÃ©es", and an NFS mount there was
    # taken for the local filesystem above it)
    assert _linux_mounts(table) == [("ext4", "/"), ("nfs4", "/home/lab data"), ("fuse.sshfs", "/scratch"),
                                    ("nfs", "/mnt/donn\u00e9es\\x")]


def test_macos_mount_output() -> None:
    output = ("/dev/disk3s1s1 on / (apfs, sealed, local, read-only, journaled)\n"
              "nas:/export on /Volumes/lab data (nfs, nodev, nosuid, mounted by ann)\n")
    assert _parse_bsd_mount(output) == [("apfs", "/"), ("nfs", "/Volumes/lab data")]


def test_shared_types() -> None:
    assert all(Mount(kind, "/x").shared for kind in ("nfs", "lustre", "gpfs", "fuse.sshfs", "fuse", "unknown"))
    assert not any(Mount(kind, "/x").shared for kind in ("ext4", "xfs", "apfs", "btrfs", "tmpfs", "overlay"))


MOUNT_OVER = """
import subprocess, sys
from smtlock._lock.filesystem import mount_of
folder = sys.argv[1]
before = mount_of(folder).fstype
subprocess.run(["mount", "-t", "tmpfs", "none", folder], check=True)
print(before, mount_of(folder).fstype)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_a_folder_mounted_over_is_looked_up_again(tmp_path: Path) -> None:
    """The answer is remembered per process; a new mount on the path is not missed. (In a mount
    namespace of its own, which ends with the process: nothing is left mounted.)"""
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", MOUNT_OVER,
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.split()
    assert before != "tmpfs" and after == "tmpfs"
