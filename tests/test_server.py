"""`smtlock server`: a PostgreSQL server of the user's own, made and run by a normal user (here
``nobody``, keeping only CAP_DAC_READ_SEARCH to read this test environment under /root), then a
project moved onto it and a burst written to it."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from pgserver import free_port

from smtlock.burst import make_project, run_burst
from smtlock.census import recount

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+dac_read_search",
          "--ambient-caps=+dac_read_search", "--"]


def as_user(home: Path, *args: str) -> subprocess.CompletedProcess:
    prefix = NOBODY if os.geteuid() == 0 else []
    return subprocess.run([*prefix, SMTLOCK, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(home), "XDG_DATA_HOME": ""})


@pytest.fixture
def home():
    folder = Path(tempfile.mkdtemp(prefix="smtlock-home-"))  # outside pytest's 0700 folder
    if os.geteuid() == 0:
        os.chown(folder, 65534, 65534)
    yield folder
    as_user(folder, "server", "stop")
    shutil.rmtree(folder)


def test_a_users_own_server_keeps_a_burst(home: Path, tmp_path: Path) -> None:
    port = str(free_port())
    made = as_user(home, "server", "init", "--port", port)
    assert made.returncode == 0, made.stderr
    folder = home / ".local" / "share" / "smtlock" / "server"
    password = (folder / "password").read_text().strip()
    assert (folder / "password").stat().st_mode & 0o777 == 0o600
    started = as_user(home, "server", "start")
    assert started.returncode == 0, started.stderr
    assert f"postgres://smtlock:***@127.0.0.1:{port}/sumatra" in started.stdout
    assert password not in started.stdout + as_user(home, "server", "status").stdout
    assert as_user(home, "server", "url", "--show-password").stdout.strip() == (
        f"postgres://smtlock:{password}@127.0.0.1:{port}/sumatra")

    project = make_project(tmp_path / "project")
    moved = subprocess.run([SMTLOCK, "postgres", "--server", str(folder)], cwd=project, capture_output=True,
                           text=True)
    assert moved.returncode == 0, moved.stderr
    assert password not in moved.stdout + moved.stderr
    burst = run_burst(project, "locked", 64, 1, tmp_path / "jobs")
    assert burst["codes"] == {job: 0 for job in range(64)}
    uri = f"postgres://smtlock:{password}@127.0.0.1:{port}/sumatra"
    rows = recount(uri, project)["records"]
    assert sorted(row["job"] for row in rows) == list(range(64))
    assert len({row["label"] for row in rows}) == 64


@pytest.mark.parametrize("args, expected", [
    (["server", "start"], "no smtlock server in"),
    (["server", "init", "--port", "99999"], "bad port 99999"),
])
def test_server_bad_input(home: Path, args: list, expected: str) -> None:
    done = as_user(home, *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and expected in done.stderr


def test_server_refuses_root_and_says_how(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("only root is refused")
    done = subprocess.run([SMTLOCK, "server", "init", "--folder", str(tmp_path / "s")], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "PostgreSQL refuses to run as root" in done.stderr


def test_port_taken(home: Path) -> None:
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        assert as_user(home, "server", "init", "--port", port).returncode == 0
        done = as_user(home, "server", "start")
    assert done.returncode == 2 and f"port {port} on 127.0.0.1 is taken" in done.stderr
