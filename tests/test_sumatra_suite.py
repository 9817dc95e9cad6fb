"""Sumatra's own unit tests (from its sdist) pass with smtlock's patches exactly as without them."""

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

CACHE = Path(__file__).resolve().parent.parent / ".cache"
RUN = ("import sys, pytest\n{imports}\n"
       "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-o', 'addopts=', 'unittests']))")


@pytest.fixture(scope="module")
def sumatra_tests() -> Path:
    """Sumatra 0.8.1's test folder, from the sdist on PyPI (downloaded once into .cache/)."""
    unpacked = CACHE / "sumatra-0.8.1"
    if not (unpacked / "test" / "unittests").is_dir():
        CACHE.mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", str(CACHE), "sumatra==0.8.1"], check=True)
        with tarfile.open(CACHE / "sumatra-0.8.1.tar.gz") as tar:
            tar.extractall(CACHE, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(CACHE)
    return unpacked / "test"


def _outcome(test_dir: Path, imports: str) -> tuple:
    done = subprocess.run([sys.executable, "-c", RUN.format(imports=imports)], cwd=test_dir,
                          capture_output=True, text=True)
    failed = sorted(set(re.findall(r"^FAILED (\S+)", done.stdout, re.M)))
    passed = re.search(r"(\d+) passed", done.stdout)
    return failed, int(passed.group(1)) if passed else 0


@pytest.fixture(scope="module")
def stock(sumatra_tests: Path) -> tuple:
    outcome = _outcome(sumatra_tests, "")
    assert outcome[1] > 300, outcome  # the suite really ran
    return outcome


@pytest.mark.parametrize("imports", ["import smtlock", "import smtlock.plugin"])
def test_sumatra_suite_unchanged_by_the_patches(sumatra_tests: Path, stock: tuple, imports: str) -> None:
    patched = _outcome(sumatra_tests, imports + "; assert smtlock._sumatra.patches.is_applied()")
    assert patched == stock
