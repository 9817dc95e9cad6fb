"""Every error a user can meet at the command line: one line on stderr, exit 2, no traceback.
The same table is in README.rst ("When something is wrong")."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SMTLOCK = os.path.join(os.path.dirname(sys.executable), "smtlock")
DROP_ROOT = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def smtlock(*args: str, cwd: Path, env: dict = None, as_user: bool = False) -> subprocess.CompletedProcess:
    prefix = DROP_ROOT if as_user and os.geteuid() == 0 else []
    return subprocess.run([*prefix, SMTLOCK, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.mark.parametrize("command", [["status"], ["enable"], ["disable"], ["doctor"],
                                     ["postgres", "postgres://u:p@127.0.0.1:1/db"]])
def test_outside_a_project(tmp_path: Path, command: list) -> None:
    assert_one_line(smtlock(*command, cwd=tmp_path), "no Sumatra project at", "(run `smt init`)")


@pytest.mark.parametrize("args, expected", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
    (["stress", "--jobs", "many"], "argument --jobs: invalid int value: 'many'"),
    (["stress", "--jobs", "0"], "--jobs and --records must be at least 1"),
    (["stress", "--store", "mysql://u:hunter2@h/db"], "unknown store"),
    (["postgres", "sqlite:///tmp/x"], "not a PostgreSQL URI"),
    (["postgres", "postgres://smt:hunter2@localhost:notaport/db"], "bad port in postgres://smt:***@localhost"),
    (["postgres", "postgres://smt:hunter2@localhost:99999/db"], "a port is a number from 1 to 65535"),
    (["postgres", "postgres://smt:hunter2@[::1:5432/db"], "malformed host in postgres://smt:***@[::1"),
    (["postgres", "smt:hunter2@localhost/db"], "not a PostgreSQL URI: smt:***@localhost/db"),
    (["postgres", "postgres://smt:hunter2@localhost:5432/"], "no database name"),
    (["stress", "--store", "postgres://u:hunter2@h:port/db"], "bad port in postgres://u:***@h:port/db"),
    (["stress", "--store", "SQLite", "--jobs", "0"], "--jobs and --records must be at least 1"),
    (["stress", "--json", "/no/such/folder/runs.json"], "--json /no/such/folder/runs.json: the folder"),
    (["stress", "--plot", "/no/such/folder/runs.png"], "does not exist"),
])
def test_nonsense_arguments(project: Path, args: list, expected: str) -> None:
    done = smtlock(*args, cwd=project)
    assert_one_line(done, expected)
    assert "hunter2" not in done.stderr


def test_torn_project_file(project: Path) -> None:
    (project / ".smt" / "project").write_text('{"name": ')
    assert_one_line(smtlock("status", cwd=project), "is not valid JSON", "smtlock doctor --repair")


def test_unwritable_smt(project: Path) -> None:
    os.chmod(project / ".smt", 0o555)
    try:
        assert_one_line(smtlock("enable", cwd=project, as_user=True), "cannot open lock file", "writable")
    finally:
        os.chmod(project / ".smt", 0o755)


def test_lock_timeout(project: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import smtlock, sys; smtlock.SMTLock('.').acquire();"
                               "print('held', flush=True); sys.stdin.read()"], cwd=project,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = smtlock("doctor", "--repair", cwd=project, env={"SMTLOCK_TIMEOUT": "0.3"})
        assert_one_line(done, "timed out after 0.3 s", f"held by pid {holder.pid} on")
    finally:
        holder.kill()
        holder.wait()


def test_stress_never_writes_into_a_project(project: Path) -> None:
    done = smtlock("stress", "--jobs", "2", "--project-dir", str(project / "runs"), cwd=project)
    assert_one_line(done, f"is inside the Sumatra project at {project}")
    assert not (project / "runs").exists() and not (project / "raw").exists()


def test_a_timeout_setting_that_is_not_a_number(project: Path) -> None:
    done = smtlock("status", cwd=project, env={"SMTLOCK_TIMEOUT": "5s"})
    assert_one_line(done, "SMTLOCK_TIMEOUT='5s' is not a number of seconds", "-1 to wait forever")


def test_no_password_in_any_message_about_a_malformed_uri(project: Path) -> None:
    uris = ["postgres://smt:hunter2@localhost:notaport/db", "smt:hunter2@localhost/db", "postgresql://smt:hunter2@",
            "postgres://smt:hunter2@[::1/db", "postgres://smt:hunt/er2@h:5/db", "postgres://smt:hunter2@h:0/db",
            "mysql://smt:hunter2@h/db"]
    for uri in uris:
        for args in (["postgres", uri], ["postgres", uri, "--dry-run"], ["stress", "--store", uri]):
            done = smtlock(*args, cwd=project)
            assert done.returncode == 2, (args, done.stderr)
            assert "hunter2" not in done.stdout + done.stderr and "er2" not in done.stderr, done.stderr


def test_python_api_outside_a_project_raises_our_error(tmp_path: Path) -> None:
    code = ("import smtlock\n@smtlock.smt_logged\ndef f(x):\n    return x\n"
            "try:\n    f(1)\nexcept smtlock.NoProjectError as err:\n    print('NoProjectError', err)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout.startswith("NoProjectError no Sumatra project at"), done.stdout + done.stderr


@pytest.mark.parametrize("args, expected", [
    (["doctr"], "did you mean 'doctor'?"),
    (["doctor", "--repiar"], "smtlock doctor: error: unrecognized arguments: --repiar; did you mean '--repair'?"),
    (["help", "nothing"], "invalid choice: 'nothing'"),
])
def test_typos_get_a_suggestion_from_the_right_command(tmp_path: Path, args: list, expected: str) -> None:
    assert_one_line(smtlock(*args, cwd=tmp_path), expected)


def test_help_is_plain_text_and_names_the_environment(tmp_path: Path) -> None:
    for args in (["help", "doctor"], ["doctor", "--help"]):
        done = smtlock(*args, cwd=tmp_path)
        assert done.returncode == 0 and done.stdout.startswith("usage: smtlock doctor")
        assert "``" not in done.stdout and "SMTLOCK_TIMEOUT" in done.stdout
    assert "SMTLOCK_TIMEOUT" in smtlock("--help", cwd=tmp_path).stdout


def test_doctor_json_errors_are_json(tmp_path: Path) -> None:
    done = smtlock("doctor", "--json", cwd=tmp_path)
    assert done.returncode == 2
    assert json.loads(done.stdout) == {"error": f"no Sumatra project at {tmp_path} (run `smt init`)", "exit": 2}


def test_postgres_takes_the_path_as_every_command_does(tmp_path: Path) -> None:
    for args in (["postgres", "postgres://u:p@127.0.0.1:1/db", str(tmp_path)],
                 ["postgres", "postgres://u:p@127.0.0.1:1/db", "--path", str(tmp_path)]):
        assert_one_line(smtlock(*args, cwd="/"), f"no Sumatra project at {tmp_path}")
