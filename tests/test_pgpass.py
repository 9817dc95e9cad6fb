"""libpq's password file as smtlock writes it, checked against libpq itself (psycopg2 connecting
with no password) where it matters: the line libpq takes, the file's mode, writers at once."""

import stat
import sys
from pathlib import Path

import pytest

from smtlock._harness.burst import start_together
from smtlock._postgres import pgpass
from smtlock._postgres.client import keep_password_apart


@pytest.fixture
def own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "pgpass"
    monkeypatch.setenv("PGPASSFILE", str(path))
    return path


def test_a_password_given_replaces_the_line_libpq_would_take(pg, own_file: Path) -> None:
    """A wildcard line (or an older password) already there: the URL's password, the one that
    works, is the one libpq then takes (before: it was stripped from the URL and kept nowhere)."""
    import psycopg2
    own_file.write_text("*:*:*:*:wrong\n")
    own_file.chmod(0o600)
    uri, line = keep_password_apart(pg.uri("smt", "s3cret", "postgres"))
    assert uri == f"postgres://smt@127.0.0.1:{pg.port}/postgres" and line
    assert own_file.read_text().splitlines() == [f"127.0.0.1:{pg.port}:*:smt:s3cret", "*:*:*:*:wrong"]
    psycopg2.connect(host="127.0.0.1", port=pg.port, user="smt", dbname="postgres").close()  # libpq agrees


def test_a_file_others_may_read_is_made_the_users_own(own_file: Path) -> None:
    """libpq ignores a password file group or others may read: one that held the line already is
    rewritten 0600, keeping every line (before: left as it was, so no job found the password)."""
    own_file.write_text("h:5432:*:u:pw\nother:1:*:x:y\n")
    own_file.chmod(0o644)
    assert pgpass.lookup("h", 5432, "d", "u") is None  # as libpq reads it
    assert pgpass.remember("h", 5432, "*", "u", "pw")
    assert stat.S_IMODE(own_file.stat().st_mode) == 0o600
    assert own_file.read_text().splitlines() == ["h:5432:*:u:pw", "other:1:*:x:y"]
    assert pgpass.lookup("h", 5432, "d", "u") == "pw"


def test_escapes_and_wildcards_read_as_libpq_reads_them(own_file: Path) -> None:
    own_file.write_text("# a comment\n\\*:1:*:u:literal star\nh:1:*:u:p\\:w:ignored\n")
    own_file.chmod(0o600)
    assert pgpass.lookup("other", 1, "d", "u") is None  # an escaped * is no wildcard
    assert pgpass.lookup("*", 1, "d", "u") == "literal star"
    assert pgpass.lookup("h", 1, "d", "u") == "p:w"  # the password ends at an unescaped ':'
    assert pgpass.remember("h", 2, "*", "u:x", "a\\b")
    assert pgpass.lookup("h", 2, "d", "u:x") == "a\\b"


WRITER = """
import sys
from smtlock._postgres import pgpass
ready, go, n = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
import os
os.write(ready, b"."); os.read(go, 1)
pgpass.remember("host" + n, 5432, "*", "user", "pw" + n)
"""


def test_writers_released_together_lose_no_line(own_file: Path, tmp_path: Path) -> None:
    """8 processes add a line each at once (first loads of 8 projects): all 8 lines are kept."""
    commands = [[sys.executable, "-c", WRITER, "{ready}", "{go}", str(n)] for n in range(8)]
    done = start_together(commands, [tmp_path / f"w{n}.log" for n in range(8)])
    assert done["codes"] == {n: 0 for n in range(8)}
    assert sorted(own_file.read_text().splitlines()) == sorted(f"host{n}:5432:*:user:pw{n}" for n in range(8))
