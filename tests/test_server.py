"""`smtlock server`: a PostgreSQL server of the user's own, made and run by a normal user (``nobody``,
or uids 2001 and 2002 for two users, keeping only CAP_DAC_READ_SEARCH to read this test environment
under /root), then a project moved onto it and a burst written to it; what another local user can
and cannot do; and each trap a new user fell into."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from pgserver import free_port

from smtlock._harness.burst import make_project, run_burst
from smtlock._harness.census import recount
from smtlock._postgres import server

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")
NOBODY = 65534
GUIDE = (Path(__file__).resolve().parent.parent / "docs" / "cluster.rst").read_text()  # "Sumatra on PostgreSQL"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the tests switch to other users, which needs root")


def as_user(home: Path, *args: str, uid: int = NOBODY, cwd: Path = None, program: str = SMTLOCK,
            env: Dict[str, str] = None, caps: bool = True, stdin: str = "") -> subprocess.CompletedProcess:
    """Run ``program args`` as the user ``uid`` whose home is ``home`` (libpq's ~/.pgpass there); with
    ``caps``, keeping CAP_DAC_READ_SEARCH (to reach this environment's Python under /root): without
    it, the user reads only what the permissions let it."""
    prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
              *(["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"] if caps else []), "--"]
    clean = {k: v for k, v in os.environ.items() if k not in ("PGPASSFILE", "XDG_DATA_HOME")}
    return subprocess.run([*prefix, program, *args], capture_output=True, text=True, timeout=180, cwd=cwd, input=stdin,
                          env={**clean, "HOME": str(home), "GIT_CONFIG_COUNT": "1",
                               "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*", **(env or {})})


def make_home(uid: int = NOBODY) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="smtlock-home-"))  # outside pytest's 0700 folder
    os.chmod(folder, 0o755)  # a home folder as useradd makes it: others may look in
    os.chown(folder, uid, uid)
    return folder


def give(path: Path, uid: int) -> None:
    for folder, dirs, files in os.walk(path):
        for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
            os.chown(name, uid, uid)


def readme_commands(heading: str) -> List[List[str]]:
    """The commands of the guide's block after ``heading``, as written (comments dropped)."""
    block = re.search(re.escape(heading) + r".*?::\n\n((?:    [^\n]*\n)+)", GUIDE, re.S).group(1)
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line.split() for line in lines if line and not line.startswith("pip ")]


@pytest.fixture
def home():
    folder = make_home()
    yield folder
    as_user(folder, "server", "stop")
    shutil.rmtree(folder)


@pytest.mark.burst
def test_the_readmes_commands_make_a_server_that_keeps_a_burst(home: Path, tmp_path: Path, monkeypatch) -> None:
    commands = readme_commands("**On a laptop or one workstation**")
    assert [c[:3] for c in commands] == [["smtlock", "server", "init"], ["smtlock", "server", "start"],
                                         ["smtlock", "postgres", "--server"]]
    project = make_project(home / "project")
    give(project, NOBODY)
    port = free_port()  # the README's default, 5433, may be taken on a test machine
    for command in commands:
        done = as_user(home, *command[1:], *(["--port", str(port)] if command[2] == "init" else []), cwd=project)
        assert done.returncode == 0, done.stderr
        assert "error" not in done.stderr
    assert "next, in a project: smtlock postgres --server\n" in as_user(home, "server", "start").stdout
    folder = home / ".local" / "share" / "smtlock" / "server"
    role_password = (folder / "role-password").read_text().strip()
    for secret in ("password", "role-password"):
        assert (folder / secret).stat().st_mode & 0o777 == 0o600
    url = f"postgres://smtlock@127.0.0.1:{port}/sumatra"
    assert as_user(home, "server", "url").stdout.strip() == url
    assert url in (project / ".smt" / "project").read_text()

    monkeypatch.setenv("PGPASSFILE", str(home / ".pgpass"))  # the jobs run as root here, as that user
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "safe.directory")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "*")
    burst = run_burst(project, "locked", 32, 1, tmp_path / "jobs")
    assert burst["codes"] == {job: 0 for job in range(32)}
    rows = recount(f"postgres://smtlock:{role_password}@127.0.0.1:{port}/sumatra", project)["records"]
    assert sorted(row["job"] for row in rows) == list(range(32))
    assert len({row["label"] for row in rows}) == 32


def test_another_local_user_finds_no_password_and_the_projects_role_is_no_superuser(tmp_path: Path) -> None:
    alice, bob = NOBODY, 2002  # initdb needs its user in /etc/passwd: nobody is
    alice_home, bob_home = make_home(alice), make_home(bob)
    try:
        port = str(free_port())
        assert as_user(alice_home, "server", "init", "--port", port, uid=alice).returncode == 0
        assert as_user(alice_home, "server", "start", uid=alice).returncode == 0
        project = make_project(alice_home / "project")
        give(project, alice)
        moved = as_user(alice_home, "postgres", "--server", uid=alice, cwd=project)
        assert moved.returncode == 0, moved.stderr
        folder = alice_home / ".local" / "share" / "smtlock" / "server"
        secrets = [(folder / name).read_text().strip() for name in ("password", "role-password")]
        info = as_user(alice_home, "info", uid=alice, cwd=project, program=os.path.join(os.path.dirname(SMTLOCK),
                                                                                         "smt"))
        assert info.returncode == 0 and f"@127.0.0.1:{port}/sumatra" in info.stdout

        # bob: no capability, the system's Python and psql (he cannot reach this venv under /root)
        found = as_user(bob_home, "-c", FIND_SECRETS, str(alice_home), uid=bob, caps=False,
                        program="/usr/bin/python3", stdin="\n".join(secrets))  # not in argv: ps shows it
        assert found.returncode == 0, found.stderr
        assert re.fullmatch(r"read \d+ files\n", found.stdout) and int(found.stdout.split()[1]) > 5, found.stdout
        bob_connects = as_user(bob_home, "-w", "-c", "SELECT 1", f"host=127.0.0.1 port={port} dbname=sumatra "
                               "user=smtlock", uid=bob, caps=False, program="psql")
        assert "fe_sendauth: no password supplied" in bob_connects.stderr, bob_connects.stderr
        for user in ("smtlock", "smtlock_admin"):  # the server's unix socket is in alice's 0700 folder
            socket_try = as_user(bob_home, "-w", "-c", "SELECT 1", f"host={folder} port={port} dbname=postgres "
                                 f"user={user}", uid=bob, caps=False, program="psql")
            assert socket_try.returncode == 2 and "Permission denied" in socket_try.stderr, socket_try.stderr

        alice_tries = as_user(alice_home, "-c", AS_PROJECTS_ROLE, f"host=127.0.0.1 port={port} dbname=sumatra "
                              "user=smtlock", uid=alice, program=sys.executable)
        assert alice_tries.stdout.split() == ["superuser=False", "copy-to-program=refused",
                                              "create-role=refused"], alice_tries.stdout + alice_tries.stderr
    finally:
        as_user(alice_home, "server", "stop", uid=alice)
        shutil.rmtree(alice_home)
        shutil.rmtree(bob_home)


FIND_SECRETS = """
import os, sys
home, secrets = sys.argv[1], sys.stdin.read().split()
count = 0
for folder, dirs, files in os.walk(home):
    for name in files:
        try:
            text = open(os.path.join(folder, name), "rb").read().decode(errors="replace")
        except OSError:
            continue
        count += 1
        for secret in secrets:
            if secret in text:
                print("FOUND in", os.path.join(folder, name))
print("read", count, "files")
"""
AS_PROJECTS_ROLE = """
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
conn.autocommit = True
cur = conn.cursor()
cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
print(f"superuser={cur.fetchone()[0]}")
for name, statement in (("copy-to-program", "COPY (SELECT 1) TO PROGRAM 'id'"), ("create-role", "CREATE ROLE x")):
    try:
        cur.execute(statement)
        print(f"{name}=allowed")
    except psycopg2.errors.InsufficientPrivilege:
        print(f"{name}=refused")
"""


def test_a_port_in_time_wait_after_a_stop_is_free(home: Path) -> None:
    """A client connected when the server stopped leaves its port in TIME-WAIT: start must not say
    the port is taken (before: "port N on 127.0.0.1 is taken" for about a minute)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as PostgreSQL listens
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: its port goes to TIME-WAIT
        client.close()
    with socket.socket() as plain:  # what the check did: bind without SO_REUSEADDR
        with pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
    assert as_user(home, "server", "init", "--port", str(port)).returncode == 0
    started = as_user(home, "server", "start")
    assert started.returncode == 0, started.stderr


LOOPBACK_NAME = server._is_loopback(socket.getfqdn())  # as here: the machine's name is 127.0.0.1's


@pytest.mark.parametrize("args, expected", [
    (["server", "start"], "no smtlock server in"),
    (["server", "init", "--port", "99999"], "bad port 99999"),
    (["server", "init", "--port", "80"], "port 80 is privileged"),
    pytest.param(["server", "init", "--listen", "*"], "give the name or address they reach this host by, with "
                 "--host NAME", marks=pytest.mark.skipif(not LOOPBACK_NAME, reason="this host's name is not "
                                                         "loopback's")),
    (["server", "init", "--folder", "/proc/smtlock"], "cannot make the server's folder /proc/smtlock"),
])
def test_server_bad_input(home: Path, args: list, expected: str) -> None:
    done = as_user(home, *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr, \
        done.stderr
    assert not (home / ".local" / "share" / "smtlock" / "server").exists()


def test_server_refuses_root_and_says_how(tmp_path: Path) -> None:
    done = subprocess.run([SMTLOCK, "server", "init", "--folder", str(tmp_path / "s")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "PostgreSQL refuses to run as root" in done.stderr


def test_a_taken_port_is_refused_at_init(home: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        done = as_user(home, "server", "init", "--port", port)
    assert done.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in done.stderr


def test_the_binaries_that_made_the_server_start_it(home: Path) -> None:
    """A server.json that names no binaries (smtlock 0.2's) starts with the version that made the data
    folder, whatever else is installed; a version that is not here is named in one line."""
    assert as_user(home, "server", "init", "--port", str(free_port())).returncode == 0
    folder = home / ".local" / "share" / "smtlock" / "server"
    settings = (folder / "server.json").read_text()
    (folder / "server.json").write_text(re.sub(r'"binaries": "[^"]*",', "", settings))
    version = (folder / "data" / "PG_VERSION").read_text().strip()
    started = as_user(home, "server", "start")
    assert started.returncode == 0, started.stderr
    assert f"PostgreSQL {version} in" in as_user(home, "server", "status").stdout
    assert as_user(home, "server", "stop").returncode == 0
    (folder / "data" / "PG_VERSION").write_text("11\n")
    done = as_user(home, "server", "start")
    assert done.returncode == 2 and "made by PostgreSQL 11" in done.stderr and "postgresql-11" in done.stderr
    (folder / "data" / "PG_VERSION").write_text(version + "\n")


def test_a_server_for_other_hosts_names_its_host_and_encrypts_where_it_can(home: Path) -> None:
    named = as_user(home, "server", "init", "--listen", "*", "--host", "login1.cluster.example", "--folder",
                    str(home / "cluster"))
    assert named.returncode == 0, named.stderr
    url = as_user(home, "server", "url", "--folder", str(home / "cluster")).stdout.strip()
    assert url.startswith("postgres://smtlock@login1.cluster.example:5433/")

    port = str(free_port())
    made = as_user(home, "server", "init", "--listen", "127.0.0.2", "--port", port)  # an address, no traffic out
    assert made.returncode == 0, made.stderr
    started = as_user(home, "server", "start")
    assert started.returncode == 0, started.stderr
    status = as_user(home, "server", "status").stdout
    password = as_user(home, "server", "url", "--show-password").stdout.strip().split(":")[2].split("@")[0]
    if "encrypted (TLS)" in status:
        checked = as_user(home, "-c", SSL_IN_USE, f"host=127.0.0.2 port={port} dbname=sumatra user=smtlock "
                          f"password={password} sslmode=require", program=sys.executable)
        assert checked.stdout.strip() == "ssl=True", checked.stdout + checked.stderr
    else:  # no binaries with TLS here: it says so plainly
        assert "NOT encrypted: these PostgreSQL binaries have no TLS" in status


SSL_IN_USE = """
import sys, psycopg2
conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor()
cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
print(f"ssl={cur.fetchone()[0]}")
"""


@contextlib.contextmanager
def small_disk(home: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` in the user's home, theirs; unmounted at the end (its server stopped first)."""
    disk = home / "small"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
    try:
        os.chown(disk, NOBODY, NOBODY)
        yield disk
    finally:
        (disk / "filler").unlink(missing_ok=True)
        if (disk / "server").exists():
            as_user(home, "server", "stop", "--folder", str(disk / "server"))  # if it is still running
        subprocess.run(["umount", str(disk)], check=True)


def test_init_on_a_full_disk_says_so(home: Path) -> None:
    with small_disk(home, "1m") as disk:
        done = as_user(home, "server", "init", "--folder", str(disk / "server"), "--port", str(free_port()))
        assert done.returncode == 2 and "No space left on device" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        assert not (disk / "server").exists()


def test_stop_says_when_the_server_panicked(home: Path) -> None:
    """A server whose disk filled up PANICs in its shutdown checkpoint; `stop` said "stopped"."""
    with small_disk(home, "120m") as disk:
        folder = ["--folder", str(disk / "server")]
        assert as_user(home, "server", "init", *folder, "--port", str(free_port())).returncode == 0
        assert as_user(home, "server", "start", *folder).returncode == 0
        with open(disk / "filler", "wb") as filler:  # the disk full
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * (1 << 20))
                    filler.flush()
        done = as_user(home, "server", "stop", *folder)
        assert done.returncode == 2 and " PANIC: " in done.stderr and "No space left on device" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "stopped, after an error" in done.stderr


def test_a_server_on_ipv6_loopback_gives_a_url_of_it(home: Path) -> None:
    made = as_user(home, "server", "init", "--listen", "::1", "--port", str(free_port()))
    assert made.returncode == 0, made.stderr
    assert as_user(home, "server", "url").stdout.strip().startswith("postgres://smtlock@[::1]:")  # was 127.0.0.1
