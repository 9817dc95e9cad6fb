"""Hosts made on one machine, for the harness and the tests: a cluster's nodes sharing one folder.

Each host is a mount and UTS namespace (its own hostname) with its own FUSE mount (bindfs) of the
shared folder, laid over the folder itself, so every host sees it at the same path. File locks taken
on one host do not reach the others, as on NFS without a lock daemon, Lustre mounted ``localflock``
or sshfs. Outside the hosts (where the harness makes the project and recounts it) the folder is the
plain local one. Needs root (namespaces, FUSE) and ``bindfs``; everything is undone on exit, also
after a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import List, Optional

from .errors import SMTLockError

__all__ = ["SharedFolderHosts"]

# Runs in each host's new namespaces: name the host, mount the folder over itself, report, wait.
_KEEPER = """
import os, socket, subprocess, sys, time
name, folder = sys.argv[1:3]
socket.sethostname(name)
fs = subprocess.Popen(["bindfs", "-f", folder, folder])
def mounted():
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == folder and line.split()[2].startswith("fuse") for line in mounts)
while fs.poll() is None and not mounted():
    time.sleep(0.01)
print("ready" if fs.poll() is None else "failed", fs.pid, flush=True)
sys.stdin.read()  # until the harness closes our stdin
subprocess.run(["fusermount", "-u", folder], capture_output=True)
fs.wait()
"""


class SharedFolderHosts:
    """``count`` hosts named ``host-1``... sharing ``folder``; :meth:`command` runs a command on one."""

    def __init__(self, folder: Path, count: int) -> None:
        self.folder = Path(folder).absolute()
        self.count = count
        self.names = [f"host-{i + 1}" for i in range(count)]
        self._keepers: List[subprocess.Popen] = []
        self._mounts: List[int] = []  # bindfs pids, killed if a keeper cannot unmount

    @staticmethod
    def check() -> None:
        """Say in one line what is missing to make hosts here."""
        if os.geteuid() != 0:
            raise SMTLockError("hosts sharing a folder need root (mount namespaces and FUSE): run as root")
        for tool in ("bindfs", "fusermount", "unshare", "nsenter"):
            if shutil.which(tool) is None:
                raise SMTLockError(f"hosts sharing a folder need {tool} (Debian: apt-get install bindfs "
                                   "fuse util-linux)")

    def __enter__(self) -> "SharedFolderHosts":
        self.check()
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            for name in self.names:
                keeper = subprocess.Popen(
                    ["unshare", "--uts", "--mount", "--propagation", "private", "--",
                     sys.executable, "-c", _KEEPER, name, str(self.folder)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                self._keepers.append(keeper)
                word, pid = (keeper.stdout.readline().split() + ["", ""])[:2]
                if word != "ready":
                    raise SMTLockError(f"could not mount {self.folder} with bindfs on {name} (is FUSE "
                                       "available here? /dev/fuse)")
                self._mounts.append(int(pid))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def command(self, host: int, argv: List[str]) -> List[str]:
        """``argv`` run on host number ``host`` (0-based), in its namespaces."""
        keeper = self._keepers[host]
        return ["nsenter", "--target", str(keeper.pid), "--mount", "--uts", "--", *argv]

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        for keeper in self._keepers:
            if keeper.stdin and not keeper.stdin.closed:
                keeper.stdin.close()
        for keeper, pid in zip(self._keepers, self._mounts + [0] * len(self._keepers)):
            try:
                keeper.wait(timeout=30)
            except subprocess.TimeoutExpired:
                for victim in (pid, keeper.pid):
                    if victim:
                        try:
                            os.kill(victim, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                keeper.wait()
        self._keepers, self._mounts = [], []
