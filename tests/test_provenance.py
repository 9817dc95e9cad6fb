"""The provenance memo: a record made with the memo warm equals plain Sumatra's, every change that
would alter Sumatra's answer makes the next record equal plain Sumatra's again, and `smt run`
processes share the memo (one after another, and eight at once).

Two long-lived workers make records in the same project, one plain Sumatra, one with smtlock; each
record is compared field by field (all but label, timestamp, duration). The smtlock worker reports
provenance.stats, so each test also shows the memo was used before the change and not after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from smtlock._harness.burst import _smt, make_project, start_together
from smtlock._sumatra.provenance import MEMO_DIR

BIN = os.path.dirname(sys.executable)
GIT = ["git", "-c", "user.name=smtlock", "-c", "user.email=smtlock@localhost"]
PYENV = Path.home() / ".pyenv" / "versions"

WORKER = r'''
import json, os, sys
if os.environ["WITH_SMTLOCK"] == "1":
    import smtlock
    from smtlock._sumatra import provenance, versioncontrol
from sumatra.programs import PythonExecutable
from sumatra.projects import load_project

def plain(x, depth=0):
    if isinstance(x, (str, int, float, bool, type(None))) or depth > 6:
        return x if depth <= 6 else repr(x)
    if isinstance(x, dict):
        return {str(k): plain(v, depth + 1) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [plain(v, depth + 1) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted(plain(v, depth + 1) for v in x)
    state = x.__getstate__() if hasattr(x, "__getstate__") else vars(x)
    return {"type": type(x).__name__, **plain(state if isinstance(state, dict) else {"state": state}, depth + 1)}

project = load_project()
if os.environ["WITH_SMTLOCK"] == "plugin":  # imported as smt run's plugin is: once the project is loaded
    import smtlock
    from smtlock._sumatra import provenance, versioncontrol
for line in sys.stdin:
    ask = json.loads(line)
    record = project.new_record(main_file=ask["main"], executable=PythonExecutable(path=ask["python"]))
    fields = {k: v for k, v in vars(record).items() if k not in ("label", "timestamp", "duration")
              and not k.startswith("_smtlock")}
    fields["dependencies"] = [[d.name, d.path, d.version, d.diff, d.source, d.module]
                              for d in record.dependencies]
    if ask.get("write"):  # the simulation writes a file, right after its record
        with open(ask["write"][0], "w") as f:
            f.write(ask["write"][1])
    stats = {**provenance.stats, **{"git_" + k: v for k, v in versioncontrol.counts.items()}} \
        if os.environ["WITH_SMTLOCK"] != "0" else {}
    print(json.dumps({"fields": plain(fields), "stats": stats}), flush=True)
'''

MAIN = "import helper\nimport localpkg\nimport shadowed\nimport metapkg\nimport plainpkg\n"
HELPER = "import attrpkg\n"


def wheel(where: Path, version: str) -> Path:
    """A real wheel of the tiny package ``metapkg``, versioned only by its distribution's metadata."""
    path = where / f"metapkg-{version}-py3-none-any.whl"
    info = f"metapkg-{version}.dist-info"
    files = {
        # its version from its metadata, through a call ModuleFinder does not follow: an import
        # statement of anything in the standard library makes each scan walk ~370 modules (2 s)
        "metapkg/__init__.py": "__version__ = __import__('importlib.metadata').metadata.version('metapkg')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: metapkg\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as whl:
        for name, text in files.items():
            whl.writestr(name, text)
        whl.writestr(f"{info}/RECORD", "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n")
    return path


def pip_install(whl: Path, site: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--upgrade",
                    "--disable-pip-version-check", "--target", str(site), str(whl)], check=True,
                   capture_output=True)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


class Workers:
    """A plain Sumatra worker and a smtlock worker making records in one project, on request."""

    def __init__(self, project: Path, env: Dict[str, str]) -> None:
        self.procs = {name: subprocess.Popen([sys.executable, "-c", WORKER], cwd=project, text=True,
                                             env={**env, "WITH_SMTLOCK": flag}, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE)
                      for name, flag in (("plain", "0"), ("memo", "1"))}

    def record(self, name: str, main: str, python: str, write: Optional[List[str]] = None) -> Dict[str, Any]:
        proc = self.procs[name]
        assert proc.stdin and proc.stdout
        proc.stdin.write(json.dumps({"main": main, "python": python, "write": write}) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert line, f"the {name} worker ended (exit {proc.wait()})"
        return json.loads(line)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)


@pytest.fixture
def setup(tmp_path: Path) -> Any:
    """A project whose main.py imports a local module (which imports a package with __version__), a
    local package under version control with uncommitted changes, a package versioned only by its
    metadata (pip-installed into a folder on PYTHONPATH) and a package a later module may shadow."""
    project = make_project(tmp_path / "project")
    write(project / "main.py", MAIN)
    write(project / "helper.py", HELPER)
    write(project / "localpkg" / "__init__.py", "VALUE = 1\n")
    subprocess.run(GIT + ["add", "main.py", "helper.py", "localpkg"], cwd=project, check=True)
    subprocess.run(GIT + ["commit", "-qm", "code"], cwd=project, check=True)
    write(project / "localpkg" / "__init__.py", "VALUE = 2  # not committed\n")
    _smt(["configure", "--on-changed", "store-diff"], project)
    site = tmp_path / "site"
    write(site / "attrpkg" / "__init__.py", "__version__ = '1.2.3'\n")
    write(site / "othrpkg" / "__init__.py", "__version__ = '4.5.6'\n")
    write(site / "plainpkg" / "__init__.py", "VALUE = 1  # no version: Sumatra's egg heuristic looks\n")
    write(site / "shadowed" / "__init__.py", "__version__ = 'site'\n")
    write(site / "interppkg" / "__init__.py", "import sys\n__version__ = '%d.%d' % sys.version_info[:2]\n")
    pip_install(wheel(tmp_path, "1.0"), site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("SMTLOCK_MEMO", None)
    workers = Workers(project, env)
    yield project, site, workers, tmp_path
    workers.close()


def both(workers: Workers, main: str = "main.py", python: str = sys.executable,
         write: Optional[List[str]] = None) -> tuple:
    """One record from each worker: plain Sumatra's fields, smtlock's fields and its stats."""
    plain = workers.record("plain", main, python)
    memo = workers.record("memo", main, python, write)
    return plain["fields"], memo["fields"], memo["stats"]


def deps(fields: Dict[str, Any]) -> Dict[str, List[Any]]:
    return {d[0]: d[1:] for d in fields["dependencies"]}


def test_a_record_with_the_memo_warm_is_plain_sumatras(setup: Any) -> None:
    project, site, workers, _ = setup
    both(workers)  # the first record scans
    plain, memo, stats = both(workers)
    assert stats["reused"] == 1 and stats["scans"] == 1
    assert memo == plain
    found = deps(memo)
    assert found["attrpkg"][:2] == [str(site / "attrpkg"), "1.2.3"]  # through the local module
    assert found["metapkg"][:2] == [str(site / "metapkg"), "1.0"]  # only its metadata says so
    assert found["localpkg"][1] == memo["version"] and "not committed" in found["localpkg"][2]
    assert "not committed" in memo["diff"]
    assert memo["executable"]["version"] and memo["platforms"] and memo["main_file"] == "main.py"


def _edit_module(project: Path, site: Path, tmp: Path) -> None:
    write(project / "helper.py", "import othrpkg\n")


def _install_another_version(project: Path, site: Path, tmp: Path) -> None:
    # pip install --target --upgrade leaves the old dist-info beside the new one, and pip uninstall
    # refuses a folder outside its environment: the old version's files go first, as uninstall would
    shutil.rmtree(site / "metapkg-1.0.dist-info")
    pip_install(wheel(tmp, "2.0"), site)


def _only_the_metadata_changes(project: Path, site: Path, tmp: Path) -> None:
    (site / "metapkg-1.0.dist-info").rename(site / "metapkg-3.0.dist-info")
    write(site / "metapkg-3.0.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: metapkg\nVersion: 3.0\n")


def _shadow(project: Path, site: Path, tmp: Path) -> None:
    write(project / "shadowed" / "__init__.py", "__version__ = 'project'\n")


def _commit(project: Path, site: Path, tmp: Path) -> None:
    write(project / "localpkg" / "__init__.py", "VALUE = 3\n")
    subprocess.run(GIT + ["commit", "-qam", "three"], cwd=project, check=True)


def _commit_as_it_is(project: Path, site: Path, tmp: Path) -> None:
    subprocess.run(GIT + ["commit", "-qam", "two"], cwd=project, check=True)


def _edit_through_a_hard_link(project: Path, site: Path, tmp: Path) -> None:
    # uv and pip install by hard-linking from their caches: an edit in place of the cache's file (or of
    # another environment's) is one of this file too, made through no folder of this environment
    os.link(site / "attrpkg" / "__init__.py", tmp / "cached.py")
    with open(tmp / "cached.py", "r+") as file:
        file.write("__version__ = '1.2.4'\n")


CHANGES: Dict[str, Callable[[Path, Path, Path], None]] = {
    "edit a local module": _edit_module,
    "edit a module through a hard link elsewhere": _edit_through_a_hard_link,
    "install another version": _install_another_version,
    "only the metadata changes": _only_the_metadata_changes,
    "a module shadows one found": _shadow,
    "change and commit a tracked file": _commit,
    "commit the uncommitted change": _commit_as_it_is,
}


@pytest.mark.parametrize("watched", [False, True], ids=["stats", "watched"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_a_change_makes_the_next_record_plain_sumatras_again(setup: Any, change: str, watched: bool) -> None:
    """Found by the stats of the memo's files (the second record of a process), and by the kernel's
    watch of them (from the third on)."""
    project, site, workers, tmp = setup
    for _ in range(2 if watched else 1):
        both(workers)
    before, memo, stats = both(workers)
    assert memo == before and stats["reused"] == (2 if watched else 1)
    assert stats["watching"] == (1 if watched else 0)
    CHANGES[change](project, site, tmp)
    plain, memo, stats = both(workers)
    assert plain != before  # the change shows in plain Sumatra's record...
    assert memo == plain  # ...and in smtlock's, the first one after it
    if change != "commit the uncommitted change":  # what the scan read changed: it ran again
        assert stats["scans"] == 2 and stats["reused"] == (2 if watched else 1)
    else:  # no module file changed: the scan was reused, version control asked again (as upstream)
        assert stats["reused"] == (3 if watched else 2) and stats["watched"] == (1 if watched else 0)
        assert deps(memo)["localpkg"][1:3] == [memo["version"], ""] and memo["version"] != before["version"]


def _past_two_seconds(folder: Path) -> None:
    """Wait until the folder's times are 2 s old: a listing taken then is kept (not a racy one)."""
    while time.time_ns() - max(folder.stat().st_mtime_ns, folder.stat().st_ctime_ns) < 2_100_000_000:
        time.sleep(0.05)


@pytest.mark.parametrize("watched", [False, True], ids=["stats", "watched"])
def test_a_hard_link_made_and_removed_elsewhere_keeps_the_memo(setup: Any, watched: bool) -> None:
    """uv and pip install by hard-linking from their caches, and a build environment's link to the
    same file comes and goes: the file's change time moves while its content, size, mtime and link
    count stand. The next record reuses the scan (the content is compared), and equals plain
    Sumatra's. A concurrent ``uv pip install`` did this to the tests' own site-packages."""
    project, site, workers, tmp = setup
    module = site / "attrpkg" / "__init__.py"
    _past_two_seconds(module)  # stamped when it is no longer racy (a racy stamp compares content anyway)
    for _ in range(3 if watched else 1):
        both(workers)
    was = module.stat()
    os.link(module, tmp / "build-env-copy.py")
    os.unlink(tmp / "build-env-copy.py")
    now = module.stat()
    assert now.st_ctime_ns != was.st_ctime_ns and now.st_nlink == was.st_nlink
    plain, memo, stats = both(workers)
    assert memo == plain and stats["scans"] == 1 and stats["reused"] == (3 if watched else 1)
    assert stats["watched"] == (1 if watched else 0)


#: a stamp taken as if 3 s from now: not a racy one (whose content is always compared), without a wait
_LATER_NS = 3_000_000_000
_LARGE = (1 << 20) + 1  # above the size whose content a stamp keeps


def _link_and_remove(path: Path, tmp: Path) -> None:
    os.link(path, tmp / "elsewhere")
    os.unlink(tmp / "elsewhere")


def _link(path: Path, tmp: Path) -> None:
    os.link(path, tmp / "elsewhere")


def _no_longer_executable(path: Path, tmp: Path) -> None:
    path.chmod(0o644)


def _rewritten_with_its_mtime_set_back(path: Path, tmp: Path) -> None:
    was = path.stat()
    path.write_bytes(path.read_bytes().replace(b"1", b"2"))
    os.utime(path, ns=(was.st_atime_ns, was.st_mtime_ns))


def _made_a_folder(path: Path, tmp: Path) -> None:
    path.unlink()
    path.mkdir()


STAMPED: Dict[str, Tuple[int, Callable[[Path, Path], None], bool]] = {
    "a hard link made and removed": (6, _link_and_remove, True),
    "a hard link kept": (6, _link, True),
    "no longer executable": (6, _no_longer_executable, False),
    "rewritten with its mtime set back": (6, _rewritten_with_its_mtime_set_back, False),
    "a folder in its place": (6, _made_a_folder, False),
    "large: a hard link kept": (_LARGE, _link, True),
    "large: a hard link made and removed": (_LARGE, _link_and_remove, False),  # no digest to settle it
    "large: rewritten with its mtime set back": (_LARGE, _rewritten_with_its_mtime_set_back, False),
}


@pytest.mark.parametrize("case", list(STAMPED))
def test_a_files_stamp_holds_through_what_keeps_its_content_and_mode(tmp_path: Path, case: str) -> None:
    """What the memo's stamp of a file says after each change: a link made (and removed) keeps the
    content, and holds; a mode changed (Sumatra runs the interpreter), a same-size rewrite with its
    mtime set back, or a folder in its place does not."""
    from smtlock._sumatra.provenance import _same, _stamp
    size, change, holds = STAMPED[case]
    path = tmp_path / "module.py"
    path.write_bytes(b"x = 1\n".ljust(size, b"#"))
    path.chmod(0o755)
    stamp = json.loads(json.dumps(_stamp(str(path), time.time_ns() + _LATER_NS)))  # as a memo file keeps it
    assert _same(str(path), stamp)
    change(path, tmp_path)
    assert _same(str(path), stamp) is holds


def test_a_folder_replaced_by_a_file_and_a_fifo_are_stamped_without_failing_or_waiting(tmp_path: Path) -> None:
    """A stamped folder that is a file now (an egg installed again zipped) is a change, not an
    error; a FIFO on the way is stamped without being read (no writer would ever come)."""
    from smtlock._sumatra.provenance import _same, _stamp
    egg = tmp_path / "foo-1.0.egg"
    egg.mkdir()
    stamp = _stamp(str(egg), time.time_ns() + _LATER_NS)
    egg.rmdir()
    egg.write_bytes(b"PK")
    assert _same(str(egg), stamp) is False
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    stamp = _stamp(str(fifo), time.time_ns() + _LATER_NS)
    assert stamp[5] is None and _same(str(fifo), stamp)


def test_the_egg_heuristic_lists_a_folder_again_once_a_name_came_or_went(setup: Any) -> None:
    """Sumatra's egg heuristic lists the folder of each dependency without a version, for every
    record: smtlock lists it again only when its stat changed. An EGG-INFO made there, then removed
    with the folder's mtime set back, shows in the very next record as in plain Sumatra's."""
    project, site, workers, _ = setup
    both(workers)
    _past_two_seconds(site)
    both(workers)
    plain, memo, stats = both(workers)
    assert memo == plain and deps(memo)["plainpkg"][1] == "unknown"
    assert stats["listings_reused"] >= 1  # the folder was not listed again
    write(site / "EGG-INFO" / "PKG-INFO", "Metadata-Version: 1.0\nName: plainpkg\nVersion: 9.9\n")
    plain, memo, _ = both(workers)
    assert memo == plain and deps(memo)["plainpkg"][1:4:2] == ["9.9", "egg-info"]
    _past_two_seconds(site)
    plain, memo, _ = both(workers)  # the listing with EGG-INFO kept
    assert memo == plain and deps(memo)["plainpkg"][1:4:2] == ["9.9", "egg-info"]
    mtime = site.stat().st_mtime_ns
    shutil.rmtree(site / "EGG-INFO")
    os.utime(site, ns=(mtime, mtime))  # the mtime as it was when the listing was kept: its ctime moved
    plain, memo, _ = both(workers)
    assert memo == plain and deps(memo)["plainpkg"][1] == "unknown"


def test_a_hard_link_to_a_file_the_scan_read_keeps_the_memo(setup: Any) -> None:
    """uv and pip install by hard-linking from their caches: each install of the same file elsewhere
    moves that file's change time (its link count), though nothing in it changed. Before: every such
    install invalidated the memo (CI failed when a venv was built between two records)."""
    project, site, workers, tmp = setup
    both(workers)
    os.link(site / "attrpkg" / "__init__.py", tmp / "a-link")
    before, memo, stats = both(workers)
    assert memo == before and stats["reused"] == 1 and stats["scans"] == 1


def test_a_simulation_that_writes_a_tracked_file(setup: Any) -> None:
    """The run rewrites the tracked helper.py right after its record, with content of the same size
    (it may share the timestamp the memo's stat saw)."""
    project, site, workers, _ = setup
    both(workers)
    new = "import othrpkg\n"
    assert len(new) == len(HELPER)
    before, memo, _ = both(workers, write=[str(project / "helper.py"), new])
    assert memo == before
    plain, memo, stats = both(workers)
    assert "othrpkg" in deps(plain) and "attrpkg" not in deps(plain) and "helper.py" in plain["diff"]
    assert memo == plain and stats["scans"] == 2


def test_another_interpreter_at_the_same_path(setup: Any) -> None:
    """The record's executable is a link; pointing it to another Python changes its version and the
    version a dependency computes from it."""
    project, site, workers, tmp = setup
    pythons = sorted(PYENV.glob("3.1[12].*/bin/python3.1[12]"))
    if len(pythons) < 2:
        pytest.skip("needs pyenv's Python 3.11 and 3.12")
    write(project / "interp.py", "import interppkg\n")
    subprocess.run(GIT + ["add", "interp.py"], cwd=project, check=True)
    link = tmp / "bin" / "python"
    link.parent.mkdir()
    link.symlink_to(pythons[0])
    both(workers, "interp.py", str(link))
    before, memo, stats = both(workers, "interp.py", str(link))
    assert memo == before and stats["reused"] == 1
    link.unlink()
    link.symlink_to(pythons[1])
    plain, memo, stats = both(workers, "interp.py", str(link))
    assert plain["executable"]["version"] != before["executable"]["version"]
    assert deps(plain)["interppkg"][1] != deps(before)["interppkg"][1]
    assert memo == plain and stats["scans"] == 2


def _git(where: Path, *args: str) -> None:
    subprocess.run(GIT + list(args), cwd=where, check=True, capture_output=True)


def _linked_copy(folder: Path) -> None:
    """The folder moved aside and a link left in its place: its files keep their inodes and times
    through the link, and git sees them gone."""
    folder.rename(folder.with_name(folder.name + ".real"))
    folder.symlink_to(folder.name + ".real")


def _new_repository(folder: Path) -> None:
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "first"]):
        _git(folder, *args)


#: what a user does to a repository between two records of one process, each to show in the very
#: next record (project: the project's repository; dependency: a dependency's own repository)
GIT_CHANGES: List[Tuple[str, Callable[[Path, Path], None]]] = [
    ("an edit", lambda project, dep: write(project / "localpkg" / "__init__.py", "VALUE = 4  # edited\n")),
    ("an edit of the same size", lambda project, dep: write(project / "localpkg" / "__init__.py",
                                                            "VALUE = 5  # edited\n")),
    ("a staged new file", lambda project, dep: (write(project / "staged.py", "S = 1\n"),
                                                _git(project, "add", "staged.py"))),
    ("a branch made here, then a commit", lambda project, dep: (_git(project, "branch", "other"),
                                                                _git(project, "commit", "-qam", "four"))),
    ("a checkout of the other branch", lambda project, dep: _git(project, "checkout", "-q", "other")),
    ("a new untracked file", lambda project, dep: write(project / "untracked.py", "U = 1\n")),
    ("a file unstaged", lambda project, dep: _git(project, "rm", "-q", "--cached", "helper.py")),
    ("a tracked folder made a link to its copy", lambda project, dep: _linked_copy(project / "localpkg")),
    ("an edit in a dependency's repository", lambda project, dep: write(dep / "__init__.py", "X = 2\n")),
    ("a commit in a dependency's repository", lambda project, dep: _git(dep, "commit", "-qam", "two")),
    ("the dependency's repository gone", lambda project, dep: shutil.rmtree(dep / ".git")),
    ("a repository made around a dependency", lambda project, dep: _new_repository(dep.parent / "attrpkg")),
]


@pytest.mark.parametrize("watched", [False, True], ids=["stats", "watched"])
def test_each_version_control_change_shows_in_the_very_next_record(setup: Any, watched: bool) -> None:
    """Between two records of one process: a commit, an edit, a staged change, a checkout, a new
    untracked file, a change in a dependency's repository. Each record equals plain Sumatra's, and
    one made with nothing changed asks git nothing. Found by a stat of each file git reads, or
    (watched: two records with nothing changed before each change) by the kernel's watch of them."""
    project, site, workers, _ = setup
    dep = site / "vcdep"
    write(dep / "__init__.py", "X = 1\n")  # no version of its own: Sumatra asks its repository
    _new_repository(dep)
    write(project / "vcmain.py", "import vcdep\nimport localpkg\nimport attrpkg\n")
    _git(project, "add", "vcmain.py")
    _git(project, "commit", "-qm", "vcmain")
    before, memo, stats = both(workers, "vcmain.py")
    assert memo == before
    again, memo, stats_again = both(workers, "vcmain.py")
    assert again == before and memo == before
    assert stats_again["git_asked"] == stats["git_asked"] and stats_again["git_reused"] > stats["git_reused"]
    for what, change in GIT_CHANGES:
        if watched:  # the repositories' states compared twice: the kernel watches their files
            for _ in range(2):
                _, memo, stats = both(workers, "vcmain.py")
                assert memo == before, what
        change(project, dep)
        plain, memo, stats_after = both(workers, "vcmain.py")
        assert memo == plain, what
        if watched:  # the kernel's watch told which files to compare
            assert stats_after["git_watched"] > stats["git_watched"], what
        if what != "a new untracked file":  # upstream leaves untracked files out of the diff
            assert plain != before, what
        before = plain
    assert deps(plain)["vcdep"][1] == "unknown"  # no repository any more, as plain Sumatra says
    assert len(deps(plain)["attrpkg"][1]) == 40  # its repository's commit, not its __version__


def _in_a_new_process(project: Path, site: Path, main: str, smtlock: str = "plugin",
                      path: Optional[str] = None) -> Dict[str, Any]:
    """One record made by a smtlock process of its own, as each ``smt run`` job makes its record
    (smtlock imported as its plugin is, once the project is loaded; or "1": before)."""
    done = subprocess.run([sys.executable, "-c", WORKER], cwd=project, text=True, capture_output=True,
                          input=json.dumps({"main": main, "python": sys.executable}) + "\n",
                          env={**os.environ, "PYTHONPATH": str(site), "WITH_SMTLOCK": smtlock,
                               "PATH": path or os.environ["PATH"]})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_each_version_control_change_shows_in_the_next_processs_record(setup: Any) -> None:
    """Each ``smt run`` job is a process of its own: git's answers, and the dependencies found in no
    repository, are kept in the project's memo for the next process. One made with nothing changed
    asks git nothing; after each change of GIT_CHANGES, the next process's record equals plain Sumatra's."""
    project, site, workers, _ = setup
    dep = site / "vcdep"
    write(dep / "__init__.py", "X = 1\n")
    _new_repository(dep)
    write(project / "vcmain.py", "import vcdep\nimport localpkg\nimport attrpkg\n")
    _git(project, "add", "vcmain.py")
    _git(project, "commit", "-qm", "vcmain")
    before = workers.record("plain", "vcmain.py", sys.executable)["fields"]
    first = _in_a_new_process(project, site, "vcmain.py")
    assert first["fields"] == before and first["stats"]["git_asked"] > 0
    again = _in_a_new_process(project, site, "vcmain.py")
    assert again["fields"] == before
    assert again["stats"]["git_asked"] == 0 and again["stats"]["git_states"] == 0  # all from the memo
    other_git = project.parent / "other-bin" / "git"  # another git first on PATH: the memo is not its answers
    write(other_git, f"#!/bin/sh\nexec {shutil.which('git')} \"$@\"\n")
    other_git.chmod(0o755)
    path = f"{other_git.parent}{os.pathsep}{os.environ['PATH']}"
    elsewhere = _in_a_new_process(project, site, "vcmain.py", path=path)
    assert elsewhere["fields"] == before and elsewhere["stats"]["git_asked"] > 0
    early = _in_a_new_process(project, site, "vcmain.py", smtlock="1")  # smtlock there when the project loads:
    assert early["fields"] == before and early["stats"]["git_asked"] == 1  # its upstream read (in no record)
    for what, change in GIT_CHANGES:
        change(project, dep)
        plain = workers.record("plain", "vcmain.py", sys.executable)["fields"]
        memo = _in_a_new_process(project, site, "vcmain.py")
        assert memo["fields"] == plain, what
        if what != "a new untracked file":  # (changes no answer: as in the process above)
            assert memo["stats"]["git_asked"] > 0, what  # the change was seen: git was asked again
    assert deps(plain)["vcdep"][1] == "unknown" and len(deps(plain)["attrpkg"][1]) == 40


def test_with_a_git_variable_set_git_is_asked_for_every_record(setup: Any) -> None:
    """A variable that points git at another index, work tree or repository (a hook sets them) makes
    git's answers depend on files the stamps do not cover: smtlock asks git for every record, and each
    record equals plain Sumatra's. Here a file is unstaged in the other index only, between two records."""
    project, site, _, _ = setup
    index = project / ".git" / "other-index"
    shutil.copy(project / ".git" / "index", index)
    env = {**os.environ, "PYTHONPATH": str(site), "GIT_INDEX_FILE": str(index)}
    env.pop("SMTLOCK_MEMO", None)
    workers = Workers(project, env)
    try:
        both(workers)
        before, memo, stats = both(workers)
        assert memo == before and stats["git_reused"] == 0
        subprocess.run(GIT + ["rm", "-q", "--cached", "helper.py"], cwd=project, env=env, check=True)
        plain, memo, stats = both(workers)
        assert plain != before  # helper.py is untracked in the other index: git diff HEAD shows it gone
        assert memo == plain and stats["git_reused"] == 0
    finally:
        workers.close()


def _in_project(tmp_path: Path, script: str, *args: str, **env: str) -> Any:
    """Run ``script`` with smtlock's memo on, in ``tmp_path/project`` with ``tmp_path/site`` on
    PYTHONPATH (``env``: more variables; an empty value removes one); what it printed, parsed."""
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "SMTLOCK_MEMO": "", **env}
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path / "project", capture_output=True,
                          text=True, check=True, env={name: value for name, value in env.items() if value})
    return json.loads(done.stdout)


def _needing_a_library(tmp_path: Path, module: str, missing_when: str, error: str, version: str) -> Path:
    """``tmp_path/site/<module>``, whose import raises ``error`` when ``missing_when`` (a condition on
    ``library``, the path returned, in a folder of its own) holds; else its version is ``version``."""
    library = tmp_path / "lib" / "libneeded.so"
    library.parent.mkdir()
    condition = missing_when.format(library=repr(str(library)), folder=repr(str(library.parent)))
    write(tmp_path / "site" / module / "__init__.py",
          f"import os\nif {condition}:\n    raise {error}('libneeded.so: cannot open shared object file')\n"
          f"__version__ = {version!r}\n")
    write(tmp_path / "project" / "main.py", f"import {module}\n")
    return library


SCAN_TWICE = r"""
import json, os, sys, types, warnings
warnings.simplefilter("ignore")
import smtlock  # the memo in place of Sumatra's run_script
from sumatra.dependency_finder import python as finder
python = types.SimpleNamespace(path=sys.executable, version="%d.%d" % sys.version_info[:2], name="python")
found = []
for step in sys.argv[2:]:
    if step == "mend":
        open(sys.argv[1], "w").close()
        continue
    if step == "module-load":  # as `module load` does: where the dynamic linker looks
        os.environ["LD_LIBRARY_PATH"] = os.path.dirname(sys.argv[1])
        continue
    try:
        found.append({d.name: d.version for d in finder.find_dependencies("main.py", python)})
    except Exception as error:
        found.append(type(error).__name__)
print(json.dumps(found))
"""


def test_a_versions_scan_that_failed_is_not_remembered(tmp_path: Path) -> None:
    """Sumatra's versions script prints nothing when importing a dependency raises something other
    than ImportError (a shared library not found: OSError), and the record fails (KeyError), as plain
    Sumatra's does. Once that is mended (here the library appears in a folder the memo has no reason
    to stamp), the next record is plain Sumatra's: the failed answer is not reused."""
    library = _needing_a_library(tmp_path, "needslib", "not os.path.exists({library})", "OSError", "3.0")
    failed, mended = _in_project(tmp_path, SCAN_TWICE, str(library), "scan", "mend", "scan")
    assert failed == "KeyError" and mended["needslib"] == "3.0"  # with others the scan finds (3.13: setuptools)


def test_a_version_follows_where_the_dynamic_linker_looks(tmp_path: Path) -> None:
    """An extension module that cannot load its shared library raises ImportError, and Sumatra
    records its version as "unknown"; after ``module load`` (LD_LIBRARY_PATH) in the same process, the
    next record has its version, as plain Sumatra's does."""
    library = _needing_a_library(tmp_path, "needsld", "os.environ.get('LD_LIBRARY_PATH') != {folder}", "ImportError",
                                 "2.0")
    before, after = _in_project(tmp_path, SCAN_TWICE, str(library), "scan", "module-load", "scan", LD_LIBRARY_PATH="")
    assert (before["needsld"], after["needsld"]) == ("unknown", "2.0")


SAVED_WHILE_SCANNING = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import smtlock
from smtlock._sumatra import provenance
from sumatra.dependency_finder import python as finder
scan = finder.run_script.__wrapped__  # Sumatra's own
saved = []

def saved_meanwhile(executable, script):  # the user saves main.py while ModuleFinder runs
    found = scan(executable, script)
    if "ModuleFinder(" in script and not saved:
        saved.append(True)
        with open("main.py", "w") as main:
            main.write("import second\n")
    return found
finder.run_script = provenance.run_script(saved_meanwhile)
print(json.dumps([sorted(finder.find_imported_packages("main.py", sys.executable)) for _ in range(2)]))
"""


def test_a_file_saved_while_the_scan_ran_is_scanned_again(tmp_path: Path) -> None:
    """The scan takes a while (seconds, with numpy or scipy), and a person may save a file it reads
    meanwhile: its answer is of the old content, so it is not kept, and the next record scans the new
    one, as plain Sumatra's does (the stamps, taken after the scan, held the new content)."""
    write(tmp_path / "site" / "first" / "__init__.py", "")
    write(tmp_path / "site" / "second" / "__init__.py", "")
    write(tmp_path / "project" / "main.py", "import first\n")
    assert _in_project(tmp_path, SAVED_WHILE_SCANNING) == [["first"], ["second"]]


POINTED_ELSEWHERE = r"""
import json, sys, warnings
warnings.simplefilter("ignore")
import smtlock
from sumatra.dependency_finder import python as finder
python, pth, elsewhere = sys.argv[1:]
files = [finder.find_imported_packages("main.py", python)["foo"].__file__]
with open(pth, "w") as file:  # another checkout installed in its place, under the same name
    file.write(elsewhere + "\n")
files.append(finder.find_imported_packages("main.py", python)["foo"].__file__)
print(json.dumps(files))
"""


def test_a_pth_file_that_names_another_folder_is_scanned_again(tmp_path: Path) -> None:
    """An editable install (``pip install -e``) is a .pth file in site-packages that names the source
    folder; installing another checkout of the same version keeps the file's name and changes the
    folder it names. The next record finds the package where the file now points, as plain
    Sumatra's does (the memo stamped the names in site-packages, not what a .pth file says)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    for checkout in ("a", "b"):
        write(tmp_path / checkout / "foo" / "__init__.py", "")
    pth = site / "__editable__.foo-1.0.pth"
    pth.write_text(f"{tmp_path / 'a'}\n")
    write(tmp_path / "project" / "main.py", "import foo\n")
    found = _in_project(tmp_path, POINTED_ELSEWHERE, str(tmp_path / "venv" / "bin" / "python"), str(pth),
                        str(tmp_path / "b"))
    assert found == [str(tmp_path / c / "foo" / "__init__.py") for c in ("a", "b")]


USER_SITE_LATER = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
import smtlock
from sumatra.dependency_finder import python as finder
python, package = sys.argv[1:]
found = [sorted(finder.find_imported_packages("main.py", python))]
os.makedirs(package)  # pip install --user: the user's site-packages made with its first package
open(os.path.join(package, "__init__.py"), "w").close()
found.append(sorted(finder.find_imported_packages("main.py", python)))
print(json.dumps(found))
"""


def test_the_users_site_packages_made_after_a_record_is_scanned(tmp_path: Path) -> None:
    """An interpreter outside a virtual environment puts the user's site-packages on sys.path when it
    exists: ``pip install --user`` makes it with its first package, and the next record finds that
    package, as plain Sumatra's does (the folder was on no sys.path the memo stamped)."""
    python = os.path.join(sys.base_prefix, "bin", "python3")
    env = {"PYTHONUSERBASE": str(tmp_path / "userbase"), "PYTHONNOUSERSITE": ""}
    ask = "import site; print(site.ENABLE_USER_SITE and site.getusersitepackages())"
    user_site = subprocess.run([python, "-c", ask], env={**os.environ, **env}, capture_output=True, text=True,
                               check=True).stdout.strip()
    if not user_site.startswith(str(tmp_path)):
        pytest.skip(f"{python} has no user site-packages")
    write(tmp_path / "project" / "main.py", "import userpkg\n")
    found = _in_project(tmp_path, USER_SITE_LATER, python, os.path.join(user_site, "userpkg"), **env)
    assert found == [[], ["userpkg"]]


THROUGH_A_SHIM = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
import smtlock
from sumatra.dependency_finder import python as finder
shim, second = sys.argv[1:]
found = [sorted(finder.find_imported_packages("main.py", shim))]
os.environ["SHIM_TARGET"] = second  # as PYENV_VERSION, `pyenv local` or `pyenv global` choose another
found.append(sorted(finder.find_imported_packages("main.py", shim)))
print(json.dumps(found))
"""


def test_an_interpreter_chosen_by_a_shim_is_the_one_scanned(tmp_path: Path) -> None:
    """pyenv, asdf and mise put shims on PATH: a script named python that runs the interpreter their
    settings choose (an environment variable, a file in the project or the user's home). The memo
    asks the shim which interpreter it runs, for each record, so a record made after the choice
    changed scans that interpreter's packages, as plain Sumatra's does."""
    pythons = []
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / name)], check=True)
        site = next((tmp_path / name / "lib").glob("python*/site-packages"))
        write(site / f"pkg{name}" / "__init__.py", "")
        pythons.append(str(tmp_path / name / "bin" / "python"))
    shim = tmp_path / "shims" / "python"
    write(shim, '#!/bin/sh\nexec "$SHIM_TARGET" "$@"\n')
    shim.chmod(0o755)
    write(tmp_path / "project" / "main.py", "try:\n    import pkga\nexcept ImportError:\n    import pkgb\n")
    assert _in_project(tmp_path, THROUGH_A_SHIM, str(shim), pythons[1], SHIM_TARGET=pythons[0]) == [["pkga"], ["pkgb"]]


BECOMES_A_PACKAGE = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
import smtlock
from sumatra.dependency_finder import python as finder
files = [finder.find_imported_packages("main.py", sys.executable)["bar"].__file__]
open(os.path.join("bar", "__init__.py"), "w").close()  # the folder beside the script becomes a package
files.append(finder.find_imported_packages("main.py", sys.executable)["bar"].__file__)
print(json.dumps(files))
"""


def test_a_folder_that_becomes_a_package_is_scanned_again(tmp_path: Path) -> None:
    """A folder beside the script named as a package on sys.path (a folder of data, say) does not
    shadow it while it has no ``__init__.py``; once it has one, it does, and the next record finds it
    there, as plain Sumatra's does (the names in the folder beside the script did not change)."""
    write(tmp_path / "site" / "bar" / "__init__.py", "")
    write(tmp_path / "project" / "main.py", "import bar\n")
    write(tmp_path / "project" / "bar" / "data.txt", "1 2 3\n")
    assert _in_project(tmp_path, BECOMES_A_PACKAGE) == [str(tmp_path / "site" / "bar" / "__init__.py"),
                                                      str(tmp_path / "project" / "bar" / "__init__.py")]


# --- across processes: smt run ------------------------------------------------------------------------

COUNTING_PYTHON = """#!/bin/sh
[ $# -eq 0 ] && echo scan >> {log}
exec {python} "$@"
"""


def _smt_run_project(tmp_path: Path) -> tuple:
    """A project with the plugin enabled whose executable is a wrapper that logs each scan it runs
    (Sumatra's scans feed their script on stdin: no arguments)."""
    project = make_project(tmp_path / "project", plugin=True)
    write(project / "main.py", "import helper\n")
    write(project / "helper.py", HELPER)
    subprocess.run(GIT + ["add", "main.py", "helper.py"], cwd=project, check=True)
    subprocess.run(GIT + ["commit", "-qm", "code"], cwd=project, check=True)
    site = tmp_path / "site"
    write(site / "attrpkg" / "__init__.py", "__version__ = '1.2.3'\n")
    log = tmp_path / "scans.log"
    python = tmp_path / "bin" / "python"
    write(python, COUNTING_PYTHON.format(log=log, python=sys.executable))
    python.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": BIN + os.pathsep + os.environ["PATH"]}
    env.pop("SMTLOCK_MEMO", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # as a user's Python: the first run makes __pycache__ beside main.py
    return project, env, log, str(python)


def _records(project: Path) -> List[Dict[str, Any]]:
    code = ("import json; from sumatra.projects import load_project; p = load_project(); "
            "print(json.dumps([[r.label, [[d.name, d.path, d.version, d.diff, d.source] for d in "
            "r.dependencies], r.parameters.as_dict()] for r in p.find_records()]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_two_smt_runs_in_a_row_share_the_scan(tmp_path: Path) -> None:
    project, env, log, python = _smt_run_project(tmp_path)
    for job in range(2):
        subprocess.run(["smt", "run", "-e", python, "params.txt", f"job={job}"], cwd=project, env=env,
                       check=True, capture_output=True)
        assert log.read_text().split() == ["scan", "scan"]  # the second process ran no scan
    memo_files = list((project / ".smt" / MEMO_DIR).glob("scan-*.json"))
    assert len(memo_files) == 1
    first, second = sorted(_records(project), key=lambda r: r[2]["job"])
    assert first[1] == second[1] and [d[0] for d in first[1]] == ["attrpkg"]
    env["SMTLOCK_MEMO"] = "0"  # off: the scan runs again
    subprocess.run(["smt", "run", "-e", python, "params.txt", "job=2"], cwd=project, env=env, check=True,
                   capture_output=True)
    assert log.read_text().split() == ["scan"] * 4


PLATFORM = r"""
import json, sys
with_smtlock = sys.argv[1] == "smtlock"
if with_smtlock:
    import smtlock
    from smtlock._sumatra import provenance
from sumatra.launch import SerialLaunchMode
events = []  # what the platform information costs: subprocesses (file -b, uname -p), connections (the probe)
sys.addaudithook(lambda name, args: events.append(name) if name in ("subprocess.Popen", "socket.connect") else None)
if with_smtlock:
    with provenance.in_project("."):
        found = SerialLaunchMode().get_platform_information()
else:
    found = SerialLaunchMode().get_platform_information()
print(json.dumps({"info": [vars(i) for i in found], "events": sorted(set(events))}))
"""


def test_the_platform_is_asked_once_per_host_while_its_network_is_unchanged(tmp_path: Path) -> None:
    """Upstream runs ``file -b`` and ``uname -p`` and probes an outside address (1 s timeout) for every
    record: a job array on an offline node paid the timeout in every job. The first process of a host
    asks, the next ones reuse its answer, which is plain Sumatra's; a changed network asks again."""
    project = make_project(tmp_path / "p")

    def ask(who: str) -> Dict[str, Any]:
        done = subprocess.run([sys.executable, "-c", PLATFORM, who], cwd=project, capture_output=True, text=True,
                              check=True)
        return json.loads(done.stdout)
    plain, first, second = ask("plain"), ask("smtlock"), ask("smtlock")
    assert "subprocess.Popen" in plain["events"] and "subprocess.Popen" in first["events"]
    assert second["events"] == []  # no subprocess, no connection
    assert first["info"] == second["info"] == plain["info"]
    memo = list((project / ".smt" / MEMO_DIR).glob("platform-*.json"))
    assert len(memo) == 1
    entry = json.loads(memo[0].read_text())
    entry["network"] = "another network"  # as after a change of routes, addresses or name resolution
    memo[0].write_text(json.dumps(entry))
    again = ask("smtlock")
    assert "subprocess.Popen" in again["events"] and again["info"] == plain["info"]
    assert ask("smtlock")["events"] == []


PROBE_FAILED_ONCE = r"""
import json, socket, sys, time
import smtlock
import sumatra.launch
from sumatra.launch import SerialLaunchMode
from smtlock._sumatra import provenance
online = []
sumatra.launch.have_internet_connection = lambda: bool(online)  # its probe of an outside address
socket.gethostbyname = lambda name: "192.0.2.7"  # the host's name resolves (TEST-NET-1), as on a cluster node
answers = []
with provenance.in_project("."):
    answers.append(SerialLaunchMode().get_platform_information()[0].ip_addr)  # the probe times out, once
    online.append(True)
    answers.append(SerialLaunchMode().get_platform_information()[0].ip_addr)  # within the time an answer
    provenance._UNSURE_S = 0  # without an address is reused; then past it
    answers.append(SerialLaunchMode().get_platform_information()[0].ip_addr)
print(json.dumps(answers))
"""


def test_a_platform_answer_without_an_address_is_asked_again_in_time(tmp_path: Path) -> None:
    """Sumatra records 127.0.0.1 when its probe of an outside address fails (1 s timeout): every time
    on an offline node, once on a busy one. Such an answer is reused for a while (an offline node
    pays the timeout once in that time), then asked again: where the failure passed, the host's
    address is in the records again, as in plain Sumatra's."""
    project = make_project(tmp_path / "p")
    done = subprocess.run([sys.executable, "-c", PROBE_FAILED_ONCE], cwd=project, capture_output=True, text=True,
                          check=True)
    assert json.loads(done.stdout) == ["127.0.0.1", "127.0.0.1", "192.0.2.7"]


MIME = r"""
import json, mimetypes, sys
if sys.argv[1] == "smtlock":
    import smtlock
from sumatra.projects import load_project
reads = []
sys.addaudithook(lambda name, args: reads.append(str(args[0])) if name == "open" and str(args[0]).endswith("mime.types")
                 else None)
seen = {}
load_project()
seen["first"], reads[:] = len(reads), []
load_project()  # nothing it reads has changed: no file read again
seen["again"], reads[:] = len(reads), []
mimetypes.add_type("application/x-smtlock-added", ".smtlockadded")
load_project()
seen["after add_type"], reads[:] = len(reads), []
seen["added type"] = mimetypes.guess_type("a.smtlockadded")[0]
with open(".smt/mime.types", "w") as f:  # the project's own types: read at the next load
    f.write("application/x-smtlock-project smtlockproject\n")
load_project()
seen["after the project's file"] = len(reads)
seen["project type"] = mimetypes.guess_type("a.smtlockproject")[0]
print(json.dumps(seen))
"""


def test_load_project_reads_the_mime_types_again_only_when_they_could_differ(tmp_path: Path) -> None:
    """Upstream's ``load_project`` re-reads every system ``mime.types`` file each time (``@smt_logged``
    loads the project for every call); the types it gives output files are plain Sumatra's."""
    def seen(who: str) -> Dict[str, Any]:
        project = make_project(tmp_path / who)
        done = subprocess.run([sys.executable, "-c", MIME, who], cwd=project, capture_output=True, text=True,
                              check=True)
        return json.loads(done.stdout)
    plain, ours = seen("plain"), seen("smtlock")
    assert plain["again"] >= 1 and ours["first"] >= 1 and ours["again"] == 0
    assert ours["after add_type"] >= 1 and ours["after the project's file"] >= 1
    types = ("added type", "project type")
    assert [ours[t] for t in types] == [plain[t] for t in types] == ["application/x-smtlock-added",
                                                                     "application/x-smtlock-project"]


JOB = """
import os, sys
from sumatra.cli import smt
os.write(int(sys.argv[1]), b"r")
os.read(int(sys.argv[2]), 1)
sys.argv = ["smt", "run", "-e", sys.argv[4], "params.txt", "job=" + sys.argv[3]]
sys.exit(smt())
"""


@pytest.mark.burst
def test_eight_smt_runs_at_once_share_the_memo(tmp_path: Path) -> None:
    project, env, log, python = _smt_run_project(tmp_path)
    subprocess.run(["smt", "run", "-e", python, "params.txt", "job=0"], cwd=project, env=env, check=True,
                   capture_output=True)
    write(project / "helper.py", "import attrpkg\nimport shadowed\n")  # every job of the burst scans again
    write(tmp_path / "site" / "shadowed" / "__init__.py", "__version__ = '7'\n")
    subprocess.run(GIT + ["commit", "-qam", "more"], cwd=project, check=True)
    jobs = range(1, 9)
    commands = [[sys.executable, "-c", JOB, "{ready}", "{go}", str(job), python] for job in jobs]
    logs = [tmp_path / f"job{job}.log" for job in jobs]
    before = len(log.read_text().split())
    burst = start_together(commands, logs, cwd=project, env=env)
    assert burst["codes"] == {i: 0 for i in range(8)}, [p.read_text()[-800:] for p in logs]
    # one job ran the two scans, the other seven waited and reused them (before: each job, 16 scans)
    assert len(log.read_text().split()) - before == 2, (before, log.read_text().split())
    records = _records(project)
    assert sorted(r[2]["job"] for r in records) == list(range(9))
    expected = [["attrpkg", str(tmp_path / "site" / "attrpkg"), "1.2.3", "", "attribute"],
                ["shadowed", str(tmp_path / "site" / "shadowed"), "7", "", "attribute"]]
    assert all(sorted(r[1]) == expected for r in records if r[2]["job"] > 0)
    memo_dir = project / ".smt" / MEMO_DIR
    names = [p.name for p in memo_dir.iterdir()]
    assert [n for n in names if not n.startswith(("scan-", "platform-", "git-"))] == []  # no temporary file
    assert {n for n in names if n.endswith(".lock")} == {n.replace(".json", ".lock") for n in names
                                                          if n.startswith("scan-") and n.endswith(".json")}
    for memo_file in memo_dir.glob("*.json"):
        json.loads(memo_file.read_text())  # whole
    scans = len(log.read_text().split())
    subprocess.run(["smt", "run", "-e", python, "params.txt", "job=9"], cwd=project, env=env, check=True,
                   capture_output=True)
    assert len(log.read_text().split()) == scans  # the burst's memo is reused
    shutil.rmtree(memo_dir)


def test_the_standard_library_is_watched_by_its_folders_not_file_by_file() -> None:
    """The interpreter's own modules change only with the interpreter, whose file every entry stamps:
    a scan's stamps leave them out (~400 stats of every record of a script importing smtlock). A
    package installed inside the standard library's tree (pyenv's site-packages) is not one of them."""
    from smtlock._sumatra.provenance import _standard_library
    stdlib = "/py/lib/python3.11"
    path = {"/project", stdlib, f"{stdlib}/lib-dynload", f"{stdlib}/site-packages"}
    files = {f"{stdlib}/json/__init__.py", f"{stdlib}/lib-dynload/_json.so", f"{stdlib}/os.py",
             f"{stdlib}/site-packages/numpy/core/multiarray.py", "/project/helper.py",
             "/elsewhere/loose.py"}
    assert _standard_library(files, path, [stdlib, stdlib]) == {
        f"{stdlib}/json/__init__.py", f"{stdlib}/lib-dynload/_json.so", f"{stdlib}/os.py"}
    assert _standard_library(files, path, []) == set()  # not told where it is: every file is stamped


def test_a_distribution_is_stamped_by_what_holds_its_version(tmp_path: Path) -> None:
    """A scan stamps an egg's PKG-INFO (an .egg-info file itself, an .egg whole), not its .egg-info
    folder: a reinstall gives the file a new inode. A .dist-info's name holds its version: it is
    among the importable names of the folder above, which is stamped, and neither the folder nor its
    METADATA is (before: a stat more for every distribution on sys.path, ~100 of each record in the
    benchmark's environment; "install another version" and "only the metadata changes" in
    test_a_change_makes_the_next_record_plain_sumatras_again show a new version still seen)."""
    from smtlock._sumatra.provenance import _new_entry
    site = tmp_path / "site"
    write(site / "a-1.0.dist-info" / "METADATA", "Name: a\nVersion: 1.0\n")
    write(site / "b.egg-info" / "PKG-INFO", "Name: b\nVersion: 2.0\n")
    write(site / "c-3.0.egg-info", "Name: c\nVersion: 3.0\n")
    write(site / "d.egg" / "EGG-INFO" / "PKG-INFO", "Name: d\nVersion: 4.0\n")
    seen = {"cwd": str(tmp_path), "path": [str(site)], "files": [], "stdlib": [], "prefix": str(tmp_path),
            "executable": sys.executable}
    stamps = set(_new_entry("key", sys.executable, seen, {})["stamps"])
    assert {str(site / name) for name in ("b.egg-info/PKG-INFO", "c-3.0.egg-info", "d.egg", "d.egg/EGG-INFO",
                                          "d.egg/EGG-INFO/PKG-INFO", "")} <= stamps
    assert not stamps & {str(site / "a-1.0.dist-info"), str(site / "a-1.0.dist-info/METADATA"),
                         str(site / "b.egg-info")}


def test_the_versions_script_embeds_the_source_as_it_is_on_disk(tmp_path: Path) -> None:
    """Sumatra embeds a function's source (inspect.getsource) in every record's versions script;
    it is remembered while its file is unchanged, and read again once the file changes."""
    import importlib.util
    import inspect

    from smtlock._sumatra.provenance import SourceOnce
    module = tmp_path / "versions_helper.py"
    module.write_text("def find():\n    return 1\n")
    spec = importlib.util.spec_from_file_location("versions_helper", module)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    once = SourceOnce()
    assert once.getsource(loaded.find) == inspect.getsource(loaded.find) == "def find():\n    return 1\n"
    module.write_text("def find():\n    return 22\n")  # the installed file changed under the process
    assert once.getsource(loaded.find) == inspect.getsource(loaded.find) == "def find():\n    return 22\n"
    assert once.signature is inspect.signature  # the rest of inspect, as it is


def test_a_path_resolved_by_the_kernel_is_os_path_realpaths(tmp_path: Path, monkeypatch: Any) -> None:
    """provenance.realpath (each dependency of every record, and the dependency scan's own
    ``os.path.realpath`` inside Sumatra) answers as ``os.path.realpath`` for every kind of path, without
    one ``lstat`` per component where the kernel can resolve it."""
    import sumatra.dependency_finder.python as finder

    import smtlock  # noqa: F401 (its patches)
    from smtlock._sumatra.provenance import realpath
    real = tmp_path / "real"
    write(real / "pkg" / "__init__.py", "")
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (real / "pkg" / "up").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    paths = [str(real / "pkg"), str(tmp_path / "link" / "pkg"), str(tmp_path / "link" / "pkg" / "__init__.py"),
             str(tmp_path / "link" / "pkg" / ".." / "pkg"), str(real / "pkg" / "up" / "pkg" / "up"),
             "link/pkg", "link/pkg/", ".", "", str(tmp_path / "dangling"), str(tmp_path / "dangling" / "x"),
             str(tmp_path / "loop"), str(tmp_path / "absent" / "x"), "/", "//", str(tmp_path) + "//link/./pkg"]
    assert [realpath(path) for path in paths] == [os.path.realpath(path) for path in paths]
    lstats: List[str] = []
    monkeypatch.setattr(os, "lstat", lambda path, *a, **k: lstats.append(path) or os.stat(path, follow_symlinks=False))
    assert realpath(str(tmp_path / "link" / "pkg")) == str(real / "pkg") and lstats == []
    assert finder.os.path.realpath is realpath  # Sumatra's Dependency.from_module
    assert finder.os.path.join is os.path.join  # the rest of os.path, as it is
