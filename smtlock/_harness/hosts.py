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

from ..errors import SMTLockError

__all__ = ["SharedFolderHosts", "NetworkHosts"]

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
                assert keeper.stdout is not None
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


class NetworkHosts:
    """``count`` hosts and a server, each a network namespace of its own: ``host-1``... reach the
    server over a link of their own (a veth pair, 10.213.N.2 to 10.213.N.1), with no default route, so
    no traffic leaves them. Commands on a host also get a UTS namespace with its name. :meth:`cut`
    drops a host's link without a FIN or an RST, as a pulled cable or a power loss does. Needs root
    and ``ip`` (iproute2); every namespace and link is removed on exit, also after a failure."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.names = [f"host-{i + 1}" for i in range(count)]
        tag = f"smtlock{os.getpid()}"
        self.server_ns = f"{tag}-server"
        self.host_ns = [f"{tag}-h{i + 1}" for i in range(count)]
        self.server_addresses = [f"10.213.{i + 1}.1" for i in range(count)]
        self.host_addresses = [f"10.213.{i + 1}.2" for i in range(count)]
        self._made: List[str] = []

    @staticmethod
    def check() -> None:
        """Say in one line what is missing to make hosts here."""
        if os.geteuid() != 0:
            raise SMTLockError("hosts with a network of their own need root (network namespaces): run as root")
        for tool in ("ip", "unshare"):
            if shutil.which(tool) is None:
                raise SMTLockError(f"hosts with a network of their own need {tool} (Debian: apt-get install "
                                   "iproute2 util-linux)")

    def _ip(self, *args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True)
        if done.returncode:
            raise SMTLockError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")

    def __enter__(self) -> "NetworkHosts":
        self.check()
        try:
            for ns in (self.server_ns, *self.host_ns):
                self._ip("netns", "add", ns)
                self._made.append(ns)
                self._ip("-n", ns, "link", "set", "lo", "up")
            for i, ns in enumerate(self.host_ns):
                outer, inner = f"s{i + 1}", f"h{i + 1}"
                self._ip("link", "add", outer, "netns", self.server_ns, "type", "veth", "peer", "name", inner,
                         "netns", ns)
                self._ip("-n", self.server_ns, "addr", "add", f"{self.server_addresses[i]}/30", "dev", outer)
                self._ip("-n", ns, "addr", "add", f"{self.host_addresses[i]}/30", "dev", inner)
                self._ip("-n", self.server_ns, "link", "set", outer, "up")
                self._ip("-n", ns, "link", "set", inner, "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def command(self, host: int, argv: List[str]) -> List[str]:
        """``argv`` run on host number ``host`` (0-based): its network, its hostname."""
        return ["ip", "netns", "exec", self.host_ns[host], "unshare", "--uts", "--", "sh", "-c",
                f'hostname {self.names[host]} && exec "$@"', "sh", *argv]

    def server_command(self, argv: List[str]) -> List[str]:
        """``argv`` run in the server's namespace."""
        return ["ip", "netns", "exec", self.server_ns, *argv]

    def cut(self, host: int) -> None:
        """Pull host ``host``'s cable: its packets are dropped from now on, with no FIN and no RST."""
        self._ip("-n", self.host_ns[host], "link", "set", f"h{host + 1}", "down")

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        # the processes still in a namespace are the caller's to end; deleting a namespace removes its
        # links (a veth pair goes with either end)
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        self._made = []
