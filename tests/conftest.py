"""Shared fixtures: real Sumatra projects in temporary folders, code run in fresh processes.

Django is configured once per process, so anything that opens a Django store runs in a subprocess.

Tests marked ``burst`` release many processes at once. They run one at a time on this machine: under
pytest-xdist (``-n``) they all go to one worker, and each holds an exclusive flock while it runs, which
also keeps two pytest runs (two nox sessions, say) from bursting together.
"""

import ast
import fcntl
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Set, Tuple

import pytest

from smtlock._harness.burst import make_project

# Sumatra probes an outside address over HTTP (1 s timeout) for each record's platform information
# (sumatra.core.have_internet_connection). The tests send no traffic off this machine: the probe goes
# to a proxy on loopback that refuses at once, so every process the tests start, plain Sumatra's too,
# gets the answer of a host without internet access (whatever network the machine has).
os.environ["http_proxy"] = "http://127.0.0.1:9"
os.environ.pop("HTTP_PROXY", None)
os.environ.pop("no_proxy", None)
os.environ.pop("NO_PROXY", None)

#: the flock every burst holds while it runs: one per user of the machine (a test run as root and one
#: as a developer may overlap; two of the same user never do)
BURSTS = Path(tempfile.gettempdir()) / f"smtlock-tests-bursts-{os.getuid()}.lock"


def marked_bursts() -> Set[Tuple[str, str]]:
    """(file name, test name) of each test decorated ``@pytest.mark.burst``, read from the sources:
    xdist's controller, which sends the tests to the workers, knows them by node id only."""
    found = set()
    for path in Path(__file__).resolve().parent.glob("test_*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and "pytest.mark.burst" in map(ast.unparse, node.decorator_list):
                found.add((path.name, node.name))
    return found


class BurstScheduling:
    """xdist's scheduler (``pytest_xdist_make_scheduler``): the tests of a module go to one worker
    together, so that its fixtures are made once, and all bursts to one worker, where they run in turn
    without waiting for each other (the flock of :func:`one_burst_at_a_time` is what guarantees they
    never overlap). Not xdist's ``loadgroup`` with marks: on pytest 9.2 it silently groups nothing
    (pytest-xdist issue 1386)."""

    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        from xdist.scheduler import LoadScopeScheduling

        bursts = marked_bursts()

        class Scheduling(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                path, _, test = nodeid.partition("::")
                return "bursts" if (Path(path).name, test.split("[")[0]) in bursts else path

        return Scheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(BurstScheduling(), "smtlock-burst-scheduling")


@pytest.fixture(autouse=True)
def one_burst_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test marked ``burst`` runs holding :data:`BURSTS`: never two bursts at once on this machine."""
    if request.node.get_closest_marker("burst") is None:
        yield
        return
    with open(BURSTS, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        yield


@pytest.fixture
def new_project(tmp_path: Path) -> Callable[..., Path]:
    """Make a committed git repository with main.py and ``smt init`` done: new_project(store='sqlite')."""
    count = 0

    def make(store: str = "sqlite") -> Path:
        nonlocal count
        count += 1
        return make_project(tmp_path / f"project{count}", store)
    return make


@pytest.fixture
def project(new_project: Callable[..., Path]) -> Path:
    """A project on Sumatra's default store (Django, SQLite file .smt/records)."""
    return new_project()


#: the start of a script that sets Django up as smtweb does (Sumatra's web app: its views and templates)
#: for the project in its folder; ``project`` is the project and ``client`` Django's test Client
SMTWEB = """
import os, sys
from sumatra.projects import load_project
from sumatra.recordstore.django_store import db_config
import sumatra.web
project = load_project()
web = os.path.dirname(sumatra.web.__file__)
db_config.update_settings(  # what smtweb sets
    INSTALLED_APPS=db_config._settings["INSTALLED_APPS"] + ["sumatra.web"], ROOT_URLCONF="sumatra.web.urls",
    STATIC_URL="/static/", ALLOWED_HOSTS=["testserver"],
    TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": False,
                "DIRS": [os.path.join(web, "templates")]}])
db_config.configure()
from django.test import Client
client = Client()
"""


def run_python(code: str, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter in ``cwd``; with check, fail the test on a non-zero exit."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, **kwargs)
    if check and done.returncode:
        pytest.fail(f"exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(autouse=True, scope="session")
def password_file(tmp_path_factory) -> Path:
    """libpq's password file for the whole run (``$PGPASSFILE``, inherited by every process the tests
    start): `smtlock postgres` puts passwords there, never in the ~/.pgpass of whoever runs the tests."""
    path = tmp_path_factory.mktemp("pgpass") / "pgpass"
    os.environ["PGPASSFILE"] = str(path)
    return path


@pytest.fixture(scope="session")
def pg():
    """A real PostgreSQL server for the session, with role smt (password s3cret, CREATEDB).
    It fails, never skips, when the server binaries are missing."""
    from pgserver import Cluster
    cluster = Cluster()
    cluster.sql("CREATE ROLE smt LOGIN PASSWORD 's3cret' CREATEDB")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_uri(pg, request) -> str:
    """A fresh database owned by smt for one test."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:40]
    pg.sql(f"DROP DATABASE IF EXISTS {name}")
    pg.sql(f"CREATE DATABASE {name} OWNER smt")
    return pg.uri("smt", "s3cret", name)


PROGRAMS = Path(__file__).resolve().parent / "programs"


def overlaps(log: Path) -> int:
    """The overlap verifier: sections logged as "enter ID" / "leave ID" lines (O_APPEND); counts each
    enter that came while another holder was inside. 0 means the lock excluded."""
    inside, count, entered = None, 0, 0
    for line in log.read_text().splitlines():
        event, who = line.split()
        if event == "enter":
            entered += 1
            if inside is not None:
                count += 1
            inside = who
        elif inside == who:
            inside = None
    assert entered, "no section was logged"
    return count


def interruptible(command: list) -> list:
    """``command`` run as a terminal runs it in the foreground, where Ctrl-C (SIGINT) reaches it: SIGINT's
    default disposition, set just before the command is exec'd (same pid). A test run started as a
    script's background job (``make test &``) has SIGINT ignored, and every child inherits that: a test
    that sends SIGINT would wait for nothing (it failed so in CI rehearsals started that way)."""
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execvp(sys.argv[1], sys.argv[1:])"
    return [sys.executable, "-c", reset, *command]


def waits_for_a_lock(pid: int) -> bool:
    """Whether the kernel lists ``pid`` as blocked on a flock (a "->" line in /proc/locks): how a test
    knows a process is waiting for the lock, without sleeping."""
    with open("/proc/locks") as locks:
        return any(line.split()[1:2] == ["->"] and line.split()[5:6] == [str(pid)] for line in locks)


def outlives_its_timeout(run: subprocess.Popen, holder: subprocess.Popen) -> str:
    """``run`` (SMTLOCK_TIMEOUT=1) must wait for the lock ``holder`` holds, not give up: once the kernel
    lists it as a waiter, the holder lets go; ``run`` must then finish. Its stdout."""
    while run.poll() is None and not waits_for_a_lock(run.pid):
        time.sleep(0.01)
    assert run.poll() is None, run.stderr.read()  # still waiting, long past its 1 s timeout
    holder.stdin.close()
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    return out
