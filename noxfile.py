"""The test matrix: every Python we support, the newest and the lowest dependency versions we admit.

    nox                 # everything below (what `make test` and CI run)
    nox -s field-3.13   # one session; `nox -l` lists them

The full suite runs on one Python; the newest other runs the field tests (what must hold wherever users
run it: bursts, the write path, the lock, fork and process pools, the plugin, the harness), and so does
the lowest session on the oldest; the others run the lock, the write path and the core.
"""

import os
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True  # a Python we claim must be here: never skip it
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")  # the machine's Pythons only
# Bytecode as a user's Python has it: pip compiles what it installs and Python caches what it imports.
# Without this (uv compiles nothing; some machines set PYTHONDONTWRITEBYTECODE) every process of a burst
# compiles Django and Sumatra again: a burst took twice as long.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

PRIMARY = "3.11"
LINTERS = ["ruff>=0.15,<0.18", "mypy>=1.14,<3"]
OTHERS = ["3.9", "3.10", "3.12", "3.13"]
FIELD = ["tests/test_burst.py", "tests/test_writepath.py", "tests/test_lock.py", "tests/test_pools.py",
         "tests/test_plugin.py", "tests/test_stress.py", "tests/test_decorator.py", "tests/test_core.py",
         "tests/test_group_project.py", "tests/test_provenance.py", "tests/test_startup.py"]
#: threads, dask and notebooks (a cluster, a kernel and ~45 records: minutes): the whole suite has them
#: on 3.11 with the newest dependencies, and the lowest session on 3.9 with the lowest
LAUNCHERS = ["tests/test_launchers.py"]
#: what the wheel must have at its root besides the package (setup.py puts smtlock.pth there)
WHEEL_ROOT = ("import sys, zipfile; names = set(zipfile.ZipFile(sys.argv[1]).namelist()); "
              "missing = {'smtlock.pth', '_smtlock_startup.py'} - names; sys.exit(f'not in the wheel: {missing}' "
              "if missing else 0)")
MIDDLE = ["tests/test_lock.py", "tests/test_writepath.py", "tests/test_core.py"]


#: pytest-xdist workers: most tests wait on the processes they start, so one more than the cores keeps
#: both busy; bursts all go to one worker, in turn (tests/conftest.py)
WORKERS = "3"
#: the options of every session's pytest: the workers, and the 10 slowest tests (the budget, in the log)
PYTEST = ["-p", "no:cacheprovider", "-n", WORKERS, "--durations=10"]


def _pytest(session: nox.Session, *paths: str) -> None:
    """Say which versions are tested, then run pytest on ``paths`` (all tests by default)."""
    session.run("python", "-c", VERSIONS)
    session.run("python", "-m", "pytest", *PYTEST, *paths, *session.posargs)


VERSIONS = """
import importlib.metadata as m, platform
names = ["sumatra", "Django", "GitPython", "psycopg2-binary", "joblib", "pytest", "pytest-xdist"]
found = []
for name in names:
    try:
        found.append(f"{name} {m.version(name)}")
    except m.PackageNotFoundError:
        found.append(f"{name} -")
print("versions: Python", platform.python_version() + ";", ", ".join(found))
"""


@nox.session(python=PRIMARY)
def lint(session: nox.Session) -> None:
    """ruff and mypy, configured in pyproject.toml (the same as `make lint`)."""
    session.install(*LINTERS)
    session.run("ruff", "check", ".")
    session.run("mypy")


@nox.session(python=PRIMARY)
def tests(session: nox.Session) -> None:
    """The whole suite, newest dependencies."""
    # pip: Sumatra's own suite is fetched with pip download; uv: the first-hour test makes fresh venvs
    session.install("-e", ".[test,plot]", "pip", "uv")
    _pytest(session)


@nox.session(python=OTHERS)
def field(session: nox.Session) -> None:
    """The field tests on the newest other Python (newest dependencies); on the others, the lock, the
    write path and the core. The oldest has the field tests in the lowest session (lowest versions)."""
    session.install(".[test]")
    _pytest(session, *(FIELD if session.python == OTHERS[-1] else MIDDLE))


@nox.session(python="3.9")
def lowest(session: nox.Session) -> None:
    """The field tests with the lowest version of each dependency we declare (setup.cfg)."""
    session.install("--resolution", "lowest-direct", ".[test]")
    _pytest(session, *FIELD, *LAUNCHERS)


@nox.session(python=["3.9", "3.13"])
def core(session: nox.Session) -> None:
    """`pip install smtlock` alone (no Django: Sumatra's shelve store) imports and protects."""
    session.install(".", "pytest>=7.2", "pytest-timeout>=2.1", "pytest-xdist>=3.5")
    session.run("python", "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('django') is not None)")
    _pytest(session, "tests/test_core.py", "tests/test_lock.py", "tests/test_burst.py", "-k",
            "not decorator and not sqlite")


@nox.session(python=PRIMARY)
def docs(session: nox.Session) -> None:
    """The guide in docs/ (Sphinx), every warning an error (the same as `make docs`)."""
    session.install(".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-q", "-b", "html", "docs", session.create_tmp())


@nox.session(python=PRIMARY)
def package(session: nox.Session) -> None:
    """The sdist and the wheel build (the wheel from the sdist, with smtlock.pth and its module at its root),
    and their metadata passes `twine check`."""
    session.install("build", "twine")
    out = session.create_tmp()
    session.run("python", "-m", "build", "--outdir", out, ".")
    session.run("python", "-m", "twine", "check", "--strict", *[str(p) for p in Path(out).iterdir()])
    session.run("python", "-c", WHEEL_ROOT, *[str(p) for p in Path(out).glob("*.whl")])
