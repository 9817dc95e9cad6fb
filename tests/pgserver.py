"""The tests' PostgreSQL: smtlock's throwaway server (see :class:`smtlock._postgres.server.ThrowawayServer`), and
Debian's PgBouncer in front of it as a site runs one."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Optional

from smtlock._postgres.server import _NOBODY
from smtlock._postgres.server import ThrowawayServer as Cluster
from smtlock._postgres.server import _free_port as free_port

__all__ = ["Cluster", "free_port", "Bouncer", "pgbouncer_binary", "need_pgbouncer"]


def pgbouncer_binary() -> Optional[str]:
    """Debian's ``pgbouncer`` (in /usr/sbin, often not on a user's PATH), or None."""
    return shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/local/sbin")


def need_pgbouncer() -> None:
    """Debian's pgbouncer, installed here as `make test` does when missing (as root, with apt); only where
    neither is possible is the test skipped (never in CI, which runs as root)."""
    import pytest
    if pgbouncer_binary() is None and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if pgbouncer_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("pgbouncer is missing in CI: `make test-tools` installs it")
        pytest.skip("Debian's pgbouncer is not installed and cannot be here (no root or no apt-get): "
                    "sudo apt-get install pgbouncer")


class Bouncer:
    """PgBouncer in front of ``cluster`` on a free loopback port, as ``nobody`` when run as root (it refuses
    root), with scram-sha-256 logins checked against its own userlist (``users``: name -> password).
    Each of ``databases`` (alias -> (server database, pool mode)) is one entry of its [databases]: the
    `postgres` maintenance database is not exposed, as at a site. Like PgBouncer 1.18's defaults, it refuses
    startup parameters it cannot track (``options``) unless told to ignore them. ``stop()`` ends it by its pid."""

    def __init__(self, cluster: Cluster, users: Dict[str, str], databases: Dict[str, tuple],
                 ignore_startup_parameters: str = "", pool_size: int = 2) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise RuntimeError("pgbouncer not found (apt-get install pgbouncer)")
        self.cluster, self.port = cluster, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smtlock-pgbouncer-"))
        userlist = "".join(f'"{user}" "{password}"\n' for user, password in users.items())
        (self.dir / "userlist.txt").write_text(userlist)
        entries = "".join(f"{alias} = host=127.0.0.1 port={cluster.port} dbname={db} pool_mode={mode}\n"
                          for alias, (db, mode) in databases.items())
        # a small pool, so that clients take turns on the same few server connections
        (self.dir / "pgbouncer.ini").write_text(
            f"[databases]\n{entries}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"unix_socket_dir =\nauth_type = scram-sha-256\nauth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = transaction\ndefault_pool_size = {pool_size}\nmax_client_conn = 200\n"
            f"ignore_startup_parameters = {ignore_startup_parameters}\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n")
        as_user = []
        if os.geteuid() == 0:
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, 65534, 65534)
            as_user = _NOBODY
        # its log goes to the logfile; on stderr too, which nobody reads: a pipe would fill and block it
        self._argv = [*as_user, binary, str(self.dir / "pgbouncer.ini")]
        self.proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def crash_and_restart(self) -> None:
        """SIGKILL PgBouncer (every client and server connection it had is cut) and start it again
        on the same port."""
        self.proc.kill()
        self.proc.wait()
        self.proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening()

    def _wait_listening(self) -> None:
        """Until PgBouncer accepts a TCP connection (or has exited: then its error)."""
        deadline = time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"pgbouncer did not start: {self.log()[-2000:]}")

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text()
        except OSError:
            return ""

    def uri(self, user: str, password: str, db: str) -> str:
        return f"postgres://{user}:{password}@127.0.0.1:{self.port}/{db}"

    def stop(self) -> None:
        """End PgBouncer (SIGTERM to its pid, SIGKILL if it lingers) and remove its folder."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
