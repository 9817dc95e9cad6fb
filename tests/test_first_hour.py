"""A newcomer's first hour, from README.rst and docs/install.rst: install from the clone into a fresh
environment, smt init, smtlock enable, a sweep of smt run; then the same project from an environment without smtlock."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOOP = """
for i in $(seq 1 16); do smt run params.txt job=$i > run-$i.log 2>&1 & done
wait
"""


def uv() -> str:
    found = shutil.which("uv", path=os.path.dirname(sys.executable)) or shutil.which("uv")
    assert found, "uv is installed with the test extras (make test installs it)"
    return found


def fresh_env(where: Path, *requirements: str) -> Path:
    """A new virtual environment with ``requirements`` installed, as a user's would be. Its files are
    copies: uv's default hard links (and those of the build environment it makes and removes) would
    move the change time of the same cached files in the tests' own environment, whose .pth files the
    provenance memo stamps, while the memo's tests count the scans they expect."""
    subprocess.run([uv(), "venv", "-q", "-p", sys.executable, str(where)], check=True)
    subprocess.run([uv(), "pip", "install", "-q", "--python", str(where / "bin" / "python"), *requirements],
                   check=True, cwd=ROOT, env={**os.environ, "UV_LINK_MODE": "copy"})
    return where / "bin"


def shell(command: str, cwd: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> Path:
    return fresh_env(tmp_path_factory.mktemp("venv") / "env", ".[web]")


@pytest.mark.burst
def test_install_enable_sweep_and_a_colleague_without_smtlock(user_env: Path, tmp_path: Path) -> None:
    project = tmp_path / "sim"
    project.mkdir()
    (project / "main.py").write_text("import sys\nprint(open(sys.argv[1]).read())\n")
    (project / "params.txt").write_text("job = 0\n")
    setup = ("git init -q && git add main.py params.txt && git -c user.name=a -c user.email=a@b commit -qm sim"
             " && smt init -m main.py sim && smtlock enable")
    done = shell(setup, project, user_env)
    assert done.returncode == 0, done.stderr
    assert "needs smtlock installed" in done.stdout
    done = shell(LOOP + "smt list", project, user_env)
    labels = done.stdout.split()
    assert done.returncode == 0 and len(labels) == 16 and len(set(labels)) == 16, done.stdout + done.stderr
    assert all(re.fullmatch(r"\d{8}-\d{6}(_\d+)?", label) for label in labels)

    # A colleague's environment has Sumatra but not smtlock: smt stops, as the README says ...
    plain = fresh_env(tmp_path / "plain", "sumatra[web,git]>=0.8.1,<0.9")
    done = shell("smt list", project, plain)
    assert done.returncode != 0 and "No module named 'smtlock'" in done.stderr
    # ... and the guide's one-line command (docs/install.rst, "Upgrade and uninstall") frees it there.
    guide = (ROOT / "docs" / "install.rst").read_text()
    free = re.search(r"^      (python -c \"import json; f='.smt/project'.*)$", guide, re.M).group(1)
    assert shell(free, project, plain).returncode == 0
    done = shell("smt list", project, plain)
    assert done.returncode == 0 and sorted(done.stdout.split()) == sorted(labels)
